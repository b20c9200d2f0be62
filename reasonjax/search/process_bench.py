"""First-error evaluation of step scorers: the ProcessBench F1 and its threshold (host, numpy).

    scores = [prm_step_scores(s) for s in solutions]          # [L_i] per solution, higher = good
    gold = [s.first_error for s in solutions]                 # -1: no wrong step
    report = process_bench.evaluate(scores, gold, held_out_fraction=0.5, seed=0)
    report = process_bench.evaluate(scores, gold, threshold=0.5)       # a fixed threshold

A scorer predicts that the first wrong step is the first one it scores below a threshold, and no
error (-1) when it scores none below. ProcessBench (Zheng et al. 2024, "ProcessBench:
Identifying Process Errors in Mathematical Reasoning") reports the harmonic mean of two
accuracies: on the erroneous solutions, the predicted index must equal the labelled one; on
the error-free ones, the prediction must be -1. Values here are fractions, not percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def first_error_prediction(step_scores, threshold: float) -> int:
  """The index of the first step scored below threshold, -1 if none is (or there are no steps).

  Args:
    step_scores: [L] scores of one solution's steps, higher = more likely correct.
    threshold: a step is called wrong when its score is < threshold.
  """
  below = np.flatnonzero(np.asarray(step_scores, np.float64) < threshold)
  return int(below[0]) if below.size else -1


def _harmonic(a: float, b: float) -> float:
  """2ab / (a + b); 0 when both are 0 and nan when either is."""
  if np.isnan(a) or np.isnan(b):
    return float("nan")
  return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _indices(values, name: str) -> np.ndarray:
  out = np.asarray(values)
  if out.ndim != 1 or (out.size and not np.issubdtype(out.dtype, np.integer)) or np.any(out < -1):
    raise ValueError(f"{name}: expected a 1-D sequence of step indices >= -1, got {values!r}")
  return out.astype(np.int64)


def process_bench_f1(predicted: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
  """The ProcessBench metric of predicted first-error indices against labelled ones.

    error_accuracy   = #{gold_j != -1 and predicted_j == gold_j} / #{gold_j != -1}
    correct_accuracy = #{gold_j == -1 and predicted_j == -1} / #{gold_j == -1}
    f1 = 2 * error_accuracy * correct_accuracy / (error_accuracy + correct_accuracy)

  f1 is 0 when both accuracies are 0; an accuracy over no solutions is nan, and so is f1.

  Args:
    predicted: [N] predicted first wrong step per solution, -1 for none.
    gold: [N] labelled first wrong step, -1 for none.

  Returns:
    error_accuracy, correct_accuracy, f1, and the counts errors (#gold != -1), error_hits,
    correct (#gold == -1), correct_hits.
  """
  predicted, gold = _indices(predicted, "predicted"), _indices(gold, "gold")
  if predicted.shape != gold.shape:
    raise ValueError(f"{len(predicted)} predictions for {len(gold)} solutions")
  has_error = gold != -1
  errors, correct = int(has_error.sum()), int((~has_error).sum())
  error_hits = int(np.sum(has_error & (predicted == gold)))
  correct_hits = int(np.sum(~has_error & (predicted == -1)))
  error_accuracy = error_hits / errors if errors else float("nan")
  correct_accuracy = correct_hits / correct if correct else float("nan")
  return {"error_accuracy": error_accuracy, "correct_accuracy": correct_accuracy,
          "f1": _harmonic(error_accuracy, correct_accuracy), "errors": errors,
          "error_hits": error_hits, "correct": correct, "correct_hits": correct_hits}


def _check_scores(step_scores: Sequence, gold: np.ndarray) -> list[np.ndarray]:
  if len(step_scores) != len(gold):
    raise ValueError(f"{len(step_scores)} score arrays for {len(gold)} solutions")
  out = []
  for j, (scores, g) in enumerate(zip(step_scores, gold)):
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or np.isnan(scores).any():
      raise ValueError(f"solution {j}: step scores must be 1-D and not nan, got {scores!r}")
    if g >= len(scores):
      raise ValueError(f"solution {j}: first error {g} but only {len(scores)} step scores")
    out.append(scores)
  return out


def _f1_at(step_scores: list[np.ndarray], gold: np.ndarray, thresholds: np.ndarray
           ) -> np.ndarray:
  """F1 at each of thresholds [K], counted from intervals instead of predicting at each: [K].

  With m_i the minimum of the scores of steps 0..i, a solution's prediction at t is right
  exactly when t <= m_{L-1} if its gold is -1 (no step scored below t; always, for no steps),
  and when s_g < t <= m_{g-1} if its gold is g (step g below t, none before it; no upper bound
  for g = 0). Sorted bounds then give every count with one searchsorted.
  """
  has_error = gold != -1
  errors, correct = int(has_error.sum()), int((~has_error).sum())
  if not errors or not correct:
    return np.full(thresholds.shape, np.nan)
  lo, hi = np.full(len(gold), -np.inf), np.full(len(gold), np.inf)
  for j, (scores, g) in enumerate(zip(step_scores, gold)):
    if g == -1:
      hi[j] = scores.min() if scores.size else np.inf
    else:
      lo[j] = scores[g]
      hi[j] = scores[:g].min() if g > 0 else np.inf

  def count_below(values):  # #{v < t} for each threshold t
    return np.searchsorted(np.sort(values), thresholds, side="left")

  # Error-free: #{t <= hi}. Erroneous, over non-empty intervals: #{lo < t} - #{hi < t}, since
  # hi < t implies lo < t.
  correct_hits = correct - count_below(hi[~has_error])
  keep = has_error & (lo < hi)
  error_hits = count_below(lo[keep]) - count_below(hi[keep])
  a, b = error_hits / errors, correct_hits / correct
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(a + b > 0, 2 * a * b / (a + b), 0.0)


def choose_threshold(step_scores: Sequence, gold: Sequence[int], candidates=None) -> float:
  """The threshold of highest F1 on these solutions (the held-out part of `evaluate`).

  By default the candidates are -inf (no step is ever called wrong), the midpoints between
  consecutive distinct scores, and +inf (every step is): between them they give every
  prediction any threshold gives, and a midpoint leaves room on both sides for unseen scores.
  Ties go to the smallest candidate, which calls the fewest steps wrong.

  Args:
    step_scores: N arrays [L_j] of step scores.
    gold: [N] first wrong step per solution, -1 for none; both kinds must occur.
    candidates: thresholds to try instead of the default.

  Returns:
    The threshold, a float.
  """
  gold = _indices(gold, "gold")
  step_scores = _check_scores(step_scores, gold)
  if not (gold == -1).any() or (gold == -1).all():
    raise ValueError("choose_threshold needs both erroneous and error-free solutions")
  if candidates is None:
    distinct = np.unique(np.concatenate([np.zeros(0)] + step_scores))
    candidates = np.concatenate([[-np.inf], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
  candidates = np.unique(np.asarray(candidates, np.float64))  # sorted: argmax takes the first
  if candidates.size == 0:
    raise ValueError("choose_threshold: no candidate thresholds")
  return float(candidates[np.argmax(_f1_at(step_scores, gold, candidates))])


def split(gold: Sequence[int], held_out_fraction: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """Indices (held_out, evaluation), drawn by seed and stratified: each part holds about
  held_out_fraction of the erroneous and of the error-free solutions (rounded per kind), so
  both parts see both kinds. Each part is sorted."""
  if not 0.0 < held_out_fraction < 1.0:
    raise ValueError(f"held_out_fraction={held_out_fraction}; expected a value in (0, 1)")
  gold = _indices(gold, "gold")
  rng = np.random.default_rng(seed)
  held = []
  for kind in (gold == -1, gold != -1):
    members = rng.permutation(np.flatnonzero(kind))
    held.append(members[: int(round(held_out_fraction * len(members)))])
  held_out = np.sort(np.concatenate(held))
  return held_out, np.setdiff1d(np.arange(len(gold)), held_out)


def evaluate(step_scores: Sequence, gold: Sequence[int], *, held_out_fraction: float = 0.5,
             seed: int = 0, threshold: float | None = None) -> dict[str, float]:
  """ProcessBench F1 of step scores, with the threshold chosen on a held-out part or given.

  Without a threshold, `split` draws a held-out part (held_out_fraction, seed), the threshold
  that maximises F1 there is chosen (`choose_threshold`), and the metrics are those of the
  other part. With a threshold, every solution is evaluated at it.

  Args:
    step_scores: N arrays [L_j] of step scores, higher = more likely correct.
    gold: [N] first wrong step per solution, -1 for none.
    held_out_fraction, seed: the split, when threshold is None.
    threshold: a fixed threshold; no split.

  Returns:
    `process_bench_f1` of the evaluated solutions, plus threshold, evaluated (their number),
    held_out (0 with a fixed threshold) and held_out_f1 (nan with a fixed threshold).
  """
  gold = _indices(gold, "gold")
  step_scores = _check_scores(step_scores, gold)
  if threshold is None:
    held, rest = split(gold, held_out_fraction, seed)
    threshold = choose_threshold([step_scores[i] for i in held], gold[held])
    held_f1 = process_bench_f1(
        [first_error_prediction(step_scores[i], threshold) for i in held], gold[held])["f1"]
  else:
    held, rest, held_f1 = np.zeros(0, np.int64), np.arange(len(gold)), float("nan")
  predicted = [first_error_prediction(step_scores[i], threshold) for i in rest]
  return {**process_bench_f1(predicted, gold[rest]), "threshold": float(threshold),
          "evaluated": len(rest), "held_out": len(held), "held_out_f1": held_f1}


def first_error_detection(predicted: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
  """Precision, recall and F1 of first-wrong-step detection, as for the synthetic tasks.

  A prediction p_j != -1 claims "the first error is at step p_j"; it is a true positive when
  gold_j == p_j. A claim at the wrong index, and one on an error-free solution, are false
  positives; an erroneous solution without the right claim is a false negative. Predicting -1
  on an error-free solution is a true negative, which none of the three counts.

    precision = #{p_j != -1 and p_j == gold_j} / #{p_j != -1}
    recall    = #{gold_j != -1 and p_j == gold_j} / #{gold_j != -1}
    f1        = 2 * precision * recall / (precision + recall)

  A ratio with an empty denominator is nan (as in `mc_labels.first_error_agreement`); f1 is nan
  when either is nan and 0 when both are 0.

  Returns:
    precision, recall, f1, and the counts true_positives, predicted (#p != -1), errors
    (#gold != -1).
  """
  predicted, gold = _indices(predicted, "predicted"), _indices(gold, "gold")
  if predicted.shape != gold.shape:
    raise ValueError(f"{len(predicted)} predictions for {len(gold)} solutions")
  true_positives = int(np.sum((predicted != -1) & (predicted == gold)))
  claims, errors = int(np.sum(predicted != -1)), int(np.sum(gold != -1))
  precision = true_positives / claims if claims else float("nan")
  recall = true_positives / errors if errors else float("nan")
  return {"precision": precision, "recall": recall, "f1": _harmonic(precision, recall),
          "true_positives": true_positives, "predicted": claims, "errors": errors}
