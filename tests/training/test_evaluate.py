"""Task evaluation: unbiased pass@k against enumeration of every k-subset, and the metrics of
`task_accuracy` on known completions (the sampler replaced by a fake)."""

import dataclasses
import itertools
import types

import jax
import numpy as np
import pytest

from reasonjax.data.tasks import get_task
from reasonjax.sampling import SamplingConfig
from reasonjax.training import evaluate


def brute_pass_at_k(n, c, k):
  """The fraction of the k-subsets of n samples (the first c correct) with a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), \
          (n, c, k)


def test_pass_at_k_special_values():
  assert evaluate.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the sample accuracy
  assert evaluate.pass_at_k(10, 0, 10) == 0.0
  assert evaluate.pass_at_k(10, 1, 10) == 1.0
  assert evaluate.pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
  with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
    evaluate.pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- task_accuracy

TASK = get_task("arithmetic")
PROBLEMS = TASK.generate(6, seed=0, split="test")
TOKENIZER = types.SimpleNamespace(eos_id=3, pad_id=0)


def wrong(p):
  return p.solution.replace(f"#### {p.answer}", f"#### {int(p.answer) + 1}")


def truncated(p):
  return p.solution.split("####")[0]


# Greedy completions: (text, correct, has an answer line).
GREEDY = [
    (PROBLEMS[0].solution, True, True),
    (wrong(PROBLEMS[1]), False, True),
    (PROBLEMS[2].solution + "\n", True, True),
    (truncated(PROBLEMS[3]), False, False),
    (f"#### {int(PROBLEMS[4].answer) + 7}\n#### {PROBLEMS[4].answer}", True, True),  # last counts
    ("", False, False),
]
# Sampled: how many of the n = 5 samples of each problem are correct.
N, K = 5, 2
CORRECT_COUNTS = [5, 0, 1, 3, 4, 2]


def sampled_texts(p, c):
  texts = [p.solution] * c + [wrong(p) if j % 2 else truncated(p) for j in range(N - c)]
  order = np.random.default_rng(c).permutation(N)  # correct ones not always first
  return [texts[j] for j in order]


class FakeGenerate:
  """Stands in for `sampling.generate_texts`: records calls, returns the texts above."""

  def __init__(self):
    self.calls = []

  def __call__(self, model, params, tokenizer, prompts, rng, config, *, batch_size, progress,
               tool):
    self.calls.append(dict(model=model, params=params, tokenizer=tokenizer, prompts=prompts,
                           rng=rng, config=config, batch_size=batch_size, tool=tool))
    if config.num_samples == 1:
      return [[text] for text, _, _ in GREEDY]
    assert config.num_samples == N
    return [sampled_texts(p, c) for p, c in zip(PROBLEMS, CORRECT_COUNTS)]


@pytest.fixture
def fake(monkeypatch):
  fake = FakeGenerate()
  monkeypatch.setattr(evaluate, "generate_texts", fake)
  return fake


def test_greedy_and_sampled_metrics(fake):
  rng = jax.random.key(0)
  result = evaluate.task_accuracy("model", "params", TOKENIZER, TASK, PROBLEMS, rng,
                                  max_new_tokens=48, num_samples=N, k=K, temperature=0.8,
                                  batch_size=16)
  expected = {
      "accuracy": np.mean([c for _, c, _ in GREEDY]),  # 3 of 6
      "greedy_length": np.mean([len(t) for t, _, _ in GREEDY]),
      "truncated": np.mean([not a for _, _, a in GREEDY]),  # 2 of 6
      f"pass_at_{K}": np.mean([brute_pass_at_k(N, c, K) for c in CORRECT_COUNTS]),
      "sample_accuracy": sum(CORRECT_COUNTS) / (N * len(PROBLEMS)),
  }
  assert set(result.metrics) == set(expected)
  for name, value in expected.items():
    assert result.metrics[name] == pytest.approx(value, abs=1e-12), name
    assert isinstance(result.metrics[name], float)
  assert result.metrics["accuracy"] == 0.5 and result.metrics["truncated"] == pytest.approx(1 / 3)
  assert result.greedy == [t for t, _, _ in GREEDY]

  greedy_call, sampled_call = fake.calls
  prompts = [p.question + "\n" for p in PROBLEMS]
  for call in fake.calls:
    assert call["model"] == "model" and call["params"] == "params"
    assert call["tokenizer"] is TOKENIZER and call["prompts"] == prompts
  assert greedy_call["config"] == SamplingConfig(max_new_tokens=48, temperature=0.0,
                                                 eos_token_id=3, pad_token_id=0)
  assert greedy_call["batch_size"] == 16
  assert sampled_call["config"] == dataclasses.replace(greedy_call["config"], num_samples=N,
                                                       temperature=0.8)
  assert sampled_call["batch_size"] == 16 // N  # about batch_size rows per sampler call
  # The samples use another key than the greedy pass.
  assert not np.array_equal(jax.random.key_data(greedy_call["rng"]),
                            jax.random.key_data(sampled_call["rng"]))


def test_no_samples_means_greedy_metrics_only(fake):
  result = evaluate.task_accuracy(None, None, TOKENIZER, TASK, PROBLEMS, jax.random.key(0),
                                  max_new_tokens=8)
  assert set(result.metrics) == {"accuracy", "greedy_length", "truncated"}
  assert len(fake.calls) == 1


def test_more_samples_per_call_than_the_batch_size_still_samples(fake):
  evaluate.task_accuracy(None, None, TOKENIZER, TASK, PROBLEMS, jax.random.key(0),
                         max_new_tokens=8, num_samples=N, k=1, batch_size=2)
  assert fake.calls[1]["batch_size"] == 1
