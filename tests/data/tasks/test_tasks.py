"""Synthetic tasks: determinism, disjoint splits, gold solutions pass, a corrupted step is caught
at exactly that step, and checkers agree with independent recomputation."""

import re

import numpy as np
import pytest

from reasonjax.data import tasks
from reasonjax.data.tasks import countdown

ALL = sorted(tasks.TASKS)


def corrupt(solution: str, index: int) -> str:
  """Adds 1 to the result of step `index` (an arithmetic slip)."""
  lines = solution.split("\n")
  lhs, rhs = lines[index].rsplit("=", 1)
  lines[index] = f"{lhs}= {int(rhs) + 1}"
  return "\n".join(lines)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_and_disjoint_splits(name):
  task = tasks.get_task(name)
  train = task.generate(300, seed=3)
  assert [p.question for p in train] == [p.question for p in task.generate(300, seed=3)]
  assert [p.question for p in train] != [p.question for p in task.generate(300, seed=4)]
  test = task.generate(100, seed=3, split="test")
  assert not {p.question for p in train} & {p.question for p in test}
  assert len({p.question for p in train}) == 300
  assert all(tasks.split_of(p.question, task.test_fraction) == "test" for p in test)


@pytest.mark.parametrize("name", ALL)
def test_gold_passes_and_each_corrupted_step_is_caught_there(name):
  task = tasks.get_task(name)
  for problem in task.generate(150, seed=0):
    steps = task.parse_steps(problem.solution)
    assert task.check_answer(problem, problem.solution)
    assert task.check_steps(problem, steps).all_correct, problem
    for k in range(len(steps)):
      bad = corrupt(problem.solution, k)
      check = task.check_steps(problem, task.parse_steps(bad))
      assert check.first_error == k, (problem, bad, check)
    wrong_answer = problem.solution.rsplit("####", 1)[0] + f"#### {int(problem.answer) + 1}"
    assert not task.check_answer(problem, wrong_answer)


def test_arithmetic_answer_matches_question_recomputed():
  """Reads the operations back from the question text and evaluates them independently."""
  words = {"Add": lambda v, x: v + x, "Subtract": lambda v, x: v - x,
           "Multiply by": lambda v, x: v * x, "Divide by": lambda v, x: v / x}
  task = tasks.get_task("arithmetic", min_steps=3, max_steps=6, max_operand=12)
  for problem in task.generate(200, seed=1):
    value = float(re.match(r"Start with (\d+)\.", problem.question).group(1))
    ops = re.findall(r"(Add|Subtract|Multiply by|Divide by) (\d+)\.", problem.question)
    assert 3 <= len(ops) <= 6
    for word, x in ops:
      value = words[word](value, float(x))
      assert value == int(value) and 0 <= value <= 999
    assert int(value) == int(problem.answer)


def test_arithmetic_skipped_operation_is_wrong_from_there():
  task = tasks.get_task("arithmetic", min_steps=3, max_steps=3)
  problem = task.generate(1, seed=5)[0]
  steps = task.parse_steps(problem.solution)
  check = task.check_steps(problem, [steps[0], steps[2]])
  assert check.correct == (True, False)


def test_countdown_reachability_by_hand():
  assert countdown.reachable((2, 3), 6) and countdown.reachable((4, 6), 24)
  assert countdown.reachable((4, 6), 2) and not countdown.reachable((4, 6), 1)
  assert not countdown.reachable((1, 1), 3) and countdown.reachable((1, 1, 1), 3)
  assert countdown.reachable((2, 3, 7), 13)  # 2 * 3 + 7
  assert not countdown.reachable((5, 7), 13)  # 5 + 7, 7 - 5, 5 * 7: no 13


def test_countdown_valid_move_into_dead_end_is_the_error():
  task = tasks.get_task("countdown")
  problem = tasks.Problem("q", "13", "", {"numbers": (2, 3, 7), "target": 13})
  check = task.check_steps(problem, ["2 + 3 = 5", "5 + 7 = 12"])
  assert check.correct == (False, False) and check.first_error == 0
  good = "2 * 3 = 6\n6 + 7 = 13\n#### 13"
  assert task.check_steps(problem, task.parse_steps(good)).all_correct
  assert task.check_answer(problem, good)
  reused = "7 + 7 = 14\n14 - 1 = 13\n#### 13"  # 7 twice, and 1 is not given
  assert task.check_steps(problem, task.parse_steps(reused)).first_error == 0
  assert not task.check_answer(problem, reused)


def test_countdown_other_solutions_count():
  task = tasks.get_task("countdown", num_numbers=3)
  problem = tasks.Problem("q", "13", "", {"numbers": (2, 3, 7), "target": 13})
  for solution in ("3 * 2 = 6\n7 + 6 = 13\n#### 13", "7 * 2 = 14\n14 - 3 = 11\n#### 11"):
    ok = solution.endswith("13")
    assert task.check_answer(problem, solution) == ok


def test_word_problems_accept_any_valid_order():
  task = tasks.get_task("word_problems", templates=(3,))  # a*b + c*d - e
  problem = task.generate(1, seed=2)[0]
  lines = problem.solution.split("\n")
  swapped = "\n".join([lines[1], lines[0]] + lines[2:])
  assert task.check_steps(problem, task.parse_steps(swapped)).all_correct
  assert task.check_answer(problem, swapped)
  # A true equation that is not part of the computation is a wrong step.
  a, b = problem.data["given"][:2]
  extra = task.parse_steps(problem.solution)
  extra.insert(0, f"{a} + {b} = {a + b}")
  assert task.check_steps(problem, extra).first_error == 0


def test_knobs_are_validated_and_named():
  with pytest.raises(ValueError, match=r"unknown task 'chess'; valid tasks: \['arithmetic'"):
    tasks.get_task("chess")
  with pytest.raises(ValueError, match=r"no knob\(s\) \['steps'\]; valid knobs"):
    tasks.get_task("arithmetic", steps=3)
  with pytest.raises(ValueError, match="min_steps <= max_steps"):
    tasks.get_task("arithmetic", min_steps=4, max_steps=2)
  with pytest.raises(ValueError, match="split='dev'"):
    tasks.get_task("countdown").generate(1, split="dev")


def test_countdown_numbers_and_targets_follow_knobs():
  task = tasks.get_task("countdown", num_numbers=5, max_number=20, min_target=50,
                        max_target=200)
  for problem in task.generate(50, seed=0):
    assert len(problem.data["numbers"]) == 5 and max(problem.data["numbers"]) <= 20
    assert 50 <= problem.data["target"] <= 200
    assert np.all(np.diff(problem.data["numbers"]) >= 0)
