"""Reward-model losses: outcome (ORM), process (PRM), hierarchical (HRM) and pairwise.

The reward model emits one score (a logit) per position, `scores` [B, T]. Every pointwise loss
here reads it only where a 0/1 mask is set, against a label placed at the same position:

  ORM: mask = the last token of each sequence (`last_token_mask`), label = the sequence's
       outcome, written at that token.
  PRM: mask = the last token of each step (`batching.prm_example`'s `step_mask`), label = the
       step's label there (`step_labels`).
  HRM: the PRM layout over single steps and merged pairs of consecutive steps (the renderings
       of `data.step_labels.hierarchical_units`).

So one contract covers all three, packed rows included (each segment carries its own labels at
its own positions): the loss is [B, T], the unweighted per-position value where mask is 1 and
exactly 0 (with zero gradient, even for non-finite scores or labels) where it is 0. The trainer
reduces it with the same mask, e.g. `tokens.reduce(loss, mask, "token_mean")`, which for ORM is
the mean over sequences and for PRM the mean over steps. `bradley_terry` is per pair, [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
# The pointwise losses on a label (the `kind` of orm, prm and hrm): log-loss on the logit, or
# the squared error of its sigmoid.
LABEL_KINDS = ("bce", "mse")


def last_token_mask(segment_ids: Array) -> Array:
  """1 at the last token of every segment, packed rows included.

  last[t] = (seg[t] != 0) and (t = T - 1 or seg[t + 1] != seg[t])

  Args:
    segment_ids: int [B, T]; 0 is padding, packed sequences have distinct consecutive ids.

  Returns:
    float32 [B, T], one 1 per segment.
  """
  segment_ids = jnp.asarray(segment_ids)
  # Padding after the row's end (id 0) also closes the last segment.
  following = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  return ((segment_ids != 0) & (following != segment_ids)).astype(jnp.float32)


def _pointwise(scores: Array, mask: Array, labels: Array, kind: str) -> Array:
  """The per-position loss of `kind` where mask is set, exactly 0 elsewhere. -> [B, T]."""
  if kind not in LABEL_KINDS:
    raise ValueError(f"unknown reward loss kind {kind!r}; valid: {LABEL_KINDS}")
  if not scores.shape == mask.shape == labels.shape:
    raise ValueError(f"scores {scores.shape}, mask {mask.shape} and labels {labels.shape} "
                     "must have one shape [B, T]")
  # Upcast bf16 scores, but keep float64 when it is enabled (gradient checks).
  dtype = jnp.promote_types(scores.dtype, jnp.float32)
  on = mask > 0
  # Double where: padding may hold any score (inf, or nan where a padding token attends to
  # nothing), which `loss * mask` would turn into a nan loss or gradient. Zeroing the inputs
  # first keeps both exactly 0.
  x = jnp.where(on, scores.astype(dtype), 0.0)
  y = jnp.where(on, labels.astype(dtype), 0.0)
  if kind == "bce":
    # -y log s(x) - (1 - y) log(1 - s(x)) = max(x, 0) - x y + log1p(exp(-|x|)), stable for any
    # |x| (as in optax). softplus (logaddexp) computes the same value, but its gradient at
    # x = 0, where a zero-initialised head starts, is the true 1/2 - y; differentiating
    # jnp.maximum and jnp.abs there gives -y.
    loss = jax.nn.softplus(x) - x * y
  else:
    loss = jnp.square(jax.nn.sigmoid(x) - y)
  return jnp.where(on, loss, 0.0)


def orm(scores: Array, last_mask: Array, labels: Array, *, kind: str = "bce") -> Array:
  """Outcome reward model: the score at a sequence's last token predicts its correctness.

  loss_t = m_t * BCE(x_t, y_t) = m_t * (max(x, 0) - x y + log(1 + exp(-|x|)))

  Labels live at the last token, like PRM step labels, so packed rows (one label per segment)
  need nothing special. For rows holding one sequence with labels y [B]:
  `labels = y[:, None] * last_mask`, and `loss.sum(-1)` is the per-sequence loss [B].
  Cobbe et al. (2021, "Training Verifiers to Solve Math Word Problems"); their default, a
  prediction at every completion token, is this loss with a mask over the completion and the
  outcome written at each of its tokens.

  Args:
    scores: float [B, T], the reward model's logits.
    last_mask: [B, T] 0/1, 1 at each sequence's last token (`last_token_mask(segment_ids)`).
    labels: [B, T], the outcome (0/1) at those tokens; ignored elsewhere.
    kind: "bce" (log-loss on the logit) or "mse" ((sigmoid(x) - y)^2).

  Returns:
    [B, T] float, zero where last_mask is 0.
  """
  return _pointwise(scores, last_mask, labels, kind)


def prm(scores: Array, step_mask: Array, step_labels: Array, *, kind: str = "bce") -> Array:
  """Process reward model: the score at each step's last token predicts that step's label.

  bce: loss_t = m_t * (max(x, 0) - x y + log(1 + exp(-|x|)))   (y hard or soft)
  mse: loss_t = m_t * (sigmoid(x) - y)^2                        (y soft)

  All steps of a solution are scored in one forward pass (causal attention: the score at step
  k sees steps <= k only). Hard 0/1 labels: Lightman et al. (2023, "Let's Verify Step by
  Step"); Monte-Carlo estimates in [0, 1]: Wang et al. (2024, "Math-Shepherd"). With soft
  labels, BCE's minimum is the label's entropy, not 0.

  Args:
    scores: float [B, T], the reward model's logits.
    step_mask: [B, T] 0/1, 1 at the last token of each step (`batching.prm_example`).
    step_labels: [B, T], each step's label at its last token; ignored elsewhere.
    kind: "bce" or "mse".

  Returns:
    [B, T] float, zero where step_mask is 0.
  """
  return _pointwise(scores, step_mask, step_labels, kind)


def hrm(scores: Array, step_mask: Array, step_labels: Array, *, kind: str = "bce") -> Array:
  """Hierarchical reward model: the PRM loss over single steps and merged step pairs.

  loss_t = prm(x, m, y)_t, where the marked tokens end the units: single steps and merged
  pairs of consecutive steps (`data.step_labels.hierarchical_units`, which also says why a
  merged pair takes its later step's label).

  A merged unit (i, i + 1) is rendered as its two steps with no step delimiter between them,
  so it has one step-end token, carrying the unit's label; e.g. `batching.prm_example` with
  steps i and i + 1 joined into one string. Rows may mix renderings of singles and of merged
  pairs, packed or not. Wang et al. (2025, "Towards Hierarchical Multi-Step Reward Models for
  Enhanced Reasoning in Large Language Models").

  Args:
    scores: float [B, T], the reward model's logits.
    step_mask: [B, T] 0/1, 1 at the last token of each unit (single step or merged pair).
    step_labels: [B, T], each unit's label at its last token; ignored elsewhere.
    kind: "bce" or "mse".

  Returns:
    [B, T] float, zero where step_mask is 0.
  """
  return prm(scores, step_mask, step_labels, kind=kind)


def bradley_terry(score_w: Array, score_l: Array, *, margin: float | Array = 0.0) -> Array:
  """Pairwise reward model loss: the preferred completion should score higher.

  loss = -log sigmoid(x_w - x_l - margin) = softplus(-(x_w - x_l - margin))

  Ouyang et al. (2022, "Training language models to follow instructions with human
  feedback"); the margin (e.g. larger for clearer preferences) from Touvron et al. (2023,
  "Llama 2"). Scores are one per completion, e.g. the score at its last token:
  `jnp.sum(jnp.where(last_mask > 0, scores, 0), -1)` for one completion per row.

  Args:
    score_w: float [B], the preferred (chosen) completions' scores.
    score_l: float [B], the rejected completions' scores.
    margin: a scalar or [B].

  Returns:
    [B] float, per pair.
  """
  score_w, score_l = jnp.asarray(score_w), jnp.asarray(score_l)
  dtype = jnp.promote_types(jnp.result_type(score_w, score_l), jnp.float32)
  diff = score_w.astype(dtype) - score_l.astype(dtype) - margin
  return jax.nn.softplus(-diff)


LOSSES = {"orm": orm, "prm": prm, "hrm": hrm, "bradley_terry": bradley_terry}
