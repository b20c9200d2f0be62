"""Decoder building blocks: RMSNorm, rotary embeddings, grouped-query attention (full, blockwise,
over a KV cache, over a prefix cache shared by several rows), SwiGLU MLP.

Module and parameter names mirror the Hugging Face ones (`self_attn/q_proj/kernel` is
`self_attn.q_proj.weight` transposed), so checkpoint conversion is a table (`models/hf.py`).
Every parameter carries logical axis names; `sharding.py` maps them to mesh axes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reasonjax.models.config import ModelConfig

Array = jax.Array


def _init(cfg: ModelConfig, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def _zeros(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2, -1) + eps) * scale, computed in float32. x: [..., D]."""

  eps: float
  dtype: Any
  param_dtype: Any
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                            (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies theta^(-2i/hd), i < hd/2, with the configured scaling. Float64 [hd/2]."""
  hd = cfg.head_dim
  inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
  rs = cfg.rope_scaling
  if rs.rope_type == "linear":
    inv_freq = inv_freq / rs.factor
  elif rs.rope_type == "llama3":
    wavelen = 2 * np.pi / inv_freq
    low_freq_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_freq_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    smooth = ((rs.original_max_position_embeddings / wavelen - rs.low_freq_factor)
              / (rs.high_freq_factor - rs.low_freq_factor))
    interpolated = (1 - smooth) * inv_freq / rs.factor + smooth * inv_freq
    inv_freq = np.where(wavelen > low_freq_wavelen, inv_freq / rs.factor,
                        np.where(wavelen < high_freq_wavelen, inv_freq, interpolated))
  return inv_freq


def rope_tables(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
  """sin, cos of positions * inv_freq in float32. positions: [B, T] -> two [B, T, hd/2]."""
  inv_freq = jnp.asarray(rope_inv_freq(cfg), jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
  """Rotates (x1, x2) halves of the head dim: [x1 cos - x2 sin, x2 cos + x1 sin].

  x: [B, T, N, hd]; sin, cos: [B, T, hd/2]. The half-split layout is the Hugging Face one.
  """
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Linear(nn.Module):
  """y = x . kernel (+ bias), contracting the last `n_in` dims of x with the first of kernel.

  kernel: [*x.shape[-n_in:], *features] with logical names `axes` (input names first). Flax's
  DenseGeneral would do, but it reshapes a flat kernel after logical boxing, which breaks when
  sharding rules are active. Parameters that hold LoRA factors beside the kernel
  (`lora.attach`: lora_a [I, r], lora_b [r, O], b scaled) add (x a) b: the factored form, so
  that training the adapters never forms the kernel's [I, O] gradient.
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  cfg: ModelConfig
  n_in: int = 1
  use_bias: bool = False
  out_dtype: Any = None  # e.g. float32 logits from bfloat16 activations; default: compute dtype.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    shape = x.shape[x.ndim - self.n_in:] + tuple(self.features)
    kernel = self.param("kernel", _init(cfg, self.axes), shape, pdtype)
    # One 2-D matmul [N, in] x [in, out]: differentiating a tensordot over [B, T, ...] makes
    # XLA:CPU materialise a transposed copy of the output gradient for the kernel gradient
    # (2-3x that matmul's own time); the flat form's gradients are plain 2-D dots.
    lead, n_in = x.shape[:x.ndim - self.n_in], math.prod(shape[:self.n_in])
    flat = x.astype(dtype).reshape(-1, n_in)
    y = jnp.dot(flat, kernel.astype(dtype).reshape(n_in, -1),
                preferred_element_type=self.out_dtype)
    if self.has_variable("params", "lora_a"):
      low = jnp.dot(flat, self.get_variable("params", "lora_a").astype(dtype))
      y = y + jnp.dot(low, self.get_variable("params", "lora_b").astype(dtype),
                      preferred_element_type=self.out_dtype)
    y = y.reshape(lead + tuple(self.features))
    if self.use_bias:
      bias = self.param("bias", _zeros(self.axes[self.n_in:]), tuple(self.features), pdtype)
      y = y + bias.astype(dtype)
    return y


def cached_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """softmax(q k^T / sqrt(hd) + log mask) v over a KV cache in [B, K, S, hd] layout.

  q: [B, T, H, hd]; k, v: [B, K, S, hd] (K KV heads, each shared by H / K query heads);
  mask: bool [B, 1, T, S]. Returns [B, T, H, hd]. The cache layout is the one these two
  contractions read without a transpose, which decode steps would otherwise pay for every layer.
  """
  b, t, h, hd = q.shape
  kv = k.shape[1]
  qg = q.reshape(b, t, kv, h // kv, hd)
  scores = jnp.einsum("btkgd,bksd->bkgts", qg, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) / np.sqrt(hd)
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  # Head-major output, then a small transpose: XLA:CPU runs this contraction ~3x faster than
  # one that writes [B, T, K, G, hd] directly.
  out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(q.dtype))
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def _partial_softmax(scores: Array, v: Array, subscripts: str) -> tuple[Array, Array, Array]:
  """One part of a split softmax: (max m, sum exp(s - m), exp(s - m) v), all float32.

  scores: masked, scaled float32 [..., S] (masked entries at finfo.min, so a part whose keys
  are all masked ends up with m = finfo.min and a weight exp(m - m_total) = 0 when combined).
  """
  m = jnp.max(scores, axis=-1, keepdims=True)
  e = jnp.exp(scores - m)
  out = jnp.einsum(subscripts, e.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m, jnp.sum(e, axis=-1, keepdims=True), out


def shared_prefix_attention(q: Array, prefix_k: Array, prefix_v: Array, prefix_mask: Array,
                            k: Array, v: Array, mask: Array) -> Array:
  """Attention of n rows per prefix over one shared prefix cache and each row's own cache.

  Row r = b * n + j (n = R / B) attends to prefix b's keys and to its own. Each part gives its
  row max m_i, l_i = sum exp(s - m_i) and o_i = sum exp(s - m_i) v; with m = max(m_1, m_2),

      out = (e^(m_1 - m) o_1 + e^(m_2 - m) o_2) / (e^(m_1 - m) l_1 + e^(m_2 - m) l_2),

  which is softmax(q [K_prefix; K_row]^T / sqrt(hd) + log mask) [V_prefix; V_row] exactly.
  The prefix scores are one batched matmul per (prefix, KV head) whose rows are the n * T * G
  queries of that prefix's rows (G = H / K): each prefix key is read once per step for its n
  rows, not n times.

  Args:
    q: [R, T, H, hd], R = B * n rows, prefix-major.
    prefix_k, prefix_v: [B, K, P, hd].
    prefix_mask: bool [B, P], True for a real prefix slot.
    k, v: [R, K, S, hd], each row's own keys and values (e.g. its generated tokens).
    mask: bool [R, 1, T, S].

  Returns:
    [R, T, H, hd] in q's dtype. Each query must see at least one key in one of the parts.
  """
  rows, t, h, hd = q.shape
  b, kv = prefix_k.shape[:2]
  n, g = rows // b, h // kv
  if rows != b * n:
    raise ValueError(f"q has {rows} rows, not a multiple of the {b} prefixes")
  scale, fill = 1 / np.sqrt(hd), jnp.finfo(jnp.float32).min
  # Prefix part, [B, K, n, T, G, .]: the n rows of a prefix and their G query heads are the rows
  # of one matmul against that prefix's keys.
  qp = q.reshape(b, n, t, kv, g, hd)
  s_p = jnp.einsum("bntkgd,bkpd->bkntgp", qp, prefix_k.astype(q.dtype),
                   preferred_element_type=jnp.float32) * scale
  s_p = jnp.where(prefix_mask[:, None, None, None, None, :], s_p, fill)
  m_p, l_p, o_p = _partial_softmax(s_p, prefix_v.astype(q.dtype), "bkntgp,bkpd->bkntgd")
  # Own part, [R, K, G, T, .], laid out as `cached_attention`'s.
  qs = q.reshape(rows, t, kv, g, hd)
  s_s = jnp.einsum("btkgd,bksd->bkgts", qs, k.astype(q.dtype),
                   preferred_element_type=jnp.float32) * scale
  s_s = jnp.where(mask[:, :, None], s_s, fill)
  m_s, l_s, o_s = _partial_softmax(s_s, v.astype(q.dtype), "bkgts,bksd->bkgtd")
  # Both parts to the output layout [B, n, T, K, G, .] (hd or 1 wide: no score-sized copies).
  from_prefix = lambda x: x.transpose(0, 2, 3, 1, 4, 5)  # noqa: E731
  from_rows = lambda x: x.reshape(b, n, kv, g, t, -1).transpose(0, 1, 4, 2, 3, 5)  # noqa: E731
  m_p, l_p, o_p = map(from_prefix, (m_p, l_p, o_p))
  m_s, l_s, o_s = map(from_rows, (m_s, l_s, o_s))
  m = jnp.maximum(m_p, m_s)
  a_p, a_s = jnp.exp(m_p - m), jnp.exp(m_s - m)
  out = (a_p * o_p + a_s * o_s) / (a_p * l_p + a_s * l_s)
  return out.reshape(rows, t, h, hd).astype(q.dtype)


def _block_bounds(length: int, block: int) -> list[tuple[int, int]]:
  return [(start, min(start + block, length)) for start in range(0, length, block)]


def _group_queries(x: Array, kv: int) -> Array:
  """[B, T, H, hd] -> [B, K, T, G, hd]: query heads grouped under their KV head, the layout in
  which every product below is a plain batched matmul over (B, K) with (T, G) as its rows."""
  b, t, h, d = x.shape
  return x.reshape(b, t, kv, h // kv, d).transpose(0, 2, 1, 3, 4)


def _ungroup_queries(x: Array) -> Array:
  b, kv, t, g, d = x.shape
  return x.transpose(0, 2, 1, 3, 4).reshape(b, t, kv * g, d)


def _block_scores(q: Array, k: Array, mask: Array) -> Array:
  """q [B, K, c, G, hd], k [B, K, e, hd], mask [B, 1, c, e] -> masked, scaled f32 [B, K, c, G, e]."""
  s = jnp.einsum("bktgd,bksd->bktgs", q, k, preferred_element_type=jnp.float32)
  s = s / np.sqrt(q.shape[-1])
  return jnp.where(mask[:, :, :, None, :], s, jnp.finfo(jnp.float32).min)


def _blockwise_forward(q, k, v, mask, block):
  """Grouped q, o [B, K, T, G, hd]; k, v [B, K, T, hd] -> (o, logsumexp [B, K, T, G, 1])."""
  outs, lses = [], []
  for start, end in _block_bounds(q.shape[2], block):
    s = _block_scores(q[:, :, start:end], k[:, :, :end], mask[:, :, start:end, :end])
    m = jnp.max(s, -1, keepdims=True)
    p = jnp.exp(s - m)
    total = jnp.sum(p, -1, keepdims=True)
    # Normalised after the product: the output block is hd wide, the probabilities e wide.
    o = jnp.einsum("bktgs,bksd->bktgd", p.astype(v.dtype), v[:, :, :end],
                   preferred_element_type=jnp.float32) / total
    outs.append(o.astype(q.dtype))
    lses.append(m + jnp.log(total))
  return jnp.concatenate(outs, 2), jnp.concatenate(lses, 2)


# XLA:CPU removes optimization barriers before its common-subexpression pass unless a program is
# compiled with these options; GPU and TPU keep them until after it. The backward passes of
# `blockwise_causal_attention` and of remat with unrolled layers (`decoder.Model`) recompute
# behind barriers: where these do not hold, the recomputation merges back into the forward pass
# and keeps its memory.
CPU_KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blockwise_causal_attention(q: Array, k: Array, v: Array, mask: Array, block: int) -> Array:
  """softmax(q k^T / sqrt(hd) + log mask) v under a causal mask, one block of `block` queries at
  a time, with a hand-written backward pass.

  q: [B, T, H, hd]; k, v: [B, T, K, hd] (K KV heads, each shared by H / K query heads); mask:
  bool [B, 1, T, T], False wherever key s > query t (it may also mask padding and other
  segments). Returns [B, T, H, hd]. Queries [i, i + c) see only keys < i + c, so the score blocks
  above the diagonal, (n - 1) / 2n of all scores for n blocks, are neither computed nor
  differentiated.

  The backward pass (as in FlashAttention) keeps only the output and the rows' log-sum-exp L and
  recomputes each block's P = exp(S - L); with dP = dO V^T and D = rowsum(dO * O):
  dS = P * (dP - D), dQ = dS K / sqrt(hd), dK = dS^T Q / sqrt(hd), dV = P^T dO. Written by hand
  so that every product runs in the grouped layout, where XLA's own transpose of the forward
  re-laid out the score-sized tensors between its products. It recomputes behind an
  optimization barrier, which on XLA:CPU holds only with `CPU_KEEP_BARRIERS`.
  """
  return _blockwise_fwd(q, k, v, mask, block)[0]  # Unused residuals are dropped under jit.


def _blockwise_fwd(q, k, v, mask, block):
  kv = k.shape[2]
  qg, kt, vt = _group_queries(q, kv), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  out, lse = _blockwise_forward(qg, kt, vt, mask, block)
  return _ungroup_queries(out), (qg, kt, vt, out, lse, mask)


def _blockwise_bwd(block, residuals, d_out):
  # Without the barrier XLA's CSE merges the recomputed score blocks (and the key and value
  # prefixes they read) with the forward pass's, which then stay live until the backward pass:
  # with unrolled layers, every layer's T^2 / 2 scores at once.
  (q, k, v, out, lse, mask), d_out = jax.lax.optimization_barrier((residuals, d_out))
  d_out = _group_queries(d_out, k.shape[1])
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
  scale = 1 / np.sqrt(q.shape[-1])
  dq_blocks = []
  dk, dv = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for start, end in _block_bounds(q.shape[2], block):
    rows = slice(start, end)
    p = jnp.exp(_block_scores(q[:, :, rows], k[:, :, :end], mask[:, :, rows, :end])
                - lse[:, :, rows])
    dp = jnp.einsum("bktgd,bksd->bktgs", d_out[:, :, rows], v[:, :, :end],
                    preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[:, :, rows]) * scale).astype(q.dtype)
    p = p.astype(q.dtype)
    dv = dv.at[:, :, :end].add(jnp.einsum("bktgs,bktgd->bksd", p, d_out[:, :, rows],
                                          preferred_element_type=jnp.float32))
    dk = dk.at[:, :, :end].add(jnp.einsum("bktgs,bktgd->bksd", ds, q[:, :, rows],
                                          preferred_element_type=jnp.float32))
    dq_blocks.append(jnp.einsum("bktgs,bksd->bktgd", ds, k[:, :, :end],
                                preferred_element_type=jnp.float32).astype(q.dtype))
  dq = _ungroup_queries(jnp.concatenate(dq_blocks, 2))
  untranspose = lambda x, like: x.transpose(0, 2, 1, 3).astype(like.dtype)
  return dq, untranspose(dk, k), untranspose(dv, v), None


blockwise_causal_attention.defvjp(_blockwise_fwd, _blockwise_bwd)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE and an optional in-place KV cache.

  Shapes: x [B, T, D]; mask [B, 1, T, S] (True = attend); S = T without a cache, else the cache
  capacity (a `SharedPrefixCache` takes its pair of masks). With a cache, the new keys/values are
  written at `slots` [B, T] of layer `layer`.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, sin: Array, cos: Array, mask: Array, cache=None, layer=None,
               slots=None):
    cfg = self.cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

    def proj(name, heads, head_axis):
      return Linear((heads, cfg.head_dim), ("embed", head_axis, "head_dim"), cfg,
                    use_bias=cfg.qkv_bias, name=name)(x)

    q = proj("q_proj", cfg.num_heads, "heads")
    k = proj("k_proj", cfg.num_kv_heads, "kv_heads")
    v = proj("v_proj", cfg.num_kv_heads, "kv_heads")
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="q_norm")(q)
      k = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="k_norm")(k)
    q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("act_batch", "act_len", "act_kv_heads", "head_dim"))
    if cache is None and cfg.attention_impl == "blockwise":
      out = blockwise_causal_attention(q, k, v, mask, cfg.attention_block)
    elif cache is None:
      impl = None if cfg.attention_impl == "auto" else cfg.attention_impl
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    else:
      # The cache (`KVCache`, `SharedPrefixCache`) knows which attention reads its layout.
      cache = cache.write(layer, slots, k, v)
      out = cache.attend(layer, q, mask)
    out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", "head_dim"))
    out = Linear((cfg.hidden_size,), ("heads", "head_dim", "embed"), cfg, n_in=2,
                 use_bias=cfg.o_bias, name="o_proj")(out)
    return out, cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)). x: [B, T, D] -> [B, T, D]."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg

    def dense(name, features, axes):
      return Linear((features,), axes, cfg, use_bias=cfg.mlp_bias, name=name)

    gate = dense("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
    up = dense("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return dense("down_proj", cfg.hidden_size, ("mlp", "embed"))(h)


class DecoderLayer(nn.Module):
  """Pre-norm residual block: h += attn(norm(h)); h += mlp(norm(h)).

  Written for `nn.scan`: carry = (h [B, T, D], cache or None); `layer` is the scanned layer index.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, carry, layer, sin, cos, mask, slots):
    cfg = self.cfg
    h, cache = carry
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    attn_in = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(h)
    attn_out, cache = Attention(cfg, name="self_attn")(attn_in, sin, cos, mask, cache, layer, slots)
    h = h + attn_out
    mlp_in = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(h)
    h = h + MLP(cfg, name="mlp")(mlp_in)
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_embed"))
    return (h, cache), None
