"""Token log-probabilities and the masked reductions every loss shares.

Losses return per-token [B, T] (or per-sequence [B]) values; the trainer reduces them here, so
the aggregation (a real difference between GRPO, Dr. GRPO and DAPO) is chosen in one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
REDUCTIONS = ("token_mean", "sequence_mean", "constant_length", "sum")


def at_least_f32(x: Array) -> Array:
  """bfloat16 -> float32 for stable sums; float64 stays (gradient checks run in float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def token_logprobs(logits: Array, targets: Array) -> Array:
  """log softmax(logits)[targets]. logits [B, T, V] float, targets [B, T] int -> [B, T] float32."""
  logits = at_least_f32(logits)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits: Array) -> Array:
  """Entropy of softmax(logits) at each position: logsumexp(z) - sum_v p_v z_v.
  [B, T, V] -> [B, T] float32."""
  logits = at_least_f32(logits)
  probs = jax.nn.softmax(logits, axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(probs * logits, axis=-1)


def sequence_logprobs(logits: Array, targets: Array, mask: Array) -> Array:
  """sum_t mask * log p(target_t): a sequence's log-probability. -> [B] float32."""
  return jnp.sum(token_logprobs(logits, targets) * mask, axis=-1)


def reduce(values: Array, mask: Array, mode: str, *, max_len: int | None = None) -> Array:
  """Masked reduction of per-token values [B, T] to a scalar.

  Modes:
    token_mean: sum(v m) / sum(m), every token of the batch weighs the same (DAPO).
    sequence_mean: mean over sequences with a token of sum_t(v m) / sum_t(m) (GRPO).
    constant_length: sum(v m) / (B * max_len), no length bias (Dr. GRPO).
    sum: sum(v m).
  """
  values = at_least_f32(values)
  mask = mask.astype(values.dtype)
  total = jnp.sum(values * mask)
  if mode == "token_mean":
    return total / jnp.maximum(jnp.sum(mask), 1.0)
  if mode == "sequence_mean":
    count = jnp.sum(mask, axis=-1)
    per_sequence = jnp.sum(values * mask, axis=-1) / jnp.maximum(count, 1.0)
    has_tokens = (count > 0).astype(jnp.float32)
    return jnp.sum(per_sequence * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)
  if mode == "constant_length":
    if max_len is None:
      raise ValueError("reduce(mode='constant_length') needs max_len")
    return total / (values.shape[0] * max_len)
  if mode == "sum":
    return total
  raise ValueError(f"unknown reduction {mode!r}; valid: {REDUCTIONS}")
