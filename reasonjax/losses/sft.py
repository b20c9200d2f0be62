"""Supervised fine-tuning: token cross-entropy with label smoothing and z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonjax.losses.tokens import at_least_f32

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, mask: Array, *, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> Array:
  """Per-token loss [B, T], zero where mask is 0.

  loss = -(1 - eps) log p(y) - eps * mean_v log p(v) + z * logsumexp(logits)^2

  Args:
    logits: [B, T, V]; targets: int [B, T]; mask: [B, T] (1 = supervised).
    label_smoothing: eps, the mass spread uniformly over the vocabulary.
    z_loss: z, the weight of the squared log-partition (keeps logits from drifting; PaLM).
  """
  logits = at_least_f32(logits)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  # -log p(y) = log_z - logits_y: no [B, T, V] log-probabilities are materialised, and the
  # optional terms cost nothing when off (x * 0.0 is still computed and differentiated).
  loss = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    # -mean_v log p(v) = log_z - mean_v logits_v.
    loss = (1.0 - label_smoothing) * loss + label_smoothing * (log_z - jnp.mean(logits, -1))
  if z_loss:
    loss = loss + z_loss * jnp.square(log_z)
  return loss * mask
