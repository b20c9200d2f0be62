"""Pairwise preference losses (the DPO family) on per-sequence log-probabilities.

Inputs are summed log-probabilities [B] of the chosen (w) and rejected (l) response of each pair
under the policy (`logp_w`, `logp_l`) and, for the losses that have one, the frozen reference
(`ref_logp_w`, `ref_logp_l`), e.g. from `tokens.sequence_logprobs`. Each loss returns a per-pair
loss [B]; the trainer reduces it. Most are functions of the log-ratios r = logp - ref_logp of the
two responses, or of their difference, the margin

  Delta = (logp_w - ref_logp_w) - (logp_l - ref_logp_l),

whose scaled value beta * Delta is the difference of the DPO implicit rewards.

Losses need different inputs (references, lengths, the chosen NLL), so the signatures differ;
`LOSSES` names the ones the DPO trainer can feed (per-sequence inputs of whole solutions) and
the trainer passes what the named loss takes. `step_apo` is not in it: it needs per-step values
(`q_w`, `q_l`) that the DPO trainer does not produce. The ones that take `len_w`, `len_l`
(`simpo`, `orpo`, `ln_dpo`) normalise by length themselves; the others take whatever log-probs
they are given (sums or per-token means: the caller decides; IPO is defined on means).
`aot_paired`, `aot_unpaired` and `bco_pair` (by default) couple the pairs of a batch: a pair's
value depends on the others. `mixture` is a weighted sum of other losses and the SFT term.
Hyperparameters are keyword-only. Python numbers are range-checked on every call (at trace time
under jit); traced or array hyperparameters are not, so they can be swept inside a jitted step.
Everything is computed in at least float32 (float64 stays, for gradient checks).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable, Mapping

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


def _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l) -> tuple[Array, Array]:
  """r_w, r_l [B]: log(pi / pi_ref) of the chosen and rejected responses."""
  return _f(logp_w) - _f(ref_logp_w), _f(logp_l) - _f(ref_logp_l)


def _logistic(z: Array, label_smoothing) -> Array:
  """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z): the cross entropy against the label
  (1 - eps, eps), shared by the sigmoid losses."""
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


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
  return _logistic(beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l), label_smoothing)


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
  larger beta means a smaller target margin. The paper (and TRL) use per-token mean log-probs
  for IPO, and so does the DPO trainer under configs/dpo_arith.py (`loss_kwargs.ipo.
  average_tokens`); this function takes whatever log-probs it is given: the caller decides.

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


def exo_pair(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float, label_smoothing: float = 1e-3) -> Array:
  """Efficient exact optimisation (EXO), pairwise: the reverse KL from the policy's preference
  probability to the label. -> [B].

  loss = KL(p || q) = s log(s / (1 - eps)) + (1 - s) log((1 - s) / eps),  s = sigmoid(beta Delta)

  p = (s, 1 - s) is the policy's probability that the chosen / rejected response wins (a softmax
  over the pair of beta log(pi / pi_ref)), q = (1 - eps, eps) the smoothed label. cDPO minimises
  the forward KL(q || p) (its cross entropy), which is mean-seeking; EXO the reverse one, which is
  mode-seeking. The loss is >= 0 and 0 at beta Delta = log((1 - eps) / eps). eps must be > 0:
  with a hard label the reverse KL is infinite (TRL silently replaces 0 by 1e-3, its default and
  ours; the authors' code uses a log-label of -10 for the loser, eps ~ 4.5e-5).

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0, the paper's beta_pi (the reward scale beta_r does not enter with hard labels).
    label_smoothing: eps in (0, 1/2].

  Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment" (TRL's
  loss_type="exo_pair").
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5, low_open=True)
  z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  log_s, log_1ms = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
  # s and log s both from z: where s underflows to 0, log s is still finite, so s log s = 0.
  return (jnp.exp(log_s) * (log_s - jnp.log1p(-label_smoothing))
          + jnp.exp(log_1ms) * (log_1ms - jnp.log(label_smoothing)))


def nca_pair(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float) -> Array:
  """Noise contrastive alignment (NCA), pairwise. -> [B].

  loss = -log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l),
  r = beta log(pi / pi_ref) of each response

  Not a function of the margin alone: each response's own reward is trained. The chosen terms
  are minimised at r_w = log 2 whatever r_l is, and the rejected term lowers r_l without a
  limit, so pushing the rejected response down does not drag the chosen one with it (which the
  paper shows DPO, a function of r_w - r_l only, can do).

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.

  Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards" (the
  pairwise-preference form; TRL's loss_type="nca_pair").
  """
  _check_beta(beta)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  r_w, r_l = beta * r_w, beta * r_l
  return (-jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w)
          - 0.5 * jax.nn.log_sigmoid(-r_l))


def bco_pair(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float, delta: float | None = None) -> Array:
  """Binary classifier optimisation (BCO), pairwise: a logistic classifier of chosen (1) vs
  rejected (0) on the implicit reward, shifted by delta. -> [B].

  loss = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta)),  r = beta log(pi / pi_ref)
  delta = stop_gradient(mean of r_w and r_l over the batch)   (unless given)

  Differs from TRL, whose delta is a running mean of that batch mean over the training steps
  (state in the trainer): by default here it is the current batch's mean, so the function stays
  pure, but it couples the pairs of a batch (of a micro-batch under gradient accumulation). No
  gradient flows through delta. A caller that keeps a running mean can pass it as `delta`.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    delta: the reward shift, a finite number or scalar array; None for the batch mean.

  Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment" (TRL's
  loss_type="bco_pair").
  """
  _check_beta(beta)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  r_w, r_l = beta * r_w, beta * r_l
  if delta is None:
    delta = jax.lax.stop_gradient((jnp.mean(r_w) + jnp.mean(r_l)) / 2)
  else:
    _check("delta", delta, -math.inf)
  return -jax.nn.log_sigmoid(r_w - delta) - jax.nn.log_sigmoid(delta - r_l)


def sppo_hard(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
              beta: float) -> Array:
  """Self-play preference optimisation (SPPO) with hard win probabilities. -> [B].

  loss = (r_w - 1 / (2 beta))^2 + (r_l + 1 / (2 beta))^2,  r = log(pi / pi_ref)

  SPPO regresses each response's log-ratio onto eta (P(y wins) - 1/2); with the hard labels
  P = 1 for the chosen and 0 for the rejected response the targets are +-eta / 2, and eta =
  1 / beta (as in TRL). In the paper P is a preference model's soft estimate and pi_ref the
  previous iteration's policy; here the reference is whatever the trainer freezes.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0, 1 / eta.

  Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment" (TRL's
  loss_type="sppo_hard").
  """
  _check_beta(beta)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  target = 1.0 / (2.0 * beta)
  return jnp.square(r_w - target) + jnp.square(r_l + target)


def apo_zero(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float) -> Array:
  """Anchored preference optimisation, APO-zero: raise the chosen and lower the rejected
  likelihood, each anchored to the reference. -> [B].

  loss = -sigmoid(r_w) + sigmoid(r_l),  r = beta log(pi / pi_ref)

  For chosen responses better than the policy's own. Each response is pushed separately, so the
  chosen likelihood cannot fall with the rejected one. The paper's form, in (-1, 1) and 0 at
  the reference; TRL adds 1 (loss in (0, 2)), which changes no gradient.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.

  D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions:
  Addressing Underspecification in Alignment" (TRL's loss_type="apo_zero").
  """
  _check_beta(beta)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return -jax.nn.sigmoid(beta * r_w) + jax.nn.sigmoid(beta * r_l)


def apo_down(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float) -> Array:
  """Anchored preference optimisation, APO-down: lower the chosen likelihood, and the rejected
  one more. -> [B].

  loss = sigmoid(r_w) - sigmoid(r_w - r_l),  r = beta log(pi / pi_ref)

  For chosen responses worse than the policy's own (still better than the rejected ones). The
  paper's form, in (-1, 1) and 0 at the reference; TRL adds 1, which changes no gradient.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.

  D'Oosterlinck et al. 2024 (as `apo_zero`; TRL's loss_type="apo_down").
  """
  _check_beta(beta)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return jax.nn.sigmoid(beta * r_w) - jax.nn.sigmoid(beta * (r_w - r_l))


def discopop(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float, tau: float = 0.05) -> Array:
  """DiscoPOP, the log-ratio modulated loss: a blend of the logistic (DPO) and exponential
  losses of the margin, switched by the margin itself. -> [B].

  loss = (1 - sigmoid(z / tau)) (-log sigmoid(z)) + sigmoid(z / tau) exp(-z),  z = beta Delta

  Logistic for negative margins, exponential for positive ones; tau is the width of the switch
  (0.05 in the paper). The second term is evaluated as exp(log sigmoid(z / tau) - z), finite for
  every z when tau <= 1; above 1 the exponential is not switched off for negative margins (the
  term grows like exp(-z (1 - 1 / tau))), so tau is limited to (0, 1].

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    tau: in (0, 1].

  Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
  Models" (TRL's loss_type="discopop").
  """
  _check_beta(beta)
  _check("tau", tau, 0.0, 1.0, low_open=True)
  z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return (-jax.nn.sigmoid(-z / tau) * jax.nn.log_sigmoid(z)
          + jnp.exp(jax.nn.log_sigmoid(z / tau) - z))


def ln_dpo(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, len_w: Array,
           len_l: Array, *, beta: float, label_smoothing: float = 0.0) -> Array:
  """Length-normalised DPO: sigmoid DPO (cDPO) on per-token mean log-ratios. -> [B].

  loss = -(1 - eps) log sigmoid(beta Delta_n) - eps log sigmoid(-beta Delta_n),
  Delta_n = (logp_w - ref_logp_w) / len_w - (logp_l - ref_logp_l) / len_l

  The summed margin grows with the responses' lengths, which lets DPO raise its margin by
  lengthening the chosen response; per-token means remove that. It is `dpo` on logp / len, so
  beta is on per-token values: about DPO's beta times a typical length. Lengths below 1 count
  as 1.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] summed log-probs, as in `dpo`.
    len_w, len_l: [B] token counts of the chosen and rejected responses.
    beta: > 0.
    label_smoothing: eps in [0, 1/2], as in `dpo`.

  Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training" (its
  length-normalised DPO).
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return _logistic(beta * (r_w / _length(len_w) - r_l / _length(len_l)), label_smoothing)


def f_dpo_alpha(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
                beta: float, alpha: float = 0.5, label_smoothing: float = 0.0) -> Array:
  """f-DPO with the alpha-divergence in place of DPO's reverse KL. -> [B].

  loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z),
  z = beta (f'(u_w) - f'(u_l)) = beta (u_l^-alpha - u_w^-alpha) / alpha,  u = pi / pi_ref

  Regularising the policy with an f-divergence makes the implicit reward beta f'(u); for the
  alpha-divergence f'(u) = (1 - u^-alpha) / alpha. alpha -> 0 gives log u, DPO; alpha = 1 is the
  forward KL (1 - 1 / u). The paper's range is alpha in (0, 1); 1 is allowed (TRL's default).
  The reward falls exponentially as a response's likelihood drops below the reference's: the
  exponents -alpha log u are capped at half the log of the dtype's largest number (44 in
  float32; TRL caps at the log itself, where beta / alpha > 1 can still overflow), so the loss
  stays finite; past the cap a response gets no gradient. u^-alpha - 1 goes through expm1, exact
  as alpha -> 0.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    alpha: in (0, 1].
    label_smoothing: eps in [0, 1/2], as in `dpo`.

  Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
  Divergence Constraints" (TRL: f_divergence_type="alpha_divergence" of loss_type="sigmoid").
  """
  _check_beta(beta)
  _check("alpha", alpha, 0.0, 1.0, low_open=True)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  cap = 0.5 * math.log(jnp.finfo(r_w.dtype).max)

  def minus_f_prime(r):  # (u^-alpha - 1) / alpha, u = exp(r)
    return jnp.expm1(jnp.minimum(-alpha * r, cap)) / alpha

  return _logistic(beta * (minus_f_prime(r_l) - minus_f_prime(r_w)), label_smoothing)


def f_dpo_js(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
             beta: float, label_smoothing: float = 0.0) -> Array:
  """f-DPO with the Jensen-Shannon divergence in place of DPO's reverse KL. -> [B].

  loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z),
  z = beta (f'(u_w) - f'(u_l)) = beta (log sigmoid(r_w) - log sigmoid(r_l)),  r = log(pi / pi_ref)

  For the JS divergence f'(u) = log(2 u / (1 + u)) = log 2 + log sigmoid(log u) (TRL writes the
  margin as Delta - (softplus(r_w) - softplus(r_l)), the same). Far below the reference
  (r -> -inf) it is DPO; above it the reward saturates at log 2, so the loss flattens once the
  chosen response is well above the reference.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    label_smoothing: eps in [0, 1/2], as in `dpo`.

  Wang et al. 2023 (as `f_dpo_alpha`; TRL: f_divergence_type="js_divergence").
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return _logistic(beta * (jax.nn.log_sigmoid(r_w) - jax.nn.log_sigmoid(r_l)), label_smoothing)


# ----------------------------------------------------------------------------- batch-coupled


def aot_paired(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
               beta: float, label_smoothing: float = 0.0) -> Array:
  """Alignment via optimal transport (AOT), paired: the policy's chosen-over-rejected
  log-likelihood ratios made to dominate the reference's, in distribution over the batch. -> [B].

  loss_i = -(1 - eps) log sigmoid(beta d_i) - eps log sigmoid(-beta d_i),
  d = sort(logp_w - logp_l) - sort(ref_logp_w - ref_logp_l)

  The i-th smallest policy ratio is compared with the i-th smallest reference ratio: the
  one-dimensional optimal transport between the two empirical distributions, solved by sorting;
  the logistic loss relaxes the violation of first-order stochastic dominance. This couples the
  pairs of a batch (of a micro-batch under gradient accumulation): entry i is rank i, not pair
  i, and the values depend on which pairs share the batch; a batch of one pair is DPO. The
  gradient flows through the sort (a permutation). As policy and reference ratios are sorted
  separately, logp_w - logp_l is formed directly (float32 rounds it for very long responses).
  TRL's loss_type="aot" (its "aot_pair" is the unpaired loss); the paper's other relaxations
  (hinge, squared hinge) and soft sorting are not here.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    label_smoothing: eps in [0, 1/2], as in `dpo`.

  Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport".
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  d = (jnp.sort(_f(logp_w) - _f(logp_l), axis=0)
       - jnp.sort(_f(ref_logp_w) - _f(ref_logp_l), axis=0))
  return _logistic(beta * d, label_smoothing)


def aot_unpaired(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, *,
                 beta: float, label_smoothing: float = 0.0) -> Array:
  """Alignment via optimal transport (AOT), unpaired: the distribution of chosen rewards made to
  dominate that of rejected rewards over the batch. -> [B].

  loss_i = -(1 - eps) log sigmoid(beta d_i) - eps log sigmoid(-beta d_i),
  d = sort(logp_w - ref_logp_w) - sort(logp_l - ref_logp_l)

  As `aot_paired`, on the implicit rewards: the pairing of chosen and rejected responses is not
  used (the sum over the batch is the same for any shuffle of the chosen responses against the
  rejected ones), so the data need not be pairs. Couples the pairs of a batch the same way.
  TRL's loss_type="aot_pair".

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l: [B] as in `dpo`.
    beta: > 0.
    label_smoothing: eps in [0, 1/2], as in `dpo`.

  Melnyk et al. 2024 (as `aot_paired`).
  """
  _check_beta(beta)
  _check("label_smoothing", label_smoothing, 0.0, 0.5)
  r_w, r_l = _log_ratios(logp_w, logp_l, ref_logp_w, ref_logp_l)
  return _logistic(beta * (jnp.sort(r_w, axis=0) - jnp.sort(r_l, axis=0)), label_smoothing)


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


# ----------------------------------------------------------------------------- combinations


# The mixture's own inputs, and the component that is not a preference loss.
_INPUTS = ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "len_w", "len_l", "nll_w")
_SFT = "sft"


def _positional(fn: Callable) -> list[str]:
  return [p.name for p in inspect.signature(fn).parameters.values()
          if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def mixture(logp_w: Array, logp_l: Array, ref_logp_w: Array, ref_logp_l: Array, len_w: Array,
            len_l: Array, nll_w: Array, *, weights: Mapping[str, float],
            kwargs: Mapping[str, Mapping] | None = None) -> Array:
  """A weighted sum of preference losses and the SFT term. -> [B].

  loss = sum_k weights[k] loss_k,  loss_"sft" = nll_w

  Each component is a loss of `LOSSES` (not `mixture`) called with the inputs its signature
  names and the hyperparameters `kwargs[name]`. E.g. MPO's weights {"dpo": 0.8, "bco_pair":
  0.2, "sft": 1.0}: a preference, a quality (BCO) and a generation (SFT) term.

  Args:
    logp_w, logp_l, ref_logp_w, ref_logp_l, len_w, len_l, nll_w: [B], as the components take
      them (see `orpo` for nll_w); inputs no component names are ignored.
    weights: component name -> weight >= 0 (finite; at least one component).
    kwargs: component name -> its keyword hyperparameters; every name must be weighted, "sft"
      takes none.

  Wang et al. 2024, "Enhancing the Reasoning Ability of Multimodal Large Language Models via
  Mixed Preference Optimization" (MPO).
  """
  kwargs = dict(kwargs or {})
  valid = sorted((set(LOSSES) - {"mixture"}) | {_SFT})
  if not weights:
    raise ValueError(f"mixture weights name no component; valid: {valid}")
  for name, weight in weights.items():
    if name not in valid:
      raise ValueError(f"mixture weights: unknown component {name!r}; valid: {valid}")
    _check(f"weights[{name!r}]", weight, 0.0)
  if all(isinstance(w, numbers.Real) and w == 0 for w in weights.values()):
    raise ValueError(f"mixture weights are all 0: {dict(weights)}")
  unweighted = sorted(set(kwargs) - set(weights))
  if unweighted:
    raise ValueError(f"mixture kwargs for {unweighted}, which have no weight; weighted: "
                     f"{sorted(weights)}")
  inputs = dict(zip(_INPUTS, (logp_w, logp_l, ref_logp_w, ref_logp_l, len_w, len_l, nll_w)))
  total = 0.0
  for name, weight in weights.items():
    kw = dict(kwargs.get(name) or {})
    if name == _SFT:
      if kw:
        raise ValueError(f"mixture kwargs['sft'] must be empty (the SFT term is nll_w), got {kw}")
      total = total + weight * _f(nll_w)
      continue
    fn = LOSSES[name]
    keywords = {p.name: p for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(kw) - set(keywords))
    missing = sorted(k for k, p in keywords.items() if p.default is p.empty and k not in kw)
    if unknown or missing:
      raise ValueError(f"mixture kwargs[{name!r}]: unknown {unknown}, missing {missing}; "
                       f"{name} takes {sorted(keywords)}")
    try:
      value = fn(*(inputs[n] for n in _positional(fn)), **kw)
    except ValueError as e:  # a component's range check: say which component
      raise ValueError(f"mixture component {name!r}: {e}") from e
    total = total + weight * value
  return total


# ----------------------------------------------------------------------------- by name, metrics


LOSSES: dict[str, Callable[..., Array]] = {
    "dpo": dpo,
    "robust_dpo": robust_dpo,
    "ipo": ipo,
    "hinge": hinge,
    "reference_free": reference_free,
    "simpo": simpo,
    "orpo": orpo,
    "exo_pair": exo_pair,
    "nca_pair": nca_pair,
    "bco_pair": bco_pair,
    "sppo_hard": sppo_hard,
    "aot_paired": aot_paired,
    "aot_unpaired": aot_unpaired,
    "apo_zero": apo_zero,
    "apo_down": apo_down,
    "discopop": discopop,
    "ln_dpo": ln_dpo,
    "f_dpo_alpha": f_dpo_alpha,
    "f_dpo_js": f_dpo_js,
    "mixture": mixture,
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
