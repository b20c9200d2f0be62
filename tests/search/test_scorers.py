"""Step scorers: the oracle against the task's checkers, a reward model against its own forward
pass on each example alone, aggregations against numpy."""

import jax
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.search import scorers
from tests.conftest import random_params

TASK = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99,
                      ops="+-")
TOK = tokenizers.load("synthetic")
RM = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                   num_heads=4, num_kv_heads=2, head_dim=16, lm_head=False, score_head=True)


def _solutions():
  """Gold solutions, and copies with one step or the answer corrupted."""
  problems = TASK.generate(4, seed=0, split="test")
  out = []
  for p in problems:
    gold = p.solution.split("\n")
    out.append((p, gold))
    out.append((p, [gold[0].replace("=", "= 1")] + gold[1:]))  # A wrong first result.
    out.append((p, gold[:-1] + [gold[-1] + "1"]))  # A wrong answer.
  return out


def test_oracle_scores_steps_by_check_steps_and_the_answer_line_by_check_answer():
  pairs = _solutions()
  scores = scorers.OracleScorer(TASK)([p for p, _ in pairs], [s for _, s in pairs])
  for (problem, steps), s in zip(pairs, scores):
    assert s.shape == (len(steps),)
    truth = list(TASK.check_steps(problem, steps[:-1]).correct)
    truth.append(TASK.check_answer(problem, "\n".join(steps)))
    np.testing.assert_array_equal(s, np.asarray(truth, np.float32))
  # Each kind occurs: the test would see a scorer that always says 1.
  flat = np.concatenate(scores)
  assert 0 < flat.mean() < 1


@pytest.mark.parametrize("granularity,score_answers", [("prm", False), ("orm", False),
                                                       ("prm", True)])
def test_reward_model_scorer_matches_one_forward_pass_per_example(granularity, score_answers):
  params = random_params(RM, 0)
  scorer = scorers.RewardModelScorer(models.Model(RM), params, TASK, TOK,
                                     granularity=granularity, batch_size=4,
                                     score_answers=score_answers)
  pairs = _solutions()
  got = scorer([p for p, _ in pairs], [s for _, s in pairs])
  model = models.Model(RM)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, method=models.Model.score))
  for (problem, steps), s in zip(pairs, got):
    assert steps[-1].startswith("####")
    # A PRM scores the reasoning steps it was trained on; the answer line repeats the last,
    # unless it was trained on answer lines too.
    units = (["\n".join(steps)] if granularity == "orm" else steps if score_answers
             else steps[:-1])
    example = batching.prm_example(TOK, TASK.prompt(problem), units, [0.0] * len(units))
    logits = np.asarray(forward(params, example["inputs"][None])[0], np.float64)
    want = 1 / (1 + np.exp(-logits[example["step_mask"] > 0]))
    if granularity == "prm" and not score_answers:
      want = np.append(want, want[-1])
    assert s.shape == (1 if granularity == "orm" else len(steps),)
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-6)


def test_aggregations_against_numpy():
  rng = np.random.default_rng(0)
  for _ in range(10):
    s = rng.random(rng.integers(1, 6))
    assert scorers.aggregate(s, "min") == pytest.approx(s.min())
    assert scorers.aggregate(s, "prod") == pytest.approx(np.prod(s))
    assert scorers.aggregate(s, "last") == pytest.approx(s[-1])
    assert scorers.aggregate(s, "mean") == pytest.approx(s.mean())
  assert scorers.aggregate(np.zeros(0), "min") == 0.0


def test_bad_names():
  with pytest.raises(ValueError, match="unknown aggregation 'median'; valid: .*'prod'"):
    scorers.aggregate(np.ones(2), "median")
  with pytest.raises(ValueError, match="granularity 'step'.*'hrm'"):
    scorers.RewardModelScorer(models.Model(RM), None, TASK, TOK, granularity="step")
