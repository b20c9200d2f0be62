"""The pure parts of the reward-model trainer: labelled renderings (ORM/PRM/HRM) of arithmetic
solutions, AUC against pairwise counting, solution scores, and `reward_loss` against a numpy
float64 cross entropy over the marked positions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import batching, step_labels, tokenizers
from reasonjax.data.tasks import Problem, StepCheck, get_task
from reasonjax.programs import reward_model
from tests.conftest import random_params

TASK = get_task("arithmetic")
# 7 + 5 = 12, 12 * 3 = 36, 36 - 4 = 32 (and 32 / 4 = 8 for the four-step problem).
THREE = Problem(question="Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?",
                answer="32", solution="7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32\n#### 32",
                data={"start": 7, "operations": (("+", 5), ("*", 3), ("-", 4))})
FOUR = Problem(question="Start with 7. Add 5. Multiply by 3. Subtract 4. Divide by 4. "
                        "What is the result?",
               answer="8", solution="7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32\n32 / 4 = 8\n#### 8",
               data={"start": 7, "operations": (("+", 5), ("*", 3), ("-", 4), ("/", 4))})
S = ["7 + 5 = 12", "12 * 3 = 36", "36 - 4 = 32", "32 / 4 = 8"]


def test_the_hand_made_problems_are_what_the_task_would_generate():
  for p in (THREE, FOUR):
    assert TASK.check_answer(p, p.solution)
    assert TASK.check_steps(p, TASK.parse_steps(p.solution)).all_correct


# ----------------------------------------------------------------------------- units

# (problem, text, labels of its steps, final answer correct), labels worked out by hand: a step
# is right iff it is the true running value op the true operand = the true result.
CASES = {
    "three_gold": (THREE, THREE.solution, [1, 1, 1], True),
    # A slip in step 1, carried on: every later step starts from a wrong value.
    "three_carried": (THREE, "7 + 5 = 12\n12 * 3 = 35\n35 - 4 = 31\n#### 31", [1, 0, 0], False),
    "four_gold": (FOUR, FOUR.solution, [1, 1, 1, 1], True),
    # A slip in step 1 that step 2 ignores: only step 1 is wrong, and the answer is right.
    "four_slip": (FOUR, "7 + 5 = 12\n12 * 3 = 35\n36 - 4 = 32\n32 / 4 = 8\n#### 8", [1, 0, 1, 1],
                  True),
    # A slip in step 2, carried on.
    "four_carried": (FOUR, "7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 30\n30 / 4 = 7\n#### 7",
                     [1, 1, 0, 0], False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_are_the_tasks_step_checks(case):
  problem, text, labels, correct = CASES[case]
  assert TASK.check_steps(problem, TASK.parse_steps(text)) == StepCheck(tuple(map(bool, labels)))
  assert TASK.check_answer(problem, text) == correct


@pytest.mark.parametrize("case", sorted(CASES))
def test_orm_and_prm_units(case):
  problem, text, labels, correct = CASES[case]
  steps = S[:len(labels)]
  padded = "  " + text + "\n\n"
  assert reward_model.units(TASK, problem, padded, "orm") == [([text], [float(correct)])]
  units = reward_model.units(TASK, problem, padded, "prm")
  assert [s for s, _ in units] == [[t.strip() for t in text.split("\n")[:len(labels)]]]
  if case.endswith("gold"):
    assert units == [(steps, [1.0] * len(steps))]
  assert units[0][1] == [float(y) for y in labels]
  assert all(isinstance(y, float) for y in units[0][1])


def test_hrm_units_of_three_steps():
  _, text, _, _ = CASES["three_carried"]
  t = text.split("\n")
  assert reward_model.units(TASK, THREE, text, "hrm") == [
      (t[:3], [1.0, 0.0, 0.0]),  # singles
      ([f"{t[0]} {t[1]}", t[2]], [0.0, 0.0]),  # pairs from step 0: (0, 1), then step 2 alone
      ([t[0], f"{t[1]} {t[2]}"], [1.0, 0.0]),  # from step 1: step 0 alone, then (1, 2)
  ]
  assert reward_model.units(TASK, THREE, THREE.solution, "hrm") == [
      (S[:3], [1.0, 1.0, 1.0]),
      ([f"{S[0]} {S[1]}", S[2]], [1.0, 1.0]),
      ([S[0], f"{S[1]} {S[2]}"], [1.0, 1.0]),
  ]


def test_hrm_units_of_four_steps():
  _, text, _, _ = CASES["four_slip"]
  t = text.split("\n")
  assert reward_model.units(TASK, FOUR, text, "hrm") == [
      (t[:4], [1.0, 0.0, 1.0, 1.0]),
      ([f"{t[0]} {t[1]}", f"{t[2]} {t[3]}"], [0.0, 1.0]),  # (0, 1), (2, 3): the later labels
      ([t[0], f"{t[1]} {t[2]}", t[3]], [1.0, 1.0, 1.0]),  # 0, (1, 2), 3
  ]
  _, text, _, _ = CASES["four_carried"]
  t = text.split("\n")
  assert reward_model.units(TASK, FOUR, text, "hrm") == [
      (t[:4], [1.0, 1.0, 0.0, 0.0]),
      ([f"{t[0]} {t[1]}", f"{t[2]} {t[3]}"], [1.0, 0.0]),
      ([t[0], f"{t[1]} {t[2]}", t[3]], [1.0, 0.0, 0.0]),
  ]


class ListTask:
  """A stand-in task: steps are the lines, labels given."""

  def __init__(self, labels):
    self.labels = labels

  def parse_steps(self, text):
    return text.split("\n") if text else []

  def check_steps(self, problem, steps):
    assert len(steps) == len(self.labels)
    return StepCheck(tuple(self.labels))


@pytest.mark.parametrize("num_steps", range(0, 6))
def test_step_units_are_the_tasks_labels_rendered_by_step_labels(num_steps):
  """prm: the steps once; hrm: `step_labels.hierarchical_units`, whose renderings
  tests/data/test_step_labels.py checks against a brute force."""
  labels = [bool(b) for b in np.random.default_rng(num_steps).integers(0, 2, num_steps)]
  steps = [f"s{i}" for i in range(num_steps)]
  text = "\n".join(steps)
  floats = [float(y) for y in labels]
  assert reward_model.units(ListTask(labels), None, text, "prm") == (
      [(steps, floats)] if num_steps else [])
  assert reward_model.units(ListTask(labels), None, text, "hrm") == (
      step_labels.hierarchical_units(steps, floats))


def test_unknown_granularity_is_named():
  with pytest.raises(ValueError, match=r"granularity 'pairs'; valid: \('orm', 'prm', 'hrm'\)"):
    reward_model.units(TASK, THREE, THREE.solution, "pairs")


def test_no_steps_means_no_prm_units():
  assert reward_model.units(TASK, THREE, "#### 32", "prm") == []
  assert reward_model.units(TASK, THREE, "#### 32", "hrm") == []
  assert reward_model.units(TASK, THREE, "#### 32", "orm") == [(["#### 32"], [1.0])]


def test_extra_steps_beyond_the_operations_are_wrong():
  text = THREE.solution.replace("#### 32", "32 + 1 = 33\n#### 33")
  assert reward_model.units(TASK, THREE, text, "prm") == [
      (S[:3] + ["32 + 1 = 33"], [1.0, 1.0, 1.0, 0.0])]


# ----------------------------------------------------------------------------- auc, scores


def brute_auc(scores, labels):
  pos = [s for s, y in zip(scores, labels) if y > 0.5]
  neg = [s for s, y in zip(scores, labels) if y <= 0.5]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_counting_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 40))
  scores = rng.integers(0, 5, n).astype(np.float32)  # many ties
  labels = rng.random(n)  # soft labels: positive above 1/2
  labels[:2] = [0.9, 0.1]  # both classes present
  assert reward_model.auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_auc_known_values_and_single_class():
  y = np.array([0.0, 1.0, 0.0, 1.0])
  assert reward_model.auc(np.array([0.1, 0.9, 0.2, 0.8]), y) == 1.0
  assert reward_model.auc(np.array([0.9, 0.1, 0.8, 0.2]), y) == 0.0
  assert reward_model.auc(np.zeros(4), y) == 0.5
  assert np.isnan(reward_model.auc(np.array([0.3, 0.4]), np.array([1.0, 1.0])))
  assert np.isnan(reward_model.auc(np.array([0.3, 0.4]), np.array([0.0, 0.5])))
  assert np.isnan(reward_model.auc(np.array([]), np.array([])))


def test_solution_score_is_the_last_for_orm_and_the_weakest_step_otherwise():
  scores = np.array([0.5, -2.0, 3.0, 1.0])
  assert reward_model.solution_score(scores, "orm") == 1.0
  assert reward_model.solution_score(scores, "prm") == -2.0
  assert reward_model.solution_score(scores, "hrm") == -2.0
  assert reward_model.solution_score(np.array([0.25]), "prm") == 0.25
  assert isinstance(reward_model.solution_score(scores, "orm"), float)


# ----------------------------------------------------------------------------- reward_loss


CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16, lm_head=False, score_head=True)
MODEL = models.Model(CFG)
T = 192
COMBINATIONS = [("unpacked", "orm", "bce"), ("unpacked", "prm", "mse"), ("unpacked", "hrm", "bce"),
                ("packed", "prm", "bce"), ("packed", "hrm", "mse")]


@pytest.fixture(scope="module")
def examples():
  """PRM examples: the step renderings of the cases above and one with soft labels."""
  tok = tokenizers.load("synthetic")
  out = []
  for problem, text, _, _ in (CASES[c] for c in ("three_carried", "four_slip", "four_gold")):
    for steps, labels in reward_model.units(TASK, problem, text, "hrm")[:2]:
      out.append(batching.prm_example(tok, TASK.prompt(problem), steps, labels))
  out.append(batching.prm_example(tok, TASK.prompt(THREE), S[:2], [0.25, 0.75]))
  assert len(out) == 7 and all(len(e["inputs"]) <= T // 2 for e in out)
  return out


def unpacked(examples):
  """One example per row, right-padded, as `batching.batches` lays them out."""
  batch = next(batching.batches(examples, batch_size=len(examples), seq_len=T, shuffle=False))
  return {k: jnp.asarray(v) for k, v in batch.items()}


def packed(examples):
  """By hand: examples 2i and 2i+1 share row i, segment ids 1 and 2, positions restarting."""
  rows = [examples[i:i + 2] for i in range(0, len(examples), 2)]
  batch = {k: np.zeros((len(rows), T), np.float32 if k.startswith("step") else np.int32)
           for k in ("inputs", "step_mask", "step_labels", "positions", "segment_ids")}
  for r, row in enumerate(rows):
    start = 0
    for seg, e in enumerate(row, 1):
      n = len(e["inputs"])
      for k in ("inputs", "step_mask", "step_labels"):
        batch[k][r, start:start + n] = e[k]
      batch["positions"][r, start:start + n] = np.arange(n)
      batch["segment_ids"][r, start:start + n] = seg
      start += n
  return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def out(examples):
  """One compiled program: plain scores of the unpacked rows (the reference) and reward_loss
  of both layouts for the granularities and label kinds (each a forward pass: not all pairs, to keep
  the program small)."""
  params = random_params(CFG, 0)

  @jax.jit
  def run(params, flat, pack):
    scores = MODEL.apply({"params": params}, flat["inputs"], method=models.Model.score)
    layouts = {"unpacked": flat, "packed": pack}
    losses = {(layout, granularity, kind): reward_model.reward_loss(
                  params, layouts[layout], None, model=MODEL, granularity=granularity, kind=kind)
              for layout, granularity, kind in COMBINATIONS}
    return scores, losses

  scores, losses = jax.device_get(run(params, unpacked(examples), packed(examples)))
  return np.asarray(scores, np.float64), losses


def test_reward_loss_is_the_mean_cross_entropy_over_marked_positions(examples, out):
  scores, losses = out
  mask = np.zeros(scores.shape, bool)
  labels = np.zeros(scores.shape)
  for r, e in enumerate(examples):
    mask[r, :len(e["inputs"])] = e["step_mask"] > 0
    labels[r, :len(e["inputs"])] = e["step_labels"]
  x, y = scores[mask], labels[mask]
  assert len(x) == sum(int(e["step_mask"].sum()) for e in examples) == 19
  assert (x > 0).any() and (x < 0).any()  # a random score head: both signs
  sigmoid = 1.0 / (1.0 + np.exp(-x))
  expected = {"bce": np.mean(-y * np.log(sigmoid) - (1 - y) * np.log(1 - sigmoid)),
              "mse": np.mean((sigmoid - y) ** 2)}
  accuracy = np.mean((x > 0) == (y > 0.5))
  for (layout, granularity, kind), (value, (weight, metrics)) in losses.items():
    name = (layout, granularity, kind)
    np.testing.assert_allclose(float(value), expected[kind], rtol=1e-5, err_msg=str(name))
    np.testing.assert_allclose(float(metrics["loss"]), expected[kind], rtol=1e-5)
    assert float(weight) == float(metrics["labels"]) == len(x), name
    assert float(metrics["accuracy"]) == pytest.approx(accuracy, abs=1e-6), name
    assert float(metrics["positive_fraction"]) == pytest.approx(y.mean(), abs=1e-6), name
