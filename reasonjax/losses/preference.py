"""Pairwise preference losses (the DPO family) on per-sequence log-probabilities.

Inputs are summed log-probabilities [B] of the chosen (w) and rejected (l) response of each pair
under the policy (`logp_w`, `logp_l`) and, for the losses that have one, the frozen reference
(`ref_logp_w`, `ref_logp_l`), e.g. from `tokens.sequence_logprobs`. Each loss returns a per-pair
loss [B]; the trainer reduces it. Most are functions of the log-ratio margin

  Delta = (logp_w - ref_logp_w) - (logp_l - ref_logp_l),

whose scaled value beta * Delta is the difference of the DPO implicit rewards.

Losses need different inputs (references, lengths, the chosen NLL), so the signatures differ;
`LOSSES` names the ones the DPO trainer can feed (per-sequence inputs of whole solutions) and
the trainer passes what the named loss takes. `step_apo` is not in it: it needs per-step values
(`q_w`, `q_l`) that the DPO trainer does not produce.
Hyperparameters are keyword-only. Python numbers are range-checked on every call (at trace time
under jit); traced or array hyperparameters are not, so they can be swept inside a jitted step.
Everything is computed in at least float32 (float64 stays, for gradient checks).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from reasonjax.losses.tokens import at_least_f32

Array = jax.Array


# ----------------------------------------------------------------------------- checks, helpers


def _check(name: str, value, low: float, high: float = math.inf, *, high_open: bool = False,
           low_open: bool = False) -> None:
  """Raises ValueError if a Python-number hyperparameter lies outside its range."""
  if not isinstance(value, numbers.Real):  # traced or array: cannot be checked without a sync
    return
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (above and below and math.isfinite(value)):
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


def _check_beta(beta) -> None:
  _check("beta", beta, 0.0, low_open=True)


def _f(x) -> Array:
  return at_least_f32(jnp.asarray(x))


def _margin(logp_w, logp_l, ref_logp_w, ref_logp_l) -> Array:
  """Delta [B]. Each log-ratio first: a policy and reference log-prob are close, so their
  difference is exact, while logp_w - logp_l would round away the shorter response's digits."""
  return (_f(logp_w) - _f(ref_logp_w)) - (_f(logp_l) - _f(ref_logp_l))


def _length(length) -> Array:
  # A padding pair with no tokens (length 0, logp 0) then gives 0 instead of 0 / 0 = nan.
  return jnp.maximum(_f(length), 1.0)


def log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012, "Accurately computing
  log(1 - exp(-|a|))").

  Near 0, 1 - exp(x) cancels, so log(-expm1(x)); far below 0, exp(x) is tiny against 1, so
  log1p(-exp(x)). The switch is at x = -log 2. x [...] -> [...].
  """
  x = _f(x)
  near_zero = x > -math.log(2.0)
  # Near 0, exp(x) rounds to 1 and log1p(-1) = -inf; jnp.where would still multiply its
  # gradient by 0, giving nan, so the far branch never sees those inputs. The near branch is
  # finite for every x < 0.
  x_far = jnp.where(near_zero, -1.0, x)
  return jnp.where(near_zero, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x_far)))


# ----------------------------------------------------------------------------- with a reference


def dpo(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *, beta: float,
        label_smoothing: float = 0.0) -> Array:
  """Sigmoid DPO, and conservative DPO (cDPO) when label_smoothing > 0. -> [B].

  loss = -(1 - eps) log sigmoid(beta Delta) - eps log sigmoid(-beta Delta)

  eps is the assumed probability that a preference label is flipped: the loss is the cross
  entropy against the soft label (1 - eps, eps), so for 0 < eps < 1/2 it is minimised at the
  finite margin beta Delta = log((1 - eps) / eps) instead of pushing Delta to infinity. At
  eps = 1/2 the loss is even in Delta (minimum log 2 at Delta = 0).

  Args:
    logp_w, logp_l: [B] policy log-probs of the chosen and rejected responses.
    ref_logp_w, ref_logp_l: [B] reference log-probs of the same responses.
    beta: > 0, inverse temperature of the implicit reward beta * log(pi / pi_ref).
    label_smoothing: eps in [0, 1/2].

  Rafailov et al. 2023, "Direct Preference Optimization"; cDPO: Mitchell 2023, "A note on DPO
  with noisy preferences and relationship to IPO".
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def robust_dpo(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *, beta: float,
               label_smoothing: float) -> Array:
  """Robust DPO (rDPO): DPO de-biased for labels flipped with probability eps. -> [B].

  loss = [(1 - eps) l(beta Delta) - eps l(-beta Delta)] / (1 - 2 eps),  l(z) = -log sigmoid(z)

  Unbiased: (1 - eps) loss(w, l) + eps loss(l, w) = l(beta Delta), the clean DPO loss. Unlike
  cDPO it is not bounded below for eps > 0 (it decreases like -eps beta Delta / (1 - 2 eps)).
  eps = 0 is DPO.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    label_smoothing: eps in [0, 1/2), the label-flip rate.

  Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback".
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5, high_open=True)
  z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  eps = label_smoothing
  return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
        beta: float) -> Array:
  """Identity preference optimisation (IPO). -> [B].

  loss = (Delta - 1 / (2 beta))^2

  A squared regression of Delta onto a fixed target, so Delta cannot run off to infinity on
  deterministic preferences. The paper's regulariser is tau; here tau = beta (as in TRL), so a
  larger beta means a smaller target margin. The paper uses length-averaged log-probs for IPO;
  this function takes whatever log-probs it is given (sum or mean): the caller decides.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: tau > 0.

  Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences".
  """
  _check_beta(beta)
  delta = _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return jnp.square(delta - 1.0 / (2.0 * beta))


def hinge(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
          beta: float) -> Array:
  """Hinge (SLiC-style) preference loss. -> [B].

  loss = relu(1 - beta Delta)

  Zero once the implicit-reward margin beta Delta reaches 1, so beta is 1 / (margin in Delta).

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.

  Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (with the
  reference log-ratio, as in the DPO paper's comparison and TRL).
  """
  _check_beta(beta)
  return jax.nn.relu(1.0 - beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l))


def step_apo(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, q_w: Array,
             q_l: Array, *, beta: float, alpha: float) -> Array:
  """Step-level advantage preference optimisation (Step-APO): DPO on a pair of reasoning steps
  with a margin set by their values. -> [B].

  loss = -log sigmoid(beta Delta - alpha (q_w - q_l))

  The log-probs are of the two candidate steps after a shared prefix. The larger the value gap
  between the chosen and rejected step, the larger the implicit-reward margin the policy must
  reach before the loss flattens; alpha = 0 is DPO.

  Not in `LOSSES`: it needs pairs of steps with their values (q_w, q_l, e.g. from a step-level
  search), which the DPO trainer, whose pairs are whole solutions, does not produce; call it
  directly.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`, for the chosen and rejected steps.
    q_w, q_l: [B] step values or advantages of the chosen and rejected steps (e.g. MCTS Q-values
      or process-reward scores); data, not differentiated through.
    beta: > 0.
    alpha: >= 0, weight of the value gap.
  """
  _check_beta(beta)
  _check("alpha", alpha, 0.0)
  z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return -jax.nn.log_sigmoid(z - alpha * (_f(q_w) - _f(q_l)))


# ----------------------------------------------------------------------------- reference-free


def reference_free(logp_w: Array, logp_l: Array, *, beta: float) -> Array:
  """DPO without a reference model (a uniform reference). -> [B].

  loss = -log sigmoid(beta (logp_w - logp_l))

  Args:
    logp_w, logp_l: [B] policy log-probs of the chosen and rejected responses.
    beta: > 0.

  Rafailov et al. 2023 (the reference-free ablation).
  """
  _check_beta(beta)
  return -jax.nn.log_sigmoid(beta * (_f(logp_w) - _f(logp_l)))


def simpo(logp_w: Array, logp_l: Array, len_w: Array, len_l: Array, *, beta: float,
          gamma: float) -> Array:
  """Simple preference optimisation (SimPO): length-normalised, reference-free, with a margin.
  -> [B].

  loss = -log sigmoid(beta (logp_w / len_w - logp_l / len_l) - gamma)

  gamma is the target reward margin in reward units (the paper's gamma, not TRL's
  gamma / beta ratio). Lengths below 1 count as 1.

  Args:
    logp_w, logp_l: [B] summed policy log-probs of the chosen and rejected responses.
    len_w, len_l: [B] their token counts (int or float).
    beta: > 0.
    gamma: >= 0.

  Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
  """
  _check_beta(beta)
  _check("gamma", gamma, 0.0)
  reward_gap = _f(logp_w) / _length(len_w) - _f(logp_l) / _length(len_l)
  return -jax.nn.log_sigmoid(beta * reward_gap - gamma)


def orpo(logp_w: Array, logp_l: Array, len_w: Array, len_l: Array, nll_w: Array, *,
         lam: float) -> Array:
  """Odds-ratio preference optimisation (ORPO): SFT on the chosen response plus an odds-ratio
  penalty, without a reference model. -> [B].

  loss = nll_w - lam log sigmoid(log_odds_w - log_odds_l)
  log_odds = log(p / (1 - p)) = x - log(1 - exp(x)),  p = exp(x),  x = logp / len

  p is the length-normalised (geometric-mean per-token) probability. log(1 - p) goes through
  `log1mexp`. x is clipped to at most -eps of its dtype (float32: 1.2e-7, log-odds at most 16):
  a near-certain sequence's summed log-prob can round to 0 or slightly above, where the log-odds
  would be inf or nan; below that resolution the exact value means nothing anyway.

  Args:
    logp_w, logp_l: [B] summed policy log-probs of the chosen and rejected responses.
    len_w, len_l: [B] their token counts; lengths below 1 count as 1.
    nll_w: [B] the chosen response's SFT loss, passed in (the paper's mean token NLL is
      -logp_w / len_w; a summed NLL also works, it changes the balance with lam).
    lam: >= 0, weight of the odds-ratio term (the paper's lambda; lam = 0 is SFT).

  Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model".
  """
  _check("lam", lam, 0.0)

  def log_odds(logp, length):
    x = _f(logp) / _length(length)
    x = jnp.minimum(x, -jnp.finfo(x.dtype).eps)
    return x - log1mexp(x)

  ratio = log_odds(logp_w, len_w) - log_odds(logp_l, len_l)
  return _f(nll_w) - lam * jax.nn.log_sigmoid(ratio)


# ----------------------------------------------------------------------------- by name, metrics


LOSSES: dict[str, Callable[..., Array]] = {
    "dpo": dpo,
    "robust_dpo": robust_dpo,
    "ipo": ipo,
    "hinge": hinge,
    "reference_free": reference_free,
    "simpo": simpo,
    "orpo": orpo,
}


def get_loss(name: str) -> Callable[..., Array]:
  """The preference loss called `name`; a bad name raises with the valid ones."""
  if name not in LOSSES:
    raise ValueError(f"unknown preference loss {name!r}; valid: {sorted(LOSSES)}")
  return LOSSES[name]


def reward_margins(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
                   beta: float) -> dict[str, Array]:
  """Implicit rewards r = beta (logp - ref_logp), for logging; each [B], without gradient.

  Returns:
    reward_chosen, reward_rejected: [B] r_w and r_l.
    reward_margin: [B] r_w - r_l = beta Delta.
    reward_accuracy: [B] 1.0 where r_w > r_l, else 0.0.
  """
  _check_beta(beta)
  # Metrics only: never let them feed a gradient if a trainer adds one to the loss by mistake.
  chosen = jax.lax.stop_gradient(beta * (_f(logp_w) - _f(ref_logp_w)))
  rejected = jax.lax.stop_gradient(beta * (_f(logp_l) - _f(ref_logp_l)))
  margin = chosen - rejected
  return {"reward_chosen": chosen, "reward_rejected": rejected, "reward_margin": margin,
          "reward_accuracy": (margin > 0).astype(margin.dtype)}
