"""Monte-Carlo step labels against brute force: fake completers written from the definitions
(an oracle that completes correctly iff every step so far is right, a noisy one, a table of
values), the number of completer calls and rollouts, the agreement metrics by hand, input
errors, and one run through a tiny random policy."""

import math

import jax
import numpy as np
import pytest

from reasonjax import models, sampling
from reasonjax.data import tasks, tokenizers
from reasonjax.search import mc_labels
from tests.conftest import random_params

TASK = tasks.ArithmeticChains(min_steps=1, max_steps=7, max_operand=9, max_value=99,
                              ops="+-*")


def gold_lines(problem):
  return problem.solution.split("\n")  # The steps, then '#### answer'.


def corrupt(problem, j, propagate):
  """The gold steps with step j's result off by one; later steps then build on the wrong value
  (propagate) or go on from the true values."""
  value, steps = problem.data["start"], []
  for i, (op, x) in enumerate(problem.data["operations"]):
    result = {"+": value + x, "-": value - x, "*": value * x}[op]
    shown = result + 1 if i == j else result
    steps.append(f"{value} {op} {x} = {shown}")
    value = shown if propagate else result
  return steps


@pytest.fixture(scope="module")
def data():
  """(problems, solutions): for each problem the gold steps, an error at each step (carried on
  or not), the steps less the last one, and one step too many."""
  problems, solutions = [], []
  for problem in TASK.generate(12, seed=1):
    steps = gold_lines(problem)[:-1]
    variants = [steps, steps[:-1], steps + ["1 + 1 = 2"]]
    variants += [corrupt(problem, j, propagate) for j in range(len(steps))
                 for propagate in (True, False)]
    problems += [problem] * len(variants)
    solutions += variants
  return problems, solutions


def problem_of(prefix, by_question):
  """The problem and the steps of a prefix `task.prompt(problem) + steps`."""
  question, rest = prefix.split("\n", 1)
  problem = by_question[question]
  assert TASK.prompt(problem) + rest == prefix
  return problem, tasks.parse_steps(rest)


def oracle(problems, calls):
  """Completes correctly (the rest of the gold solution) iff every step so far is right."""
  by_question = {p.question: p for p in problems}

  def complete(prefixes, k):
    calls.append(len(prefixes))
    out = []
    for prefix in prefixes:
      problem, steps = problem_of(prefix, by_question)
      if TASK.check_steps(problem, steps).all_correct:
        text = "\n".join(gold_lines(problem)[len(steps):])
      else:
        text = f"#### {int(problem.answer) + 1}"
      out.append([text] * k)
    return out

  return complete


def noisy(problems, p, seed):
  """Right with probability p per completion when every step so far is right, else wrong."""
  by_question = {q.question: q for q in problems}
  rng = np.random.default_rng(seed)

  def complete(prefixes, k):
    out = []
    for prefix in prefixes:
      problem, steps = problem_of(prefix, by_question)
      ok = TASK.check_steps(problem, steps).all_correct
      out.append([f"#### {problem.answer}" if ok and rng.random() < p else "#### -1"
                  for _ in range(k)])
    return out

  return complete


def all_correct_so_far(problem, steps):
  """Brute force: [n] float, 1 while steps 0..i are all right per check_steps."""
  correct = TASK.check_steps(problem, steps).correct
  return np.asarray([float(all(correct[:i + 1])) for i in range(len(steps))])


def test_sweep_values_are_the_all_correct_so_far_indicator_in_one_call(data):
  problems, solutions = data
  calls = []
  values = mc_labels.mc_step_values(TASK, problems, solutions, oracle(problems, calls), k=3)
  assert calls == [sum(len(s) for s in solutions)]  # Every prefix, one call.
  assert len(values) == len(solutions)
  for problem, steps, v in zip(problems, solutions, values):
    assert v.shape == (len(steps),) and v.dtype == np.float64
    np.testing.assert_array_equal(v, all_correct_so_far(problem, steps))
    np.testing.assert_array_equal(mc_labels.hard_labels([v])[0], v > 0)
    assert mc_labels.first_error_from_values(v) == TASK.check_steps(problem, steps).first_error


def test_binary_search_finds_check_steps_first_error_in_log_rounds(data):
  problems, solutions = data
  calls = []
  counter = mc_labels.CountingCompleter(oracle(problems, calls))
  result = mc_labels.first_error_binary_search(TASK, problems, solutions, counter, k=2)
  truth = [TASK.check_steps(p, s).first_error for p, s in zip(problems, solutions)]
  assert result.first_errors == truth
  longest = max(len(s) for s in solutions)
  assert result.rounds == counter.calls == len(calls) <= math.ceil(math.log2(longest + 1))
  assert result.rollouts == counter.rollouts == 2 * sum(calls)
  sweep_rollouts = 2 * sum(len(s) for s in solutions)
  assert result.rollouts < 0.6 * sweep_rollouts
  for problem, steps, measured in zip(problems, solutions, result.values):
    assert len(measured) <= math.ceil(math.log2(len(steps) + 1))
    brute = all_correct_so_far(problem, steps)
    assert all(brute[i] == v for i, v in measured.items())  # The probes are MC values too.
  agreement = mc_labels.first_error_agreement(TASK, problems, solutions, result.first_errors)
  assert agreement["precision"] == agreement["recall"] == 1.0
  assert agreement["detection_accuracy"] == agreement["exact_accuracy"] == 1.0
  assert agreement["true_errors"] == agreement["predicted_errors"] == sum(
      t is not None for t in truth)


@pytest.mark.parametrize("seed", range(4))
def test_binary_search_against_a_table_of_monotone_values(seed):
  """Values drawn per prefix (some > 0, then 0 from a random step on; answered by a completer
  reading a table): the search returns the first 0, probing at most ceil(log2(n + 1)) steps."""
  rng = np.random.default_rng(seed)
  k = 4
  problems = TASK.generate(40, seed=seed)
  solutions, table, firsts, table_rights = [], {}, [], []
  for problem in problems:
    n = int(rng.integers(0, 9))
    steps = [f"step {i} of {problem.question}" for i in range(n)]
    first = int(rng.integers(0, n + 1))  # n: no error.
    rights = [int(rng.integers(1, k + 1)) if i < first else 0 for i in range(n)]
    for i, r in enumerate(rights):
      table[TASK.prompt(problem) + "".join(s + "\n" for s in steps[:i + 1])] = (problem, r)
    solutions.append(steps)
    table_rights.append(rights)
    firsts.append(first if first < n else None)

  def complete(prefixes, k):
    return [[f"#### {p.answer}"] * r + ["#### x"] * (k - r)
            for p, r in (table[prefix] for prefix in prefixes)]

  result = mc_labels.first_error_binary_search(TASK, problems, solutions, complete, k=k)
  assert result.first_errors == firsts
  for steps, measured in zip(solutions, result.values):
    assert len(measured) <= math.ceil(math.log2(len(steps) + 1))
  values = mc_labels.mc_step_values(TASK, problems, solutions, complete, k=k)
  assert [mc_labels.first_error_from_values(v) for v in values] == firsts
  for v, rights in zip(values, table_rights):
    np.testing.assert_allclose(v * k, rights)  # The table's right completions, over k.


def test_noisy_values_are_near_p_and_zero_after_the_first_error(data):
  problems, solutions = data
  p, k = 0.7, 400
  values = mc_labels.mc_step_values(TASK, problems, solutions, noisy(problems, p, 0), k=k)
  before = []
  for problem, steps, v in zip(problems, solutions, values):
    first = TASK.check_steps(problem, steps).first_error
    stop = len(steps) if first is None else first
    assert (v[stop:] == 0).all()
    assert (np.abs(v[:stop] - p) < 0.12).all()  # 5 standard deviations at k = 400.
    before += list(v[:stop])
  assert abs(np.mean(before) - p) < 0.01
  # With k = 24 every right prefix gets a right completion but with probability 0.3^24.
  calls = mc_labels.CountingCompleter(noisy(problems, p, 1))
  result = mc_labels.first_error_binary_search(TASK, problems, solutions, calls, k=24)
  assert result.first_errors == [TASK.check_steps(q, s).first_error
                                 for q, s in zip(problems, solutions)]
  assert calls.calls == result.rounds <= math.ceil(math.log2(max(map(len, solutions)) + 1))


def test_an_answer_in_the_prefix_is_graded_without_rollouts():
  problem = TASK.generate(1, seed=3)[0]
  lines = gold_lines(problem)
  wrong = lines[:-1] + [f"#### {int(problem.answer) + 1}"]
  calls = []
  values = mc_labels.mc_step_values(TASK, [problem, problem], [lines, wrong],
                                    oracle([problem], calls), k=5)
  assert calls == [2 * (len(lines) - 1)]  # The two answered prefixes need no completion.
  np.testing.assert_array_equal(values[0], np.ones(len(lines)))
  np.testing.assert_array_equal(values[1], [1.0] * (len(lines) - 1) + [0.0])
  # Only answered prefixes: no completer call at all.
  calls.clear()
  result = mc_labels.first_error_binary_search(TASK, [problem, problem], [lines[-1:], wrong[-1:]],
                                               oracle([problem], calls), k=5)
  assert calls == [] and result.rounds == result.rollouts == 0
  assert result.first_errors == [None, 0]


def test_agreement_counts_by_hand():
  problem = next(p for p in TASK.generate(20, seed=5) if len(p.data["operations"]) >= 3)
  steps = gold_lines(problem)[:-1]
  # True first errors: None, 2, 0, 1.
  bad = [corrupt(problem, j, True)[:3] for j in (2, 0, 1)]
  solutions = [steps[:3]] + bad
  truth = [TASK.check_steps(problem, s).first_error for s in solutions]
  assert truth == [None, 2, 0, 1]
  got = mc_labels.first_error_agreement(TASK, [problem] * 4, solutions, [1, 2, None, 0])
  assert got["precision"] == pytest.approx(1 / 3)  # predicted 1, 2, 0: only 2 is right
  assert got["recall"] == pytest.approx(1 / 3)  # true 2, 0, 1: only 2 found
  assert got["detection_accuracy"] == 0.5  # solutions 1 and 3 flagged rightly
  assert got["exact_accuracy"] == 0.25
  assert (got["solutions"], got["true_errors"], got["predicted_errors"]) == (4, 3, 3)
  nothing = mc_labels.first_error_agreement(TASK, [problem], [steps[:3]], [None])
  assert math.isnan(nothing["precision"]) and math.isnan(nothing["recall"])
  assert nothing["detection_accuracy"] == 1.0


def test_first_error_from_values():
  assert mc_labels.first_error_from_values(np.array([0.5, 1.0, 0.25])) is None
  assert mc_labels.first_error_from_values(np.array([0.5, 0.0, 0.25, 0.0])) == 1
  assert mc_labels.first_error_from_values(np.array([])) is None
  got = mc_labels.hard_labels([np.array([0.0, 0.2]), np.array([])])
  assert got[0].tolist() == [False, True] and got[1].shape == (0,)


def test_bad_input_raises(data):
  problems, solutions = data[0][:3], data[1][:3]
  complete = oracle(problems, [])
  for fn in (mc_labels.mc_step_values, mc_labels.first_error_binary_search):
    for k in (0, -1, 1.5):
      with pytest.raises(ValueError, match="k .*>= 1"):
        fn(TASK, problems, solutions, complete, k=k)
    with pytest.raises(ValueError, match="3 problems but 2 solutions"):
      fn(TASK, problems, solutions[:2], complete, k=2)
    with pytest.raises(ValueError, match="list of step strings"):
      fn(TASK, problems[:1], ["1 + 2 = 3\n3 + 4 = 7"], complete, k=2)
    with pytest.raises(ValueError, match="returned 2 lists for"):
      fn(TASK, problems, solutions, lambda prefixes, k: [["x"] * k] * 2, k=2)
    with pytest.raises(ValueError, match="returned 1 texts for a prefix; expected .* k=2"):
      fn(TASK, problems, solutions, lambda prefixes, k: [["x"]] * len(prefixes), k=2)
    with pytest.raises(ValueError, match="returned a string"):
      fn(TASK, problems, solutions, lambda prefixes, k: ["xy"] * len(prefixes), k=2)
  with pytest.raises(ValueError, match="equal lengths"):
    mc_labels.first_error_agreement(TASK, problems, solutions, [None])


def test_policy_completer_with_a_tiny_random_model():
  """Shapes and counts through the real sampler; values in [0, 1] on the k + 1 levels; a call's
  rollouts depend only on the key and the call's index."""
  tok = tokenizers.load("synthetic")
  cfg = models.preset("tiny", vocab_size=tok.vocab_size, num_layers=2, hidden_size=64,
                      intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
  model, params = models.Model(cfg), random_params(cfg, 0)
  config = sampling.SamplingConfig(max_new_tokens=6, temperature=1.0, eos_token_id=tok.eos_id,
                                   pad_token_id=tok.pad_id)
  task = tasks.ArithmeticChains(min_steps=1, max_steps=3, max_operand=9, max_value=30, ops="+-")
  problems = task.generate(3, seed=0)
  solutions = [task.parse_steps(p.solution) for p in problems]
  k, rng = 3, jax.random.key(0)

  def completer():
    return mc_labels.CountingCompleter(mc_labels.policy_completer(
        model, params, tok, config, rng, batch_size=12, progress=None))

  first = completer()
  values = mc_labels.mc_step_values(task, problems, solutions, first, k=k)
  assert first.calls == 1 and first.prefixes == sum(map(len, solutions))
  assert [v.shape for v in values] == [(len(s),) for s in solutions]
  flat = np.concatenate(values)
  assert ((flat >= 0) & (flat <= 1)).all()
  np.testing.assert_allclose(flat * k, np.round(flat * k), atol=1e-9)
  prefixes = [task.prompt(problems[0]) + solutions[0][0] + "\n"] * 2
  again = completer()
  texts = again(prefixes, k)  # Call 0 of a new completer with the same key: reproducible.
  assert len(texts) == 2 and all(len(t) == k and all(isinstance(x, str) for x in t)
                                 for t in texts)
  assert again(prefixes, k) != texts  # Call 1 draws other rollouts.
  search = mc_labels.first_error_binary_search(task, problems, solutions, completer(), k=k)
  assert 1 <= search.rounds <= math.ceil(math.log2(max(map(len, solutions)) + 1))
  assert all(v is None or 0 <= v < len(s) for v, s in zip(search.first_errors, solutions))
