"""ProcessBench F1, threshold choice and first-error detection against brute-force counts."""

import math

import numpy as np
import pytest

from reasonjax.search import process_bench


def brute_f1(predicted, gold):
  """The ProcessBench metric counted with loops."""
  err_n = err_hit = ok_n = ok_hit = 0
  for p, g in zip(predicted, gold):
    if g == -1:
      ok_n += 1
      ok_hit += p == -1
    else:
      err_n += 1
      err_hit += p == g
  a = err_hit / err_n if err_n else math.nan
  b = ok_hit / ok_n if ok_n else math.nan
  if math.isnan(a) or math.isnan(b):
    f1 = math.nan
  else:
    f1 = 0.0 if a + b == 0 else 2 * a * b / (a + b)
  return a, b, f1


def brute_prediction(scores, threshold):
  for i, s in enumerate(scores):
    if s < threshold:
      return i
  return -1


def same(x, y):
  return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12)


def test_first_error_prediction():
  assert process_bench.first_error_prediction([0.9, 0.2, 0.1], 0.5) == 1
  assert process_bench.first_error_prediction([0.9, 0.5, 0.1], 0.5) == 2  # equal is not below
  assert process_bench.first_error_prediction([0.9, 0.8], 0.5) == -1
  assert process_bench.first_error_prediction([], 0.5) == -1
  assert process_bench.first_error_prediction(np.array([0.1]), -np.inf) == -1
  assert process_bench.first_error_prediction(np.array([0.1]), np.inf) == 0


@pytest.mark.parametrize("predicted, gold, expected", [
    # error accuracy 1/2 (index 1 hit, index 2 missed), correct accuracy 2/3.
    ([1, 0, -1, -1, 3], [1, 2, -1, -1, -1], (1 / 2, 2 / 3, 2 * (1 / 2) * (2 / 3) / (7 / 6))),
    ([-1, -1], [-1, -1], (math.nan, 1.0, math.nan)),  # no erroneous solution
    ([0, 0], [-1, 1], (0.0, 0.0, 0.0)),  # both accuracies 0
    ([2, -1, 0], [2, -1, 0], (1.0, 1.0, 1.0)),
])
def test_process_bench_f1_hand_cases(predicted, gold, expected):
  out = process_bench.process_bench_f1(predicted, gold)
  for key, value in zip(("error_accuracy", "correct_accuracy", "f1"), expected):
    assert same(out[key], value), (key, out[key], value)
  assert out["errors"] == sum(g != -1 for g in gold)
  assert out["correct"] == sum(g == -1 for g in gold)


def test_process_bench_f1_matches_brute_force_on_random_cases():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 30))
    gold = rng.integers(-1, 4, n)
    predicted = np.where(rng.random(n) < 0.5, gold, rng.integers(-1, 4, n))
    out = process_bench.process_bench_f1(predicted.tolist(), gold.tolist())
    a, b, f1 = brute_f1(predicted.tolist(), gold.tolist())
    assert same(out["error_accuracy"], a) and same(out["correct_accuracy"], b)
    assert same(out["f1"], f1)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="predictions for"):
    process_bench.process_bench_f1([0, 1], [0])
  with pytest.raises(ValueError, match="step indices"):
    process_bench.process_bench_f1([-2], [0])
  with pytest.raises(ValueError, match="only 2 step scores"):
    process_bench.evaluate([[0.1, 0.2]], [2], threshold=0.5)
  with pytest.raises(ValueError, match="nan"):
    process_bench.evaluate([[0.1, np.nan]], [0], threshold=0.5)
  with pytest.raises(ValueError, match="both erroneous and error-free"):
    process_bench.choose_threshold([[0.1], [0.2]], [0, 0])


# Worked by hand: each solution's prediction is right for thresholds t in
#   A (0.3, 0.9]  (step 1 below t, step 0 not),  B t <= 0.6,  C t > 0.2,  D t <= 0.5.
# All four are right exactly for t in (0.3, 0.5]; of the default candidates (midpoints of the
# sorted distinct scores 0.2 0.3 0.5 0.6 0.7 0.8 0.9 0.95, and +-inf) only 0.4 lies there.
HAND_SCORES = [[0.9, 0.3, 0.8], [0.7, 0.6], [0.2, 0.9], [0.95, 0.5]]
HAND_GOLD = [1, -1, 0, -1]


def test_choose_threshold_hand_case():
  assert process_bench.choose_threshold(HAND_SCORES, HAND_GOLD) == pytest.approx(0.4)
  # Candidates that all reach F1 = 1: the tie goes to the smallest.
  assert process_bench.choose_threshold(HAND_SCORES, HAND_GOLD, [0.45, 0.35, 0.5]) == 0.35
  # 0.55 gets D wrong, 0.25 gets A wrong: F1 2/3 each, and the tie goes to 0.25.
  assert process_bench.choose_threshold(HAND_SCORES, HAND_GOLD, [0.55, 0.25]) == 0.25
  out = process_bench.evaluate(HAND_SCORES, HAND_GOLD, threshold=0.4)
  assert out["f1"] == 1.0 and out["evaluated"] == 4 and out["held_out"] == 0


def test_choose_threshold_is_the_smallest_best_candidate_by_brute_force():
  rng = np.random.default_rng(1)
  for trial in range(60):
    n = int(rng.integers(2, 12))
    # Scores on a coarse grid, so that ties between steps and thresholds occur; some solutions
    # have no steps.
    scores = [np.round(rng.random(int(rng.integers(trial % 2, 6))), 1) for _ in range(n)]
    scores[1] = np.round(rng.random(int(rng.integers(1, 6))), 1)
    gold = [int(rng.integers(-1, len(s))) if len(s) else -1 for s in scores]
    gold[0], gold[1] = -1, int(rng.integers(0, len(scores[1])))  # both kinds occur
    candidates = None if trial % 3 else np.round(rng.random(8), 1)
    chosen = process_bench.choose_threshold(scores, gold, candidates)
    if candidates is None:
      distinct = sorted({float(s) for arr in scores for s in arr})
      candidates = [-math.inf] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:])] + [math.inf]
    f1 = {float(t): brute_f1([brute_prediction(s, t) for s in scores], gold)[2]
          for t in candidates}
    best = max(f1.values())
    assert chosen == min(t for t, v in f1.items() if v == best), (scores, gold, f1)


def test_evaluate_split_is_deterministic_and_stratified():
  rng = np.random.default_rng(2)
  gold = [-1] * 30 + [int(i) for i in rng.integers(0, 5, 50)]
  scores = [rng.random(6) for _ in gold]
  a = process_bench.evaluate(scores, gold, held_out_fraction=0.4, seed=7)
  b = process_bench.evaluate(scores, gold, held_out_fraction=0.4, seed=7)
  assert a == b
  held, rest = process_bench.split(gold, 0.4, seed=7)
  assert np.array_equal(held, process_bench.split(gold, 0.4, seed=7)[0])
  assert not set(held) & set(rest) and sorted([*held, *rest]) == list(range(80))
  assert sum(gold[i] == -1 for i in held) == 12 and sum(gold[i] != -1 for i in held) == 20
  assert a["held_out"] == 32 and a["evaluated"] == 48
  assert not np.array_equal(held, process_bench.split(gold, 0.4, seed=8)[0])
  # The reported metrics are those of the evaluation part at the held-out threshold.
  threshold = process_bench.choose_threshold([scores[i] for i in held], [gold[i] for i in held])
  assert a["threshold"] == threshold
  predicted = [brute_prediction(scores[i], threshold) for i in rest]
  assert same(a["f1"], brute_f1(predicted, [gold[i] for i in rest])[2])
  fixed = process_bench.evaluate(scores, gold, threshold=0.3)
  everything = [brute_prediction(s, 0.3) for s in scores]
  assert same(fixed["f1"], brute_f1(everything, gold)[2]) and fixed["evaluated"] == 80


@pytest.mark.parametrize("predicted, gold, expected", [
    # Claims at 1 (hit), 0 (wrong index), 2 (on an error-free solution); -1 on an erroneous one.
    ([1, 0, 2, -1, -1], [1, 3, -1, 2, -1], (1 / 3, 1 / 3, 1 / 3)),
    ([-1, -1], [0, -1], (math.nan, 0.0, math.nan)),  # no claims
    ([0, 1], [-1, -1], (0.0, math.nan, math.nan)),  # no errors to find
    ([0, 1], [1, 0], (0.0, 0.0, 0.0)),
])
def test_first_error_detection(predicted, gold, expected):
  out = process_bench.first_error_detection(predicted, gold)
  tp = sum(p != -1 and p == g for p, g in zip(predicted, gold))
  assert out["true_positives"] == tp
  assert out["predicted"] == sum(p != -1 for p in predicted)
  assert out["errors"] == sum(g != -1 for g in gold)
  for key, value in zip(("precision", "recall", "f1"), expected):
    assert same(out[key], value), (key, out[key], value)
