"""The reward model as the RL reward: its rewards against the step scorer called text by text
(split into steps by hand, aggregated with numpy), batched forward passes, and the true accuracy
against the verifier on hand-made texts."""

import jax
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import tasks, tokenizers
from reasonjax.rewards import reward_model, scoring
from reasonjax.search import scorers
from tests.conftest import random_params

TASK = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99,
                      ops="+-")
TOK = tokenizers.load("synthetic")
RM = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                   num_heads=4, num_kv_heads=2, head_dim=16, lm_head=False, score_head=True)
PARAMS = random_params(RM, 0)
BATCH = 5


def _texts():
  """(problem, text, correct by construction) for each of 3 problems: the gold solution, a wrong
  answer, a wrong step with the right answer, the answer line alone, steps without an answer,
  nothing."""
  out = []
  for p in TASK.generate(3, seed=0, split="test"):
    lines = p.solution.split("\n")
    answer = lines[-1]
    out += [(p, p.solution, True), (p, "\n".join(lines[:-1] + [answer + "1"]), False),
            (p, "\n".join([lines[0].replace("=", "= 1")] + lines[1:]), True),
            (p, answer, True), (p, "\n".join(lines[:-1]), False), (p, "", False)]
  return out


def _reward(granularity, aggregation, monkeypatch):
  """A RewardModelReward whose jitted forward passes are counted (in `.calls`, rows each)."""
  calls = []
  with monkeypatch.context() as m:
    jit = jax.jit

    def counting_jit(fn):
      compiled = jit(fn)

      def call(params, inputs):
        calls.append(inputs.shape[0])
        return compiled(params, inputs)

      return call

    m.setattr(scorers.jax, "jit", counting_jit)
    rm = scorers.RewardModelScorer(models.Model(RM), PARAMS, TASK, TOK, granularity=granularity,
                                   batch_size=BATCH)
  truth = scoring.Scorer(scoring.TaskVerifier(TASK), {"correctness": 1.0}, num_workers=0)
  reward = reward_model.RewardModelReward(rm, TASK, truth, aggregation=aggregation)
  reward.calls = calls
  return reward


@pytest.mark.parametrize("granularity,aggregation", [("prm", "min"), ("hrm", "mean"),
                                                     ("orm", "prod")])
def test_rewards_are_the_scorers_solution_scores_text_by_text(granularity, aggregation,
                                                               monkeypatch):
  reward = _reward(granularity, aggregation, monkeypatch)
  cases = _texts()
  problems, texts = [p for p, _, _ in cases], [t for _, t, _ in cases]
  got, _ = reward(problems, texts, group_size=6)
  # One batch for all texts: ceil(18 / 5) forward passes of BATCH rows, never one per text.
  assert reward.calls == [BATCH] * 4
  assert got.dtype == np.float32 and got.shape == (len(texts),)
  numpy_aggregation = {"min": np.min, "mean": np.mean}
  for (problem, text, _), value in zip(cases, got):
    steps = [s for s in text.split("\n") if s]  # these texts are clean: lines are the steps
    step_scores = reward.rm([problem], [steps])[0]  # alone: a batch of one
    if granularity == "orm":
      assert step_scores.shape == (1,)
      want = step_scores[0]
    else:
      want = numpy_aggregation[aggregation](step_scores) if steps else 0.0
    assert value == pytest.approx(want, abs=1e-6)
    assert 0.0 <= value <= 1.0
  # The reward model's, not the verifier's: a random score head gives no 0/1 reward to texts
  # with steps.
  assert all(0 < v < 1 for (_, t, _), v in zip(cases, got) if t)


def test_true_accuracy_is_the_verifiers_fraction_correct(monkeypatch):
  reward = _reward("prm", "min", monkeypatch)
  cases = _texts()
  problems, texts = [p for p, _, _ in cases], [t for _, t, _ in cases]
  # The verifier agrees with the construction: each problem has 3 correct texts of 6.
  assert [TASK.check_answer(p, t) for p, t, _ in cases] == [c for _, _, c in cases]
  rewards, metrics = reward(problems, texts, group_size=6)
  assert metrics["true_accuracy"] == pytest.approx(0.5)
  assert metrics["true_format"] == pytest.approx(4 / 6)  # all but "steps, no answer" and ""
  assert metrics["verifier/timeouts"] == metrics["verifier/errors"] == 0
  # The rewards do not come from the verifier: correct and wrong texts share no 0/1 split.
  assert not np.array_equal(rewards, np.asarray([c for _, _, c in cases], np.float32))
  # Only the gold texts: all correct.
  gold = [(p, t) for p, t, c in cases[::6]]
  _, metrics = reward([p for p, _ in gold], [t for _, t in gold])
  assert metrics["true_accuracy"] == 1.0
  with pytest.raises(ValueError, match="2 problems but 1 completions"):
    reward(problems[:2], texts[:1])


def test_bad_aggregation_and_a_foreign_tokenizer(tmp_path):
  rm = scorers.RewardModelScorer(models.Model(RM), PARAMS, TASK, TOK, granularity="prm")
  with pytest.raises(ValueError, match="unknown aggregation 'median'; valid: .*'min'"):
    reward_model.RewardModelReward(rm, TASK, None, aggregation="median")
  small = RM.replace(vocab_size=64)
  models.save_hf(small, random_params(small, 0), str(tmp_path))
  with pytest.raises(ValueError, match="vocab_size=64 is smaller than the tokenizer's 512"):
    reward_model.RewardModelReward.load(str(tmp_path), TASK, TOK, None)
