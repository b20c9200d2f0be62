"""The structured formats: seed traces against the base task's own solutions, the steps that
stand after refutations, the format checks on hand-made good and bad texts, and the confidence
parser."""

import re

import numpy as np
import pytest

from reasonjax.data import tasks
from reasonjax.data.tasks import base, structured

BASES = ["arithmetic", "countdown", "word_problems"]


@pytest.mark.parametrize("name", BASES)
def test_coat_seeds_redo_exactly_the_refuted_step_and_grade_right(name):
  plain = tasks.get_task(name).generate(300, seed=3)
  task = tasks.with_format(tasks.get_task(name), style="coat", error_rate=0.3)
  seeded = task.generate(300, seed=3)
  refuted = 0
  for p, q in zip(plain, seeded):
    assert q.question == p.question and q.answer == p.answer  # the base task's problems
    steps = base.parse_steps(p.solution)
    assert structured.standing_steps(q.solution) == steps
    assert task.check_answer(q, q.solution) and task.well_formed(q.solution)
    lines = q.solution.split("\n")
    wrong = [i for i, line in enumerate(lines) if line.startswith("<|reflect|> Wrong:")]
    assert len(wrong) <= 1
    if wrong:
      refuted += 1
      i = wrong[0]
      bad = base.parse_equation(lines[i - 1].removeprefix("<|continue|> "))
      assert bad is not None and not base.equation_holds(*bad)
      assert lines[i] == f"<|reflect|> Wrong: {bad[0]} {bad[1]} {bad[2]} is not {bad[3]}."
      assert lines[i + 1].removeprefix("<|explore|> ") in steps
  # error_rate 0.3 over 300 traces: the binomial's 4-sigma range.
  assert abs(refuted - 90) <= 4 * np.sqrt(300 * 0.3 * 0.7)


def test_standing_steps_drop_only_refuted_ones():
  text = ("<|continue|> 2 + 3 = 5\n<|continue|> 5 * 4 = 21\n<|reflect|> Wrong: 5 * 4 is not 21.\n"
          "<|explore|> 5 * 4 = 20\n<|reflect|> Right: every step holds.\n<|continue|> 20 - 1 = 19\n"
          "#### 19")
  assert structured.standing_steps(text) == ["2 + 3 = 5", "5 * 4 = 20", "20 - 1 = 19"]
  assert structured.standing_steps("<|reflect|> Wrong: nothing yet.\n#### 1") == []


def test_countdown_grading_sees_only_the_standing_moves():
  task = tasks.with_format(tasks.get_task("countdown"), style="coat", error_rate=0.0)
  problem = task.generate(1, seed=0)[0]
  lines = problem.solution.split("\n")
  given = {int(x) for x in re.findall(r"\d+", problem.question.split("reach")[0])}
  outside = next(n for n in range(90, 200) if n not in given)
  # A move with a number the question does not give, standing, then refuted.
  illegal = f"<|continue|> {outside} - {outside} = 0"
  standing = "\n".join([illegal] + lines)
  refuted = "\n".join([illegal, f"<|reflect|> Wrong: {outside} is not given."] + lines)
  assert task.check_answer(problem, problem.solution)
  assert not task.check_answer(problem, standing)
  assert task.check_answer(problem, refuted)


@pytest.mark.parametrize("text, ok", [
    ("<|continue|> 1 + 2 = 3\n#### 3", True),
    ("<|continue|> 1 + 2 = 3\n<|reflect|> Right: every step holds.\n#### 3", True),
    ("1 + 2 = 3\n#### 3", False),  # a line without a meta-action
    ("<|reflect|> Right: fine.\n<|continue|> 1 + 2 = 3\n#### 3", False),  # not opened by a step
    ("<|continue|> 1 + 2 = 3\n#### 3\n<|continue|> 3 + 1 = 4", False),  # the answer is not last
    ("<|continue|> 1 + 2 = 3\n#### 3\n#### 3", False),
    ("#### 3", False),
])
def test_coat_format_check(text, ok):
  assert structured.coat_well_formed(text) == ok


def _refine(**override):
  body = {"understanding": "Goal: What is it?", "facts": "Given: 1, 2", "plan": "1 step.",
          "think": "1 + 2 = 3", "final_answer": "#### 3", "self_assessment": "Confidence: 8/10"}
  body |= override
  names = [n for n in structured.SECTIONS if body[n] is not None]
  return "\n".join(f"<{n}>\n{body[n]}\n</{n}>" for n in names)


@pytest.mark.parametrize("text, ok", [
    (_refine(), True),
    (_refine(self_assessment=None), False),
    (_refine(self_assessment="Sure."), False),  # no confidence
    (_refine(self_assessment="Confidence: 11/10"), False),
    (_refine(final_answer="3"), False),  # no answer line
    (_refine(think="1 + 2 = 3\n#### 3"), False),  # an answer outside <final_answer>
    (_refine(plan="1 step.\n<think>\nx\n</think>"), False),  # a section inside another
    (_refine().replace("<facts>\nGiven: 1, 2\n</facts>\n", "")
     + "\n<facts>\nGiven: 1, 2\n</facts>", False),  # out of order
    (_refine() + "\nThe end.", False),
])
def test_refine_format_check(text, ok):
  assert structured.refine_well_formed(text) == ok


@pytest.mark.parametrize("name", BASES)
def test_refine_seeds_think_the_base_steps(name):
  plain = tasks.get_task(name).generate(50, seed=1)
  task = tasks.with_format(tasks.get_task(name), style="refine")
  for p, q in zip(plain, task.generate(50, seed=1)):
    assert task.well_formed(q.solution) and task.check_answer(q, q.solution)
    assert task.steps(q.solution) == base.parse_steps(p.solution)
    assert structured.parse_confidence(q.solution) == 1.0
    assert task.prompt(q) == tasks.get_task(name).prompt(p) + "Answer in tagged sections.\n"
    # The plain solution is right but not in the format.
    assert task.check_answer(q, p.solution) and not task.well_formed(p.solution)


@pytest.mark.parametrize("text, value", [
    ("Confidence: 7/10", 0.7), ("Confidence: 0/10", 0.0), ("Confidence:10 / 10", 1.0),
    ("Confidence: 3/10 ... Confidence: 9/10", 0.9), ("Confidence: 11/10", None),
    ("confident", None), ("Confidence: 7/100", None),
])
def test_parse_confidence(text, value):
  assert structured.parse_confidence(text) == value


def test_with_format_names_bad_knobs():
  arithmetic = tasks.get_task("arithmetic")
  with pytest.raises(ValueError, match=r"config.task.format has no field\(s\) \['rate'\]"):
    tasks.with_format(arithmetic, rate=0.1)
  with pytest.raises(ValueError, match="config.task.format.style='tags'; expected one of"):
    tasks.with_format(arithmetic, style="tags")
  with pytest.raises(ValueError, match="config.task.format.error_rate=2"):
    tasks.with_format(arithmetic, error_rate=2)
  problem = arithmetic.generate(1)[0]  # with a solution that is not equations, as GSM8K's
  words = base.Problem(problem.question, problem.answer, "Half of it is 3.\n#### 3")
  with pytest.raises(ValueError, match="COAT seeds need equation steps"):
    structured.coat_trace(words, 0.3)
