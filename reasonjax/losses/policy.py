"""Policy-gradient losses of the GRPO family on per-token log-probabilities.

A generation batch holds G completions of each prompt, rows group-major (row g * G + j is
completion j of prompt g: the sampler's order). With m_it the mask of completion i's tokens,
A_i its advantage, logp / old_logp / ref_logp the token log-probs under the policy being
trained, the policy that sampled, and the frozen reference:

  log-ratio       l_it = logp_it - old_logp_it
  token ratio     r_it = exp(l_it)                                    (GRPO, DAPO, Dr. GRPO)
  sequence ratio  r_it = exp(sum_t m_it l_it / sum_t m_it) for every t  (GSPO)
  surrogate       o_it = min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)
  dual clip       o_it = max(o_it, c A_i) where A_i < 0, c > 1         (Ye et al. 2020)
  KL(pi || ref)   with u = ref_logp - logp (Schulman's estimators):
                  k1 = -u,  k2 = u^2 / 2,  k3 = exp(u) - 1 - u
  per-token loss  -o_it + beta * k_it - entropy_coef * H_it

and `aggregate` reduces the per-token loss with the method's normalisation. Everything is computed
in at least float32 (float64 stays, for gradient checks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonjax.losses import tokens
from reasonjax.losses.tokens import at_least_f32

Array = jax.Array

ADVANTAGE_SCALES = ("group", "batch", "none")
IMPORTANCE_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
# Aggregation -> (tokens.reduce mode, weight of a micro-batch when gradient accumulation
# combines them as sum_i(w_i loss_i) / sum_i(w_i)).
AGGREGATIONS = {
    "grpo": ("sequence_mean", "sequences"),  # mean over sequences of their token means
    "bnpo": ("token_mean", "one"),  # token mean of each micro-batch, micro-batches equal
    "dr_grpo": ("constant_length", "rows"),  # sum / (rows * max_len): no length bias
    "dapo": ("token_mean", "tokens"),  # token mean of the whole update batch
}


def _choice(name: str, value: str, valid) -> None:
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not valid; expected one of {tuple(valid)}")


def group_advantages(rewards: Array, group_size: int, *, scale: str = "group",
                     leave_one_out: bool = False, eps: float = 1e-4) -> Array:
  """Group-relative advantages. rewards [N], N = groups * group_size, rows group-major -> [N].

  A_i = (R_i - b_i) / s, with the baseline b_i the mean reward of i's group, or with
  `leave_one_out` (RLOO) the mean of the other G - 1 rewards of the group; the scale s is the
  (population) standard deviation of i's group + eps (`group`, GRPO), of the whole batch + eps
  (`batch`), or 1 (`none`, Dr. GRPO). A group whose rewards are all equal gets A = 0.
  """
  _choice("scale", scale, ADVANTAGE_SCALES)
  rewards = at_least_f32(jnp.asarray(rewards))
  if rewards.ndim != 1 or rewards.shape[0] % group_size or group_size < 1:
    raise ValueError(f"rewards must be [groups * group_size] with group_size={group_size}, got "
                     f"shape {rewards.shape}")
  if leave_one_out and group_size < 2:
    raise ValueError("leave_one_out needs group_size >= 2")
  grouped = rewards.reshape(-1, group_size)
  total = jnp.sum(grouped, axis=1, keepdims=True)
  baseline = ((total - grouped) / (group_size - 1) if leave_one_out
              else total / group_size)
  advantages = grouped - baseline
  if scale == "group":
    advantages = advantages / (jnp.std(grouped, axis=1, keepdims=True) + eps)
  elif scale == "batch":
    advantages = advantages / (jnp.std(rewards) + eps)
  return advantages.reshape(-1)


def kl_penalty(logp: Array, ref_logp: Array, estimator: str = "k3") -> Array:
  """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi. [B, T] -> [B, T]."""
  _choice("kl_estimator", estimator, KL_ESTIMATORS)
  u = at_least_f32(ref_logp) - at_least_f32(logp)
  if estimator == "k1":
    return -u
  if estimator == "k2":
    return 0.5 * jnp.square(u)
  return jnp.expm1(u) - u  # expm1: exact for the small u of a policy near its reference


def importance_ratio(logp: Array, old_logp: Array, mask: Array, level: str = "token") -> Array:
  """r [B, T]: per token exp(logp - old_logp), or (GSPO) one ratio per sequence, the exp of the
  mean token log-ratio, repeated over its tokens."""
  _choice("importance", level, IMPORTANCE_LEVELS)
  log_ratio = at_least_f32(logp) - at_least_f32(old_logp)
  if level == "sequence":
    mask = mask.astype(log_ratio.dtype)
    mean = jnp.sum(log_ratio * mask, -1, keepdims=True) / jnp.maximum(
        jnp.sum(mask, -1, keepdims=True), 1.0)
    log_ratio = jnp.broadcast_to(mean, log_ratio.shape)
  return jnp.exp(log_ratio)


def policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                ref_logp: Array | None = None, entropy: Array | None = None,
                importance: str = "token", epsilon_low: float = 0.2,
                epsilon_high: float = 0.2, dual_clip: float | None = None, beta: float = 0.0,
                kl_estimator: str = "k3", entropy_coef: float = 0.0
                ) -> tuple[Array, dict[str, Array]]:
  """Per-token loss [B, T] (formula in the module docstring) and per-token diagnostics.

  Args:
    logp, old_logp: [B, T] log-probs of the sampled tokens under the trained and the sampling
      policy (old_logp is a constant: the sampler's).
    advantages: [B], one per completion.
    mask: [B, T], 1 on completion tokens.
    ref_logp: [B, T] under the reference; needed when beta > 0.
    entropy: [B, T] the policy's entropy at each position (`tokens.token_entropy`); needed when
      entropy_coef > 0.
    importance: 'token' or 'sequence' (GSPO).
    epsilon_low, epsilon_high: the clip range [1 - epsilon_low, 1 + epsilon_high] (DAPO's
      clip-higher sets epsilon_high > epsilon_low).
    dual_clip: c > 1 bounds the loss of negative-advantage tokens at -c A; None: off.
    beta: weight of the KL penalty; kl_estimator: 'k1', 'k2' or 'k3'.
    entropy_coef: weight of the entropy bonus.

  Returns:
    (loss [B, T], {"ratio", "clipped_low", "clipped_high", "kl", "entropy"}: [B, T] each;
    clipped_* are 1 where the clip is active and the gradient is zero; kl and entropy are
    present when their inputs are).
  """
  if not (0.0 <= epsilon_low < 1.0 and epsilon_high >= 0.0):
    raise ValueError(f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got epsilon_low="
                     f"{epsilon_low}, epsilon_high={epsilon_high}")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
  if beta > 0 and ref_logp is None:
    raise ValueError("beta > 0 needs ref_logp")
  if entropy_coef and entropy is None:
    raise ValueError("entropy_coef != 0 needs entropy")
  ratio = importance_ratio(logp, old_logp, mask, importance)
  adv = at_least_f32(jnp.asarray(advantages))[:, None]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
  surrogate = jnp.minimum(unclipped, clipped)
  if dual_clip is not None:
    surrogate = jnp.where(adv < 0, jnp.maximum(surrogate, dual_clip * adv), surrogate)
  loss = -surrogate
  stats = {"ratio": ratio,
           "clipped_low": ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(ratio.dtype),
           "clipped_high": ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(ratio.dtype)}
  if ref_logp is not None:
    stats["kl"] = kl_penalty(logp, ref_logp, kl_estimator)
    loss = loss + beta * stats["kl"]
  if entropy is not None:
    stats["entropy"] = at_least_f32(entropy)
    loss = loss - entropy_coef * stats["entropy"]
  return loss, stats


def aggregate(per_token: Array, mask: Array, mode: str, *, max_len: int | None = None
              ) -> tuple[Array, Array]:
  """(loss, weight): the per-token loss [B, T] reduced as the method `mode` does, and the
  weight of this micro-batch for gradient accumulation (`training.step`), so that accumulating
  gives the same loss as one batch would.

  grpo: mean over sequences of each sequence's token mean; bnpo: token mean of each micro-batch;
  dr_grpo: sum / (B * max_len), max_len the generation budget; dapo: token mean of the whole
  update batch (with one update per generation batch, the whole generation batch).
  """
  _choice("aggregation", mode, AGGREGATIONS)
  reduction, weight_kind = AGGREGATIONS[mode]
  loss = tokens.reduce(per_token, mask, reduction, max_len=max_len)
  mask = mask.astype(jnp.float32)
  weight = {"sequences": lambda: jnp.sum(jnp.any(mask > 0, -1).astype(jnp.float32)),
            "one": lambda: jnp.ones((), jnp.float32),
            "rows": lambda: jnp.asarray(mask.shape[0], jnp.float32),
            "tokens": lambda: jnp.sum(mask)}[weight_kind]()
  return loss, weight
