"""Building blocks against independent numpy float64 references and `transformers`' RoPE tables."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from reasonjax import models
from reasonjax.models import decoder, layers


def test_rmsnorm_matches_float64():
  x = np.random.default_rng(0).normal(size=(2, 3, 8)) * 3
  scale = np.random.default_rng(1).normal(size=(8,))
  norm = layers.RMSNorm(1e-5, jnp.float32, jnp.float32)
  out = norm.apply({"params": {"scale": jnp.asarray(scale, jnp.float32)}},
                   jnp.asarray(x, jnp.float32))
  ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * scale
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 256},
])
def test_rope_frequencies_match_transformers(rope):
  hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                                max_position_embeddings=1024, rope_theta=50000.0,
                                rope_scaling=dict(rope))
  ref, attention_scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
  assert attention_scaling == 1.0
  cfg = models.preset("tiny", head_dim=128, rope_theta=50000.0, rope_scaling=rope)
  np.testing.assert_allclose(layers.rope_inv_freq(cfg), ref.double().numpy(), rtol=1e-6)


def test_apply_rope_is_complex_rotation():
  """Pair (x_i, x_{i+hd/2}) as a complex number z_i; RoPE is z_i * exp(1j * pos * f_i)."""
  cfg = models.preset("tiny", head_dim=16, rope_theta=100.0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, 16))
  positions = rng.integers(0, 50, size=(2, 5))
  sin, cos = layers.rope_tables(cfg, jnp.asarray(positions))
  out = np.asarray(layers.apply_rope(jnp.asarray(x, jnp.float32), sin, cos))
  z = x[..., :8] + 1j * x[..., 8:]
  freqs = 100.0 ** (-np.arange(0, 16, 2) / 16)
  rotated = z * np.exp(1j * positions[:, :, None, None] * freqs)
  np.testing.assert_allclose(out, np.concatenate([rotated.real, rotated.imag], -1), atol=2e-5)


def test_linear_contracts_leading_kernel_dims():
  cfg = models.preset("tiny")
  lin = layers.Linear((5,), ("heads", "head_dim", "embed"), cfg, n_in=2, use_bias=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 6))
  kernel, bias = rng.normal(size=(4, 6, 5)), rng.normal(size=(5,))
  out = lin.apply({"params": {"kernel": jnp.asarray(kernel, jnp.float32),
                              "bias": jnp.asarray(bias, jnp.float32)}}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), np.einsum("btij,ijo->bto", x, kernel) + bias,
                             rtol=1e-5, atol=1e-5)


def test_segment_positions_brute_force():
  segs = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5]])
  ref = np.zeros_like(segs)
  for b, t in itertools.product(range(segs.shape[0]), range(segs.shape[1])):
    ref[b, t] = 0 if t == 0 or segs[b, t] != segs[b, t - 1] else ref[b, t - 1] + 1
  np.testing.assert_array_equal(np.asarray(decoder.segment_positions(jnp.asarray(segs))), ref)


def test_attention_mask_brute_force():
  rng = np.random.default_rng(0)
  pad = rng.integers(0, 2, size=(2, 6))
  segs = np.sort(rng.integers(0, 3, size=(2, 6)), axis=1)
  mask = np.asarray(decoder.attention_mask_4d(jnp.asarray(pad), jnp.asarray(segs), 2, 6))
  for b, q, k in itertools.product(range(2), range(6), range(6)):
    assert mask[b, 0, q, k] == (k <= q and pad[b, k] == 1 and segs[b, q] == segs[b, k])


def test_attention_has_no_nan_for_rows_without_keys():
  """A left-padded row's pad queries see no key; they must give numbers, not NaN."""
  cfg = models.preset("tiny", num_layers=1)
  params = models.init_params(cfg, jax.random.key(0))
  mask = jnp.array([[0, 0, 1, 1]])
  logits = models.Model(cfg).apply({"params": params}, jnp.ones((1, 4), jnp.int32),
                                   attention_mask=mask)
  assert np.isfinite(np.asarray(logits)).all()


def _attention_reference(q, k, v, mask):
  """Masked softmax attention in float64 with grouped KV heads. q [B,T,H,d], k/v [B,S,K,d]."""
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("block", [3, 4, 16])
def test_blockwise_causal_attention_matches_float64(block):
  rng = np.random.default_rng(block)
  b, t, h, kv, d = 2, 7, 4, 2, 8
  q, k, v = (rng.normal(size=(b, t, n, d)) for n in (h, kv, kv))
  # Right padding and packed segments; the two pad queries see no key and are left out.
  pad = np.array([[1] * 7, [1] * 5 + [0] * 2])
  segs = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 3, 3]])
  mask = decoder.attention_mask_4d(jnp.asarray(pad), jnp.asarray(segs), b, t)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  seen = pad.astype(bool)[:, :, None, None]
  blockwise = jax.jit(lambda q, k, v: layers.blockwise_causal_attention(q, k, v, mask, block))
  out = blockwise(f32(q), f32(k), f32(v))
  ref = _attention_reference(q, k, v, np.asarray(mask))
  np.testing.assert_allclose(np.where(seen, out, 0), np.where(seen, ref, 0), rtol=1e-5, atol=1e-5)

  # Gradients against JAX's own attention, which computes every score block.
  cotangent = f32(rng.normal(size=(b, t, h, d)) * seen)
  @jax.jit
  def vjp(q, k, v):
    return (jax.vjp(blockwise, q, k, v)[1](cotangent),
            jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask),
                    q, k, v)[1](cotangent))
  ours, theirs = vjp(f32(q), f32(k), f32(v))
  for a, r in zip(ours, theirs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-5)


def test_blockwise_causal_attention_bfloat16_gradients():
  """Mixed precision: bf16 inputs give bf16 outputs and gradients close to the f32 ones."""
  rng = np.random.default_rng(0)
  b, t, h, kv, d = 2, 12, 4, 2, 16
  q, k, v, g = (jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32) for n in (h, kv, kv, h))
  mask = decoder.attention_mask_4d(None, None, b, t)
  f = lambda q, k, v, g: jax.vjp(
      lambda q, k, v: layers.blockwise_causal_attention(q, k, v, mask, 5), q, k, v)[1](g)
  low = jax.jit(f)(*(x.astype(jnp.bfloat16) for x in (q, k, v, g)))
  high = jax.jit(f)(q, k, v, g)
  for a, r in zip(low, high):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r), rtol=0.1, atol=0.1)


def test_blockwise_backward_keeps_no_score_blocks_between_calls():
  """A chain of differentiated calls keeps each call's inputs and outputs for the backward pass,
  not its score blocks: the backward recomputes them behind an optimization barrier. Without it
  XLA's CSE merged them with the forward's, and each call kept 2.6x its float32 scores."""
  b, t, h, d, block = 1, 512, 4, 16, 64

  def temp_bytes(calls):
    def loss(x):
      mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
      for _ in range(calls):
        x = layers.blockwise_causal_attention(x, x, x, mask, block)
      return jnp.sum(x)
    compiled = jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
                                             ).compile(compiler_options=layers.CPU_KEEP_BARRIERS)
    return compiled.memory_analysis().temp_size_in_bytes

  per_call = (temp_bytes(3) - temp_bytes(1)) / 2
  # One call's float32 scores, blocks [i, i + block) x [0, i + block): 2.4 MB.
  scores = 4 * b * h * sum(block * end for end in range(block, t + 1, block))
  assert per_call < scores / 2, (per_call, scores)  # Measured: 0.14 of it.


def _shared_prefix_case(rng, b, n, t, p, s, h=4, kv=2, d=8):
  """Random q, prefix and per-row caches with ragged prefix lengths and a causal own part."""
  q = rng.normal(size=(b * n, t, h, d))
  prefix_k, prefix_v = rng.normal(size=(2, b, kv, p, d))
  k, v = rng.normal(size=(2, b * n, kv, s, d))
  prefix_lengths = rng.integers(1, p + 1, b)
  prefix_mask = np.arange(p)[None] < prefix_lengths[:, None]
  # Row r holds own_lengths[r] earlier tokens; its t queries sit at the slots after them.
  own_lengths = rng.integers(0, s - t + 1, b * n)
  slots = own_lengths[:, None] + np.arange(t)
  mask = np.arange(s)[None, None, None, :] <= slots[:, None, :, None]
  return q, prefix_k, prefix_v, prefix_mask, k, v, mask


@pytest.mark.parametrize("n, t", [(1, 1), (3, 1), (4, 3)])
def test_shared_prefix_attention_matches_float64(n, t):
  """Each row attends to its prefix's keys and its own, as one softmax over both."""
  rng = np.random.default_rng(n * 10 + t)
  b, p, s = 3, 6, 5
  q, prefix_k, prefix_v, prefix_mask, k, v, mask = _shared_prefix_case(rng, b, n, t, p, s)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  out = jax.jit(layers.shared_prefix_attention)(
      f32(q), f32(prefix_k), f32(prefix_v), jnp.asarray(prefix_mask), f32(k), f32(v),
      jnp.asarray(mask))
  # Reference: row r's keys are [prefix r // n; own r] in the [B, S, K, d] layout.
  rows = np.arange(b * n) // n
  both_k = np.concatenate([prefix_k[rows], k], axis=2).transpose(0, 2, 1, 3)
  both_v = np.concatenate([prefix_v[rows], v], axis=2).transpose(0, 2, 1, 3)
  both_mask = np.concatenate([np.broadcast_to(prefix_mask[rows][:, None, None], (b * n, 1, t, p)),
                              mask], axis=-1)
  ref = _attention_reference(q, both_k, both_v, both_mask)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_shared_prefix_attention_one_part_masked():
  """A row whose own part is empty (or whose prefix is masked out) attends to the other part
  only: a fully masked part gets weight 0, not the uniform average of its slots."""
  rng = np.random.default_rng(0)
  q, prefix_k, prefix_v, prefix_mask, k, v, mask = _shared_prefix_case(rng, 2, 2, 1, 5, 4)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  attend = jax.jit(layers.shared_prefix_attention)
  no_own = attend(f32(q), f32(prefix_k), f32(prefix_v), jnp.asarray(prefix_mask), f32(k), f32(v),
                  jnp.zeros(mask.shape, bool))
  rows = np.arange(4) // 2
  ref = _attention_reference(q, prefix_k[rows].transpose(0, 2, 1, 3),
                             prefix_v[rows].transpose(0, 2, 1, 3),
                             np.broadcast_to(prefix_mask[rows][:, None, None], (4, 1, 1, 5)))
  np.testing.assert_allclose(np.asarray(no_own), ref, rtol=1e-5, atol=1e-5)
  no_prefix = attend(f32(q), f32(prefix_k), f32(prefix_v), jnp.zeros(prefix_mask.shape, bool),
                     f32(k), f32(v), jnp.asarray(mask))
  ref = _attention_reference(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
  np.testing.assert_allclose(np.asarray(no_prefix), ref, rtol=1e-5, atol=1e-5)


def test_shared_prefix_attention_bfloat16():
  """bf16 inputs: bf16 output close to the f32 one (scores and the combination stay f32)."""
  rng = np.random.default_rng(1)
  args = _shared_prefix_case(rng, 2, 3, 1, 7, 4)
  f32 = [jnp.asarray(x, jnp.float32) if x.dtype != bool else jnp.asarray(x) for x in args]
  low = [x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in f32]
  out_low = jax.jit(layers.shared_prefix_attention)(*low)
  out = jax.jit(layers.shared_prefix_attention)(*f32)
  assert out_low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out_low, np.float32), np.asarray(out), atol=0.05)
