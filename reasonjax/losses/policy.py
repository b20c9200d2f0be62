"""Policy-gradient losses of the GRPO family on per-token log-probabilities.

A generation batch holds G completions of each prompt, rows group-major (row g * G + j is
completion j of prompt g: the sampler's order). With m_it the mask of completion i's tokens,
A_i its advantage, logp / old_logp / ref_logp the token log-probs under the policy being
trained, the policy that sampled, and the frozen reference, sg() a stop-gradient:

  log-ratio       l_it = logp_it - old_logp_it
  token ratio     r_it = exp(l_it)                                    (GRPO, DAPO, Dr. GRPO)
  sequence ratio  r_it = exp(sum_t m_it l_it / sum_t m_it) for every t  (GSPO)
  surrogate o_it, picked by `surrogate`:
    ppo           min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)   (the default)
      dual clip   max(o_it, c A_i) where A_i < 0, c > 1                 (Ye et al. 2020)
    cispo         sg(clip(r_it, 1 - eps_low, 1 + eps_high)) A_i logp_it (MiniMax-M1, 2025)
    sapo          (4 / tau_i) sigmoid(tau_i (r_it - 1)) A_i, tau_i = tau_pos if A_i > 0
                  else tau_neg                                        (Gao et al. 2025, SAPO)
  KL(pi || ref)   with u = ref_logp - logp (Schulman's estimators):
                  k1 = -u,  k2 = u^2 / 2,  k3 = exp(u) - 1 - u
                  importance-weighted (`kl_importance_weight`): r_it k_it, the ratio not
                  detached (DeepSeek-V3.2's unbiased KL estimate)
  per-token loss  -o_it + beta * k_it - entropy_coef * H_it

and `aggregate` reduces the per-token loss with the method's normalisation (LUSPO is the
`luspo` aggregation of the GSPO loss; MiniMax-M1 normalises CISPO as `dapo`, TRL SAPO as
`grpo`). Everything is computed in at least float32 (float64 stays, for gradient checks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonjax.losses import tokens
from reasonjax.losses.tokens import at_least_f32

Array = jax.Array

ADVANTAGE_SCALES = ("group", "batch", "none")
STD_DDOF = (0, 1)  # the advantage scale's standard deviation: divide by n - ddof
IMPORTANCE_LEVELS = ("token", "sequence")
SURROGATES = ("ppo", "cispo", "sapo")
KL_ESTIMATORS = ("k1", "k2", "k3")
# Aggregation -> (reduction, weight of a micro-batch when gradient accumulation combines them
# as sum_i(w_i loss_i) / sum_i(w_i)). The reductions are tokens.reduce modes, and
# "sequence_sum_mean", sum(v m) / B (LUSPO), which `aggregate` computes itself.
AGGREGATIONS = {
    "grpo": ("sequence_mean", "sequences"),  # mean over sequences of their token means
    "bnpo": ("token_mean", "one"),  # token mean of each micro-batch, micro-batches equal
    "dr_grpo": ("constant_length", "rows"),  # sum / (rows * max_len): no length bias
    "dapo": ("token_mean", "tokens"),  # token mean of the whole update batch
    "luspo": ("sequence_sum_mean", "rows"),  # mean over sequences of their token sums
}


def _choice(name: str, value: str, valid) -> None:
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not valid; expected one of {tuple(valid)}")


def group_advantages(rewards: Array, group_size: int, *, scale: str = "group",
                     leave_one_out: bool = False, ddof: int = 0, eps: float = 1e-4) -> Array:
  """Group-relative advantages. rewards [N], N = groups * group_size, rows group-major -> [N].

  A_i = (R_i - b_i) / s, with the baseline b_i the mean reward of i's group, or with
  `leave_one_out` (RLOO) the mean of the other G - 1 rewards of the group; the scale s is the
  standard deviation of i's group + eps (`group`, GRPO), of the whole batch + eps (`batch`),
  or 1 (`none`, Dr. GRPO). A group whose rewards are all equal gets A = 0.

  The standard deviation is sqrt(sum_j (R_j - mean)^2 / (n - ddof)): ddof=0 (the default) is
  the population one, dividing by n; ddof=1 is Bessel's correction, dividing by n - 1, which
  is what TRL's GRPOTrainer computes (torch.std). With G samples a group's ddof=1 scale is
  sqrt(G / (G - 1)) times the ddof=0 one.
  """
  _choice("scale", scale, ADVANTAGE_SCALES)
  _choice("ddof", ddof, STD_DDOF)
  rewards = at_least_f32(jnp.asarray(rewards))
  if rewards.ndim != 1 or rewards.shape[0] % group_size or group_size < 1:
    raise ValueError(f"rewards must be [groups * group_size] with group_size={group_size}, got "
                     f"shape {rewards.shape}")
  if leave_one_out and group_size < 2:
    raise ValueError("leave_one_out needs group_size >= 2")
  count = group_size if scale == "group" else rewards.shape[0]
  if ddof == 1 and scale != "none" and count < 2:
    raise ValueError(f"ddof=1 needs two rewards per standard deviation; scale={scale!r} has "
                     f"{count}")
  grouped = rewards.reshape(-1, group_size)
  total = jnp.sum(grouped, axis=1, keepdims=True)
  baseline = ((total - grouped) / (group_size - 1) if leave_one_out
              else total / group_size)
  advantages = grouped - baseline
  if scale == "group":
    advantages = advantages / (jnp.std(grouped, axis=1, keepdims=True, ddof=ddof) + eps)
  elif scale == "batch":
    advantages = advantages / (jnp.std(rewards, ddof=ddof) + eps)
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


def check_settings(*, surrogate: str = "ppo", importance: str = "token",
                   epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                   dual_clip: float | None = None, beta: float = 0.0, kl_estimator: str = "k3",
                   kl_importance_weight: bool = False, entropy_coef: float = 0.0,
                   sapo_tau_pos: float = 1.0, sapo_tau_neg: float = 1.05) -> None:
  """Raises ValueError for hyperparameters `policy_loss` refuses (its keyword arguments but the
  arrays), so that a trainer can check its config before any work."""
  del beta, kl_importance_weight, entropy_coef  # any value is valid
  _choice("surrogate", surrogate, SURROGATES)
  _choice("importance", importance, IMPORTANCE_LEVELS)
  _choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
  if surrogate == "ppo" and not (0.0 <= epsilon_low < 1.0 and epsilon_high >= 0.0):
    raise ValueError(f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got epsilon_low="
                     f"{epsilon_low}, epsilon_high={epsilon_high}")
  # CISPO: epsilon_low >= 1 leaves the weight without a lower bound, as MiniMax-M1 ran it.
  if surrogate == "cispo" and not (epsilon_low >= 0.0 and epsilon_high >= 0.0):
    raise ValueError(f"surrogate='cispo' needs epsilon_low >= 0 and epsilon_high >= 0, got "
                     f"epsilon_low={epsilon_low}, epsilon_high={epsilon_high}")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
  if dual_clip is not None and surrogate != "ppo":
    raise ValueError(f"dual_clip bounds the clipped surrogate: it needs surrogate='ppo', got "
                     f"surrogate={surrogate!r}")
  if surrogate == "sapo" and not (sapo_tau_pos > 0 and sapo_tau_neg > 0):
    raise ValueError(f"surrogate='sapo' needs temperatures > 0, got sapo_tau_pos="
                     f"{sapo_tau_pos}, sapo_tau_neg={sapo_tau_neg}")


def policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                ref_logp: Array | None = None, entropy: Array | None = None,
                surrogate: str = "ppo", importance: str = "token", epsilon_low: float = 0.2,
                epsilon_high: float = 0.2, dual_clip: float | None = None, beta: float = 0.0,
                kl_estimator: str = "k3", kl_importance_weight: bool = False,
                entropy_coef: float = 0.0, sapo_tau_pos: float = 1.0,
                sapo_tau_neg: float = 1.05) -> tuple[Array, dict[str, Array]]:
  """Per-token loss [B, T] (formula in the module docstring) and per-token diagnostics.

  Args:
    logp, old_logp: [B, T] log-probs of the sampled tokens under the trained and the sampling
      policy (old_logp is a constant: the sampler's).
    advantages: [B], one per completion.
    mask: [B, T], 1 on completion tokens.
    ref_logp: [B, T] under the reference; needed when beta > 0.
    entropy: [B, T] the policy's entropy at each position (`tokens.token_entropy`); needed when
      entropy_coef > 0.
    surrogate: 'ppo' (the clipped surrogate), 'cispo' or 'sapo'.
    importance: 'token' or 'sequence' (GSPO; LUSPO with the `luspo` aggregation).
    epsilon_low, epsilon_high: the clip range [1 - epsilon_low, 1 + epsilon_high] of the ratio
      (ppo; DAPO's clip-higher sets epsilon_high > epsilon_low) or of CISPO's weight, where
      epsilon_low >= 1 leaves no lower bound (MiniMax-M1 tunes only the upper one; TRL's
      cispo instead caps the weight at epsilon_high itself). Unused by sapo.
    dual_clip: c > 1 bounds the loss of negative-advantage tokens at -c A (ppo); None: off.
    beta: weight of the KL penalty; kl_estimator: 'k1', 'k2' or 'k3'.
    kl_importance_weight: multiply the KL estimate by the ratio r of `importance`'s level,
      gradient kept (DeepSeek-V3.2). With the token ratio, r k3 is an unbiased estimate of
      KL(pi || ref), and its gradient of the KL's gradient, from tokens of old_logp's policy;
      the sequence ratio (GSPO; TRL weights by it too) is not exactly unbiased per token.
    entropy_coef: weight of the entropy bonus.
    sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for A > 0 and A <= 0 (the paper's
      1.0 and 1.05: negative-advantage tokens' gradients decay faster off-policy).

  Returns:
    (loss [B, T], {"ratio", "clipped_low", "clipped_high", "kl", "entropy"}: [B, T] each;
    clipped_* are 1 where the ratio is past the clip edge: for ppo where the clip is active
    (on the advantage's side) and the gradient is zero, for cispo where the weight is cut
    (the gradient stays), never for sapo; kl (weighted as the loss has it) and entropy are
    present when their inputs are).

  CISPO's per-token value is -sg(w) A logp: its gradient is the REINFORCE one weighted by w
  on every token; the value itself is not the surrogate's. SAPO's gate has slope 1 at r = 1,
  so on-policy its gradient is the policy gradient, as ppo's and cispo's are.
  """
  check_settings(surrogate=surrogate, importance=importance, epsilon_low=epsilon_low,
                 epsilon_high=epsilon_high, dual_clip=dual_clip, kl_estimator=kl_estimator,
                 sapo_tau_pos=sapo_tau_pos, sapo_tau_neg=sapo_tau_neg)
  if beta > 0 and ref_logp is None:
    raise ValueError("beta > 0 needs ref_logp")
  if entropy_coef and entropy is None:
    raise ValueError("entropy_coef != 0 needs entropy")
  ratio = importance_ratio(logp, old_logp, mask, importance)
  adv = at_least_f32(jnp.asarray(advantages))[:, None]
  low, high = 1.0 - epsilon_low, 1.0 + epsilon_high
  if surrogate == "ppo":
    objective = jnp.minimum(ratio * adv, jnp.clip(ratio, low, high) * adv)
    if dual_clip is not None:
      objective = jnp.where(adv < 0, jnp.maximum(objective, dual_clip * adv), objective)
    clipped_low, clipped_high = (ratio < low) & (adv < 0), (ratio > high) & (adv > 0)
  elif surrogate == "cispo":
    weight = jax.lax.stop_gradient(jnp.clip(ratio, low, high))
    objective = weight * adv * at_least_f32(logp)
    clipped_low, clipped_high = ratio < low, ratio > high
  else:  # sapo
    tau = jnp.where(adv > 0, sapo_tau_pos, sapo_tau_neg).astype(ratio.dtype)
    objective = 4.0 / tau * jax.nn.sigmoid(tau * (ratio - 1.0)) * adv
    clipped_low = clipped_high = jnp.zeros(ratio.shape, bool)  # a gate, no clip
  loss = -objective
  stats = {"ratio": ratio, "clipped_low": clipped_low.astype(ratio.dtype),
           "clipped_high": clipped_high.astype(ratio.dtype)}
  if ref_logp is not None:
    kl = kl_penalty(logp, ref_logp, kl_estimator)
    stats["kl"] = ratio * kl if kl_importance_weight else kl
    loss = loss + beta * stats["kl"]
  if entropy is not None:
    stats["entropy"] = at_least_f32(entropy)
    loss = loss - entropy_coef * stats["entropy"]
  return loss, stats


def sequence_clip_fraction(stats: dict[str, Array], mask: Array) -> Array:
  """The fraction of completions with a clipped token: `policy_loss`'s stats and mask [B, T]
  -> scalar. At importance='sequence' a completion's tokens share one ratio, so it is the
  fraction of completions whose sequence ratio is clipped. Completions without tokens are
  left out."""
  mask = mask.astype(stats["ratio"].dtype)
  clipped = jnp.max((stats["clipped_low"] + stats["clipped_high"]) * mask, axis=-1) > 0
  has_tokens = jnp.sum(mask, axis=-1) > 0
  return jnp.sum(clipped) / jnp.maximum(jnp.sum(has_tokens), 1)


def aggregate(per_token: Array, mask: Array, mode: str, *, max_len: int | None = None
              ) -> tuple[Array, Array]:
  """(loss, weight): the per-token loss [B, T] reduced as the method `mode` does, and the
  weight of this micro-batch for gradient accumulation (`training.step`), so that accumulating
  gives the same loss as one batch would.

  grpo: mean over sequences of each sequence's token mean; bnpo: token mean of each micro-batch;
  dr_grpo: sum / (B * max_len), max_len the generation budget; dapo: token mean of the whole
  update batch (with one update per generation batch, the whole generation batch); luspo:
  sum / B, the mean over sequences of each one's token sum, i.e. each sequence's token mean
  scaled by its length |y_i| (Liu et al. 2026, with importance='sequence': GSPO's loss made
  length-unbiased). luspo is dr_grpo times max_len: the same direction, a larger step.

  Where libraries differ:
    Empty completions (mask all zero): grpo leaves them out of its mean over sequences (its
      weight counts the sequences with a token), so they change neither loss nor gradient;
      TRL's grpo divides by all B rows, an empty one counting as a zero loss. dr_grpo and
      luspo divide by all B rows (their formulas' 1/G), bnpo and dapo by tokens.
    dapo when the micro-batches of one update have unequal token counts: each micro-batch
      returns its own token mean with its token count as weight, so accumulation gives
      sum(v m) / sum(m) over the whole update batch, exactly. The count is the update's, not
      the generation batch's: with `minibatches` > 1 optimizer steps per generation batch,
      each step is the token mean of its own minibatch.
  """
  _choice("aggregation", mode, AGGREGATIONS)
  reduction, weight_kind = AGGREGATIONS[mode]
  if reduction == "sequence_sum_mean":
    loss = tokens.reduce(per_token, mask, "sum") / per_token.shape[0]
  else:
    loss = tokens.reduce(per_token, mask, reduction, max_len=max_len)
  mask = mask.astype(jnp.float32)
  weight = {"sequences": lambda: jnp.sum(jnp.any(mask > 0, -1).astype(jnp.float32)),
            "one": lambda: jnp.ones((), jnp.float32),
            "rows": lambda: jnp.asarray(mask.shape[0], jnp.float32),
            "tokens": lambda: jnp.sum(mask)}[weight_kind]()
  return loss, weight
