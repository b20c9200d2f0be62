"""Decoder behaviour beyond HF parity: KV cache, packing, padding side, bf16, remat, layout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax import models
from reasonjax.models import layers

CFG = models.preset("tiny", num_layers=2, initializer_range=0.2)


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(0))


@functools.cache
def _apply(cfg):
  return jax.jit(models.Model(cfg).apply)


def forward(params, tokens, cfg=CFG, **kw):
  return np.asarray(_apply(cfg)({"params": params}, jnp.asarray(tokens), **kw))


def test_kv_cache_prefill_then_decode_equals_full_forward(params):
  """Rows with different prompt lengths prefill in one right-padded block, then decode one token
  per step; every step's logits equal the full (cache-free) forward at that position."""
  rng = np.random.default_rng(0)
  lengths, steps, prompt_len = np.array([5, 2, 7]), 6, 7
  seqs = rng.integers(0, CFG.vocab_size, (3, prompt_len + steps)).astype(np.int32)
  full = forward(params, seqs)
  model = models.Model(CFG)
  prompt_mask = (np.arange(prompt_len)[None] < lengths[:, None]).astype(np.int32)
  cache = models.init_cache(CFG, 3, capacity=prompt_len + steps)
  logits, cache = _apply(CFG)({"params": params},
                              jnp.asarray(seqs[:, :prompt_len] * prompt_mask),
                              attention_mask=jnp.asarray(prompt_mask), cache=cache)
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths)
  last = np.asarray(logits)[np.arange(3), lengths - 1]
  np.testing.assert_allclose(last, full[np.arange(3), lengths - 1], atol=1e-4)
  step = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cache=c))
  for j in range(steps - 1):
    token = seqs[np.arange(3), lengths + j][:, None]
    logits, cache = step(params, jnp.asarray(token), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(3), lengths + j],
                               atol=1e-4, err_msg=f"decode step {j}")
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths + steps - 1)


def test_packed_segments_equal_separate_sequences(params):
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, CFG.vocab_size, 5), rng.integers(0, CFG.vocab_size, 4)
  packed = np.concatenate([a, b, [0]])[None].astype(np.int32)
  segments = np.array([[1] * 5 + [2] * 4 + [0]], np.int32)
  out = forward(params, packed, segment_ids=jnp.asarray(segments))
  np.testing.assert_allclose(out[0, :5], forward(params, a[None])[0], atol=1e-4)
  np.testing.assert_allclose(out[0, 5:9], forward(params, b[None])[0], atol=1e-4)


def test_left_and_right_padding_give_the_same_logits(params):
  rng = np.random.default_rng(2)
  seq = rng.integers(1, CFG.vocab_size, 5).astype(np.int32)
  ref = forward(params, seq[None])[0]
  left = forward(params, np.concatenate([[0, 0, 0], seq])[None],
                 attention_mask=jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1]]))[0, 3:]
  right = forward(params, np.concatenate([seq, [0, 0, 0]])[None],
                  attention_mask=jnp.asarray([[1, 1, 1, 1, 1, 0, 0, 0]]))[0, :5]
  np.testing.assert_allclose(left, ref, atol=1e-4)
  np.testing.assert_allclose(right, ref, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_logits(params):
  tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
  cfg16 = CFG.replace(dtype="bfloat16")
  out16, out32 = forward(params, tokens, cfg16), forward(params, tokens)
  assert out16.dtype == np.float32
  assert jax.tree.leaves(jax.eval_shape(functools.partial(models.init_params, cfg16),
                                        jax.random.key(0)))[0].dtype == jnp.float32
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert 1e-5 < rel < 0.05, rel  # Really computed in bf16, and still close.


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_memory_not_results(params, policy):
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, CFG.vocab_size, (2, 8)), jnp.int32)

  def loss(p, cfg):
    return models.Model(cfg).apply({"params": p}, tokens).mean()

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_ref = grad(params, CFG)
  g = grad(params, CFG.replace(remat=policy))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_remat_full_keeps_less_with_unrolled_layers():
  """Unrolled layers remat behind optimization barriers: without them XLA's CSE merged the
  recomputation back into the forward pass, and 'full' kept 94% of what 'none' keeps."""
  cfg = CFG.replace(num_layers=4)
  tokens = jax.ShapeDtypeStruct((2, 256), jnp.int32)

  def temp_bytes(cfg):
    loss = lambda p, t: models.Model(cfg).apply({"params": p}, t).mean()  # noqa: E731
    compiled = jax.jit(jax.grad(loss)).lower(models.param_shapes(cfg), tokens).compile(
        compiler_options=layers.CPU_KEEP_BARRIERS)
    return compiled.memory_analysis().temp_size_in_bytes

  ratio = temp_bytes(cfg.replace(remat="full")) / temp_bytes(cfg)
  assert ratio < 0.6, ratio  # Measured: 0.33.


def test_per_layer_and_scanned_layers_agree():
  """The default runs one module per layer; nn.scan over the same weights, stacked, must give
  the same logits, cache and gradients."""
  scanned = CFG.replace(scan_layers=True)
  stacked = models.init_params(scanned, jax.random.key(1))
  per_layer = models.unstack_layers(stacked)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, CFG.vocab_size, (2, 8)), jnp.int32)

  def loss(p, cfg):
    return models.Model(cfg).apply({"params": p}, tokens).mean()

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (value, g), (value_ref, g_ref) = grad(per_layer, CFG), grad(stacked, scanned)
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  g_ref = models.unstack_layers(g_ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  (logits, cache), (logits_ref, cache_ref) = [
      _apply(cfg)({"params": p}, tokens, cache=models.init_cache(cfg, 2, 8))
      for cfg, p in ((CFG, per_layer), (scanned, stacked))]
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
  for a, b in ((cache.k, cache_ref.k), (cache.v, cache_ref.v)):  # A tuple of layers vs a stack.
    np.testing.assert_allclose(np.stack(a), b, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cache.lengths, cache_ref.lengths)


def test_parameter_tree_layout_is_pinned():
  """Old checkpoints (orbax) only restore if paths and shapes stay as they are: change this
  test only together with a conversion for existing checkpoints. The stacked layout
  (`scan_layers`) is pinned here; the default has the same leaves without the L axis, one
  `layers_{i}` subtree per layer."""
  cfg = models.preset("tiny", score_head=True, tie_word_embeddings=False, qk_norm=True,
                      scan_layers=True)
  L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  H, K, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  expected = {
      "embed_tokens/embedding": (V, D),
      "layers/input_layernorm/scale": (L, D),
      "layers/post_attention_layernorm/scale": (L, D),
      "layers/self_attn/q_proj/kernel": (L, D, H, hd),
      "layers/self_attn/q_proj/bias": (L, H, hd),
      "layers/self_attn/k_proj/kernel": (L, D, K, hd),
      "layers/self_attn/k_proj/bias": (L, K, hd),
      "layers/self_attn/v_proj/kernel": (L, D, K, hd),
      "layers/self_attn/v_proj/bias": (L, K, hd),
      "layers/self_attn/q_norm/scale": (L, hd),
      "layers/self_attn/k_norm/scale": (L, hd),
      "layers/self_attn/o_proj/kernel": (L, H, hd, D),
      "layers/mlp/gate_proj/kernel": (L, D, F),
      "layers/mlp/up_proj/kernel": (L, D, F),
      "layers/mlp/down_proj/kernel": (L, F, D),
      "norm/scale": (D,),
      "lm_head/kernel": (D, V),
      "score_head/kernel": (D, 1),
  }
  flat = jax.tree_util.tree_flatten_with_path(models.param_shapes(cfg))[0]
  got = {"/".join(k.key for k in path): leaf.shape for path, leaf in flat}
  assert got == expected
  axes = models.param_logical_axes(cfg)
  assert tuple(axes["layers"]["self_attn"]["q_proj"]["kernel"]) == (
      "layers", "embed", "heads", "head_dim")
  assert tuple(axes["embed_tokens"]["embedding"]) == ("vocab", "embed")

  flat = jax.tree_util.tree_flatten_with_path(models.param_shapes(cfg.replace(scan_layers=False)))
  got = {"/".join(k.key for k in path): leaf.shape for path, leaf in flat[0]}
  per_layer = {name.replace("layers/", f"layers_{i}/"): shape[1:]
               for name, shape in expected.items() if name.startswith("layers/")
               for i in range(L)}
  assert got == {k: v for k, v in expected.items() if not k.startswith("layers/")} | per_layer


def test_misuse_raises_clear_errors(params):
  model = models.Model(CFG)
  cache = models.init_cache(CFG, 1, 8)
  tokens = jnp.ones((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="segment_ids.*cannot be combined with a KV cache"):
    model.apply({"params": params}, tokens, segment_ids=tokens, cache=cache)
  with pytest.raises(ValueError, match="no score head"):
    model.apply({"params": params}, tokens, method=models.Model.score)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_shared_prefix_cache_decode_equals_full_forward(scan_layers):
  """Prompts of different lengths prefill once; n = 2 rows per prompt then take different
  tokens (a 2-token chunk, then one per step) against the shared prompt cache. Every logit equals
  the full forward of that row's prompt + tokens, with positions continuing after the prompt;
  the prompt cache is never written."""
  cfg = CFG.replace(scan_layers=scan_layers)
  stacked = models.init_params(CFG.replace(scan_layers=True), jax.random.key(2))
  params = stacked if scan_layers else models.unstack_layers(stacked)
  model = models.Model(cfg)
  rng = np.random.default_rng(3)
  lengths, n, width, new = np.array([5, 2, 7]), 2, 7, 6
  prompts = rng.integers(0, cfg.vocab_size, (3, width)).astype(np.int32)
  rows = np.arange(3 * n) // n
  tokens = rng.integers(0, cfg.vocab_size, (3 * n, new)).astype(np.int32)
  seqs = np.zeros((3 * n, width + new), np.int32)
  for r in range(3 * n):
    seqs[r, :lengths[rows[r]] + new] = np.concatenate([prompts[rows[r], :lengths[rows[r]]],
                                                        tokens[r]])
  full = forward(params, seqs, cfg=cfg)
  _, prefix = jax.jit(models.prefill, static_argnums=(0, 4))(
      model, params, jnp.asarray(prompts), jnp.asarray(lengths), width)
  cache = models.SharedPrefixCache.create(prefix, n, new)
  assert cache.num_samples == n and cache.capacity == new
  step = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cache=c))
  logits, cache = step(params, jnp.asarray(tokens[:, :2]), cache)
  at = lengths[rows][:, None] + np.arange(new)  # position of each generated token
  np.testing.assert_allclose(np.asarray(logits), full[np.arange(3 * n)[:, None], at[:, :2]],
                             atol=1e-4)
  for j in range(2, new):
    logits, cache = step(params, jnp.asarray(tokens[:, j:j + 1]), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(3 * n), at[:, j]],
                               atol=1e-4, err_msg=f"decode step {j}")
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths[rows] + new)
  np.testing.assert_array_equal(np.asarray(cache.rows.lengths), np.full(3 * n, new))
  for a, b in ((cache.prefix_k, prefix.k), (cache.prefix_v, prefix.v)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
