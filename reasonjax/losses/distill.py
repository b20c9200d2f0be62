"""Distillation: a teacher's next-token distribution as the target, per token.

The generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy Distillation
of Language Models"), with the forward and reverse KL as its ends:

    M = beta P_T + (1 - beta) P_S
    JSD_beta(P_T, P_S) = beta KL(P_T || M) + (1 - beta) KL(P_S || M)      0 < beta < 1
    beta = 0: KL(P_T || P_S) (forward: the student covers the teacher's mass)
    beta = 1: KL(P_S || P_T) (reverse: the student seeks the teacher's modes)

JSD_beta tends to 0 at both ends; beta = 0 and 1 are defined as the KLs it interpolates, as
TRL's GKD trainer does. Both distributions are softmax(logits / temperature).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonjax.losses.tokens import at_least_f32

Array = jax.Array


def _kl(log_p: Array, log_q: Array) -> Array:
  """KL(P || Q) over the last axis from log-probabilities."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def generalized_jsd(student_logits: Array, teacher_logits: Array, mask: Array, *,
                    beta: float = 0.5, temperature: float = 1.0) -> Array:
  """Per-token JSD_beta(P_T, P_S) [B, T] (module docstring), zero where mask is 0.

  Args:
    student_logits: [B, T, V]; teacher_logits: [B, T, V], finite (no gradient flows into
      them); mask: [B, T] (1 = distilled).
    beta: in [0, 1]; 0 is the forward KL(P_T || P_S), 1 the reverse KL(P_S || P_T).
    temperature: > 0, divides both models' logits.
  """
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta={beta}: expected 0 <= beta <= 1 (0: forward KL, 1: reverse KL)")
  if not temperature > 0:
    raise ValueError(f"temperature={temperature}: expected > 0")
  log_s = jax.nn.log_softmax(at_least_f32(student_logits) / temperature, axis=-1)
  log_t = jax.lax.stop_gradient(
      jax.nn.log_softmax(at_least_f32(teacher_logits) / temperature, axis=-1))
  if beta == 0.0:
    loss = _kl(log_t, log_s)
  elif beta == 1.0:
    loss = _kl(log_s, log_t)
  else:
    # log M by logsumexp, so that a token one model gives ~0 mass stays finite.
    log_m = jnp.logaddexp(log_t + jnp.log(beta), log_s + jnp.log1p(-beta))
    loss = beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)
  return loss * mask
