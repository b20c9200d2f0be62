"""Supervised fine-tuning: token cross-entropy with label smoothing and z-loss, and the HRM
self-training loss (cross-entropy plus a log-damped KL to the starting policy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonjax.losses import tokens
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


def reference_kl(logits: Array, ref_logits: Array, mask: Array) -> Array:
  """Per-token KL(ref || policy) over the vocabulary [B, T], zero where mask is 0.

  KL_t = sum_v p_ref(v) (log p_ref(v) - log p(v))
       = sum_v p_ref(v) (r_v - z_v) + logsumexp(z) - logsumexp(r)

  Args:
    logits: policy logits z, [B, T, V]; ref_logits: frozen reference logits r, [B, T, V], finite
      (no gradient flows into them); mask: [B, T] (1 = supervised).
  """
  logits = at_least_f32(logits)
  ref_logits = jax.lax.stop_gradient(at_least_f32(ref_logits))
  # Only p_ref is a [B, T, V] intermediate: the log-partitions absorb the normalisation, so
  # neither model's log-probabilities are materialised.
  p_ref = jax.nn.softmax(ref_logits, axis=-1)
  kl = (jnp.sum(p_ref * (ref_logits - logits), axis=-1)
        + jax.nn.logsumexp(logits, axis=-1) - jax.nn.logsumexp(ref_logits, axis=-1))
  return kl * mask


def kl_regularized(logits: Array, ref_logits: Array, targets: Array, mask: Array, *,
                   kl_weight: float) -> tuple[Array, dict[str, Array]]:
  """HRM self-training loss: token-mean cross-entropy plus a log-damped KL to the reference.

  loss = CE + w * log(1 + KL),  CE = sum_t m_t CE_t / sum_t m_t,  KL = sum_t m_t KL_t / sum_t m_t

  with CE_t = -log p(y_t) and KL_t = KL(ref || policy) at token t (`reference_kl`); both means
  run over the supervised tokens of the whole batch, and log1p applies once, to the mean KL.
  log1p keeps the penalty's gradient w / (1 + KL) from dominating once the policy drifts.
  The HRM reference code (F.kl_div(..., reduction="batchmean") at batch size 1, no mask) takes
  log1p of the KL summed over a sequence's positions; the token mean used here does not grow
  with sequence length, so w means the same for every length. Because log1p is not linear, the
  trainer's token-weighted gradient accumulation gives the token-weighted mean of micro-batch
  losses, which matches the full-batch loss exactly only in the CE term.

  Args:
    logits: policy logits [B, T, V]; ref_logits: the frozen starting policy's logits [B, T, V]
      (stop_gradient inside); targets: int [B, T]; mask: [B, T] (1 = supervised).
    kl_weight: w; at 0 the loss is the CE token mean.

  Returns:
    (loss, {"loss", "cross_entropy", "kl"}): scalars; "kl" is the token-mean KL before log1p.

  Reference: Wang et al. 2025, "Towards Hierarchical Multi-Step Reward Models for Enhanced
  Reasoning in Large Language Models", policy self-training.
  """
  ce = tokens.reduce(cross_entropy(logits, targets, mask), mask, "token_mean")
  kl = tokens.reduce(reference_kl(logits, ref_logits, mask), mask, "token_mean")
  loss = ce + kl_weight * jnp.log1p(kl)
  return loss, {"loss": loss, "cross_entropy": ce, "kl": kl}
