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


def _brute_step_logprobs(model, params, problem, steps):
  """Each step's token log-probabilities, summed, from one unpadded forward pass in float64."""
  prompt = TOK.encode(TASK.prompt(problem), add_bos=True)
  pieces = [TOK.encode(s + TOK.step_delimiter) for s in steps]
  ids = prompt + [t for p in pieces for t in p]
  logits = np.asarray(model.apply({"params": params}, np.asarray([ids], np.int32))[0],
                      np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  position, sums, counts = len(prompt), [], []
  for piece in pieces:
    sums.append(sum(logp[t - 1, ids[t]] for t in range(position, position + len(piece))))
    counts.append(len(piece))
    position += len(piece)
  return np.asarray(sums), np.asarray(counts)


@pytest.mark.parametrize("with_reference", [False, True])
def test_implicit_scorer_against_one_forward_pass_per_solution(with_reference):
  cfg = models.preset("tiny", vocab_size=TOK.vocab_size, num_layers=2, hidden_size=64,
                      intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
  model, policy, ref = models.Model(cfg), random_params(cfg, 0), random_params(cfg, 1)
  problems = TASK.generate(5, seed=2)
  solutions = [p.solution.split("\n") for p in problems]
  solutions[1] = solutions[1][:1]  # one step only
  solutions[2] = []  # no step: no score
  scorer = scorers.ImplicitScorer(model, policy, TASK, TOK, beta=0.5, batch_size=2,
                                  reference=ref if with_reference else None)
  got = scorer(problems, solutions)
  for problem, steps, scores in zip(problems, solutions, got):
    assert scores.shape == (len(steps),)
    mine, counts = _brute_step_logprobs(model, policy, problem, steps)
    if with_reference:
      theirs, _ = _brute_step_logprobs(model, ref, problem, steps)
      expected = 1.0 / (1.0 + np.exp(-0.5 * np.cumsum(mine - theirs)))
    else:
      expected = np.exp(mine / np.maximum(counts, 1))
    np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=1e-6)
    assert ((0 <= scores) & (scores <= 1)).all()
