"""The decoder: embedding, scanned decoder layers, final norm, LM and score heads, KV caches.

    model = Model(cfg)
    logits = model.apply({"params": params}, tokens, attention_mask=mask)         # [B, T, V] f32
    logits, cache = model.apply({"params": params}, tokens, cache=cache)          # incremental
    scores = model.apply({"params": params}, tokens, method=Model.score)          # [B, T] f32
    _, prefix = prefill(model, params, prompts, prompt_lengths, prompts.shape[1])
    cache = SharedPrefixCache.create(prefix, n, capacity)  # n rows per prompt, one prompt copy

Layer parameters are one subtree per layer (`layers_0`, ...) by default; with `scan_layers` they
are stacked along a leading `layers` axis and run under `nn.scan` (see `ModelConfig`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from reasonjax.models.config import ModelConfig
from reasonjax.models.layers import (DecoderLayer, Linear, RMSNorm, cached_attention, rope_tables,
                                     shared_prefix_attention)

Array = jax.Array

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, preallocated to a fixed capacity S.

  Row b holds valid entries in slots [0, lengths[b]); a call writes its T tokens at slots
  lengths[b] + t and advances lengths[b] by the number of real tokens (right padding), so rows of
  different lengths decode in one batch.

  Attributes:
    k, v: [L, B, K, S, hd] for a scanned model; for `scan_layers=False` a tuple of L arrays
      [B, K, S, hd], so that each layer reads its own buffer instead of a slice copy. Heads
      before slots is the layout attention reads without a transpose.
    lengths: int32 [B].
  """

  k: Array | tuple[Array, ...]
  v: Array | tuple[Array, ...]
  lengths: Array

  @property
  def capacity(self) -> int:
    return self.k[0].shape[2] if isinstance(self.k, tuple) else self.k.shape[3]

  def layer(self, i) -> tuple[Array, Array]:
    """Keys and values of layer i (an int, or a traced index for the stacked layout)."""
    return self.k[i], self.v[i]

  def write(self, i, slots: Array, k: Array, v: Array) -> KVCache:
    """Scatters k, v [B, T, K, hd] into layer i at `slots` [B, T]; out-of-range slots drop."""
    rows = jnp.arange(k.shape[0])[:, None]
    # Advanced indices around a slice: buffer[rows, :, slots] has shape [B, T, K, hd], like k.
    if isinstance(self.k, tuple):
      def put(buffers, x):
        return tuple(b.at[rows, :, slots].set(x.astype(b.dtype), mode="drop") if j == i else b
                     for j, b in enumerate(buffers))
    else:
      def put(buffers, x):
        return buffers.at[i, rows, :, slots].set(x.astype(buffers.dtype), mode="drop")
    return self.replace(k=put(self.k, k), v=put(self.v, v))

  def attend(self, i, q: Array, mask: Array) -> Array:
    """Attention of q [B, T, H, hd] over layer i; mask: bool [B, 1, T, S]."""
    return cached_attention(q, *self.layer(i), mask)

  def repeat(self, n: int) -> KVCache:
    """Each row repeated n times (row b -> rows b*n .. b*n+n-1): n samples share a prompt."""
    axis = 0 if isinstance(self.k, tuple) else 1
    rep = lambda x, ax: jnp.repeat(x, n, axis=ax, total_repeat_length=x.shape[ax] * n)  # noqa: E731
    return KVCache(k=jax.tree.map(lambda x: rep(x, axis), self.k),
                   v=jax.tree.map(lambda x: rep(x, axis), self.v), lengths=rep(self.lengths, 0))


@flax.struct.dataclass
class SharedPrefixCache:
  """One read-only cache per prefix, shared by its n rows, and a `KVCache` of each row's own
  tokens: k samples of a prompt keep one copy of its keys and values instead of k.

  Row r = b * n + j continues prefix b; its token t sits at position prefix_lengths[b] + t (slot
  t of `rows`), so RoPE positions are those of one long sequence. Attention reads both parts
  (`layers.shared_prefix_attention`).

  Attributes:
    prefix_k, prefix_v: [L, B, K, P, hd], or for `scan_layers=False` a tuple of L [B, K, P, hd]
      (as in `KVCache`); slots [0, prefix_lengths[b]) of prefix b are real.
    prefix_lengths: int32 [B].
    rows: `KVCache` of the B * n rows, [.., B * n, K, C, hd]; its lengths count each row's own
      tokens (0 after `create`).
  """

  prefix_k: Array | tuple[Array, ...]
  prefix_v: Array | tuple[Array, ...]
  prefix_lengths: Array
  rows: KVCache

  @classmethod
  def create(cls, prefix: KVCache, n: int, capacity: int) -> SharedPrefixCache:
    """Shares `prefix` (e.g. from `prefill`, its capacity the prompt block) among n rows per
    prefix, each with room for `capacity` tokens of its own."""
    def empty(x):  # [.., B, K, P, hd] -> [.., B * n, K, capacity, hd], layer layout kept.
      shape = list(x.shape)
      shape[-4], shape[-2] = shape[-4] * n, capacity
      return jnp.zeros(shape, x.dtype)
    rows = KVCache(k=jax.tree.map(empty, prefix.k), v=jax.tree.map(empty, prefix.v),
                   lengths=jnp.zeros((prefix.lengths.shape[0] * n,), jnp.int32))
    return cls(prefix_k=prefix.k, prefix_v=prefix.v, prefix_lengths=prefix.lengths, rows=rows)

  @property
  def num_samples(self) -> int:
    """n, the rows per prefix."""
    return self.rows.lengths.shape[0] // self.prefix_lengths.shape[0]

  @property
  def capacity(self) -> int:
    """Slots of each row's own cache."""
    return self.rows.capacity

  @property
  def prefix_mask(self) -> Array:
    """bool [B, P], True for the real slots of each prefix."""
    width = jax.tree.leaves(self.prefix_k)[0].shape[-2]
    return jnp.arange(width)[None] < self.prefix_lengths[:, None]

  @property
  def lengths(self) -> Array:
    """Tokens each row sees, prefix included: int32 [B * n] (as `KVCache.lengths`)."""
    n = self.num_samples
    return jnp.repeat(self.prefix_lengths, n, total_repeat_length=n * self.prefix_lengths.shape[0]
                      ) + self.rows.lengths

  def write(self, i, slots: Array, k: Array, v: Array) -> SharedPrefixCache:
    """Writes k, v [B * n, T, K, hd] into the rows' own cache (the prefix is read-only)."""
    return self.replace(rows=self.rows.write(i, slots, k, v))

  def attend(self, i, q: Array, mask: tuple[Array, Array]) -> Array:
    """q [B * n, T, H, hd]; mask: (prefix mask bool [B, P], rows' mask bool [B * n, 1, T, C])."""
    prefix_k, prefix_v = self.prefix_k[i], self.prefix_v[i]
    return shared_prefix_attention(q, prefix_k, prefix_v, mask[0], *self.rows.layer(i), mask[1])


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
  """An empty cache for `batch_size` rows of up to `capacity` tokens (prompt + generation)."""
  dtype = dtype or jnp.dtype(cfg.dtype)
  shape = (batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)
  if cfg.scan_layers:
    k = jnp.zeros((cfg.num_layers,) + shape, dtype)
    v = jnp.zeros((cfg.num_layers,) + shape, dtype)
  else:
    k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(k=k, v=v, lengths=jnp.zeros((batch_size,), jnp.int32))


def prefill(model: Model, params, prefix: Array, prefix_lengths: Array, capacity: int
            ) -> tuple[Array, KVCache]:
  """Runs right-padded prefixes into a new cache of `capacity` slots per row.

  prefix: int32 [B, P]; prefix_lengths: int32 [B], each in [1, P]. Returns the final hidden state
  of each prefix's last real token, [B, 1, D] (the one that predicts what follows), and the cache,
  whose lengths are prefix_lengths.
  """
  mask = (jnp.arange(prefix.shape[1])[None] < prefix_lengths[:, None]).astype(jnp.int32)
  hidden, cache = model.apply({"params": params}, prefix * mask, attention_mask=mask,
                              cache=init_cache(model.cfg, prefix.shape[0], capacity),
                              method=Model.hidden_states)
  return jnp.take_along_axis(hidden, (prefix_lengths - 1)[:, None, None], axis=1), cache


def unstack_layers(params):
  """Scanned parameters ({"layers": [L, ...] leaves}) -> the `scan_layers=False` tree
  ({"layers_0": ..., "layers_{L-1}": ...}); everything else is shared."""
  params = dict(params)
  stacked = params.pop("layers")
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  return params | {f"layers_{i}": jax.tree.map(lambda x: x[i], stacked)
                   for i in range(num_layers)}


def segment_positions(segment_ids: Array) -> Array:
  """Position of each token inside its segment. segment_ids: [B, T] -> int32 [B, T]."""
  idx = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return (idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)).astype(jnp.int32)


def attention_mask_4d(attention_mask: Array | None, segment_ids: Array | None,
                      batch: int, length: int) -> Array:
  """Causal & key-not-padding & same-segment. Returns bool [B, 1, T, T]."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  mask = jnp.broadcast_to(causal, (batch, 1, length, length))
  if attention_mask is not None:
    mask = mask & attention_mask.astype(bool)[:, None, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  return mask


class Model(nn.Module):
  """Llama / Qwen2 / Qwen3 decoder (see `ModelConfig` for the family flags)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")))
    layer = _layer_class(cfg)
    if cfg.scan_layers:
      self.layers = nn.scan(
          layer, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    else:
      self.layers = [layer(cfg) for _ in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_norm_eps, dtype, pdtype)
    if cfg.lm_head and not cfg.tie_word_embeddings:
      self.lm_head = Linear((cfg.vocab_size,), ("embed", "vocab"), cfg, out_dtype=jnp.float32)
    if cfg.score_head:
      self.score_head = Linear((1,), ("embed", None), cfg, out_dtype=jnp.float32)

  def hidden_states(self, tokens: Array, attention_mask: Array | None = None, *,
                    positions: Array | None = None, segment_ids: Array | None = None,
                    cache: KVCache | SharedPrefixCache | None = None
                    ) -> tuple[Array, KVCache | SharedPrefixCache | None]:
    """Final normed hidden states [B, T, D] (compute dtype) and the updated cache.

    Args:
      tokens: int32 [B, T].
      attention_mask: [B, T], 1 for real tokens (Hugging Face meaning). With a cache, padding must
        be on the right: the real tokens of a row are a prefix of its chunk.
      positions: int32 [B, T]. Default: index within the segment when `segment_ids` is given,
        cumsum(attention_mask) - 1 with a mask, the cache slot with a cache, else arange(T).
      segment_ids: int32 [B, T] for packed sequences; tokens attend only within their segment.
      cache: optional `KVCache` or `SharedPrefixCache`; keys and values of this call are appended
        to it (to a shared cache's rows, which continue their prefixes).
    """
    cfg = self.cfg
    batch, length = tokens.shape
    slots = None
    if cache is not None:
      if segment_ids is not None:
        raise ValueError("segment_ids (packed sequences) cannot be combined with a KV cache")
      shared = isinstance(cache, SharedPrefixCache)
      own = cache.rows if shared else cache
      slots = own.lengths[:, None] + jnp.arange(length, dtype=jnp.int32)
      mask = jnp.arange(own.capacity)[None, None, None, :] <= slots[:, None, :, None]
      if positions is None:
        # A row of a shared cache continues its prefix: its own slot s is position length + s.
        positions = slots + (cache.lengths - own.lengths)[:, None] if shared else slots
      if shared:
        mask = (cache.prefix_mask, mask)
      n_new = length if attention_mask is None else attention_mask.astype(jnp.int32).sum(-1)
      new_lengths = own.lengths + n_new
    else:
      mask = attention_mask_4d(attention_mask, segment_ids, batch, length)
      if positions is None:
        if segment_ids is not None:
          positions = segment_positions(segment_ids)
        elif attention_mask is not None:
          positions = jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), -1) - 1, 0)
        else:
          positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    sin, cos = rope_tables(cfg, positions)
    # Gathering rows from a table whose embed dim is fsdp-sharded forces XLA to replicate the
    # result; all-gather the table's fsdp dim first, as FSDP does for every weight before use.
    table = nn.with_logical_constraint(self.embed_tokens.embedding, ("vocab", None))
    h = jnp.take(table, tokens, axis=0).astype(cfg.dtype)
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_embed"))
    if cfg.scan_layers:
      layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
      (h, cache), _ = self.layers((h, cache), layer_ids, sin, cos, mask, slots)
    else:
      for i, layer in enumerate(self.layers):
        (h, cache), _ = layer((h, cache), i, sin, cos, mask, slots)
    if isinstance(cache, SharedPrefixCache):
      cache = cache.replace(rows=cache.rows.replace(lengths=new_lengths))
    elif cache is not None:
      cache = cache.replace(lengths=new_lengths)
    return self.norm(h), cache

  def logits_from_hidden(self, h: Array) -> Array:
    """Vocabulary logits in float32. h: [B, T, D] -> [B, T, V]."""
    if self.cfg.tie_word_embeddings:
      table = self.embed_tokens.embedding.astype(h.dtype)
      # Flat [B*T, D] rows, for the reason given in `layers.Linear`.
      logits = jnp.dot(h.reshape(-1, h.shape[-1]), table.T, preferred_element_type=jnp.float32)
      logits = logits.reshape(h.shape[:-1] + (table.shape[0],))
    else:
      logits = self.lm_head(h)
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))

  def scores_from_hidden(self, h: Array) -> Array:
    """Scalar score of every position in float32. h: [B, T, D] -> [B, T]."""
    return self.score_head(h)[..., 0]

  def __call__(self, tokens: Array, attention_mask: Array | None = None, *,
               positions: Array | None = None, segment_ids: Array | None = None,
               cache: KVCache | SharedPrefixCache | None = None):
    """Logits float32 [B, T, V]; with a cache, (logits, new_cache). Args as `hidden_states`."""
    if not self.cfg.lm_head:
      raise ValueError("this model has no LM head (lm_head=False); call Model.score instead")
    h, new_cache = self.hidden_states(tokens, attention_mask, positions=positions,
                                      segment_ids=segment_ids, cache=cache)
    if self.cfg.score_head and self.is_initializing():
      self.scores_from_hidden(h)  # Creates the score head's parameters too.
    logits = self.logits_from_hidden(h)
    return logits if cache is None else (logits, new_cache)

  def score(self, tokens: Array, attention_mask: Array | None = None, *,
            positions: Array | None = None, segment_ids: Array | None = None) -> Array:
    """Score-head output at every position, float32 [B, T]. Args as `hidden_states`."""
    if not self.cfg.score_head:
      raise ValueError("this model has no score head; set score_head=True in its ModelConfig")
    h, _ = self.hidden_states(tokens, attention_mask, positions=positions, segment_ids=segment_ids)
    return self.scores_from_hidden(h)


def _layer_class(cfg: ModelConfig):
  """DecoderLayer, under the configured activation checkpointing."""
  if cfg.remat == "none":
    return DecoderLayer
  # Unrolled, the backward pass recomputes behind an optimization barrier: without it XLA's CSE
  # merges the recomputation with the forward pass, which then keeps everything, as with 'none'
  # (on XLA:CPU the barrier holds only with `layers.CPU_KEEP_BARRIERS`). A scan's forward and
  # backward are different loops, where nothing merges and a barrier would only cost.
  return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat],
                  prevent_cse=not cfg.scan_layers)


def init_boxed_params(cfg: ModelConfig, rng: Array):
  """Parameters still wrapped in their logical-partitioning metadata."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  method = Model.__call__ if cfg.lm_head else Model.score
  return Model(cfg).init(rng, tokens, method=method)["params"]


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: Array):
  """Random parameters, a plain pytree of `param_dtype` arrays (unsharded; see sharding.py)."""
  return nn.unbox(init_boxed_params(cfg, rng))


def param_shapes(cfg: ModelConfig):
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
  return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


def param_logical_axes(cfg: ModelConfig):
  """The parameter tree with a logical `PartitionSpec` (e.g. ('layers', 'embed', 'mlp')) per leaf."""
  return nn.get_partition_spec(jax.eval_shape(functools.partial(init_boxed_params, cfg),
                                              jax.random.key(0)))
