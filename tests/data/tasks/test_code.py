"""The code format: seed programs printed by a real interpreter (the sandbox) equal the tasks'
answers, the outputs the traces show equal what their programs print, a wrong first program is
caught at the line that was changed, and the problems are the base task's."""

import re

import numpy as np
import pytest

from reasonjax.data import tasks
from reasonjax.data.tasks import code
from reasonjax.rewards import sandbox

CALL = re.compile(r"<code>\n(.*?)\n</code>\n<output>\n(.*?)\n</output>\n", re.S)


def run(program: str) -> str:
  result = sandbox.run_python(program, 5.0, 256)
  assert result.ok, result.stderr
  return result.stdout.strip()


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_the_seed_program_prints_the_answer_and_every_shown_output_is_what_runs(name):
  task = tasks.with_code(tasks.get_task(name), error_rate=0.5)
  problems = task.generate(6, seed=1)
  base = tasks.get_task(name).generate(6, seed=1)
  assert [p.question for p in problems] == [p.question for p in base]
  for problem, plain in zip(problems, base):
    calls = CALL.findall(problem.solution)
    assert 1 <= len(calls) <= 2
    for program, shown in calls:
      assert run(program) == shown  # The interpreter, not `code.evaluate`, is the reference.
    assert calls[-1][1] == problem.answer == plain.answer
    assert task.check_answer(problem, problem.solution)
    assert task.prompt(problem) == tasks.get_task(name).prompt(plain) + code.INSTRUCTION


def test_a_wrong_first_program_is_fixed_at_the_changed_line():
  task = tasks.with_code(tasks.get_task("arithmetic"), error_rate=1.0)
  for problem in task.generate(20, seed=2):
    (first, wrong_output), (second, right_output) = CALL.findall(problem.solution)
    assert wrong_output != right_output == problem.answer
    changed = [i for i, (a, b) in enumerate(zip(first.splitlines(), second.splitlines()))
               if a != b]
    assert len(changed) == 1
    k = changed[0]
    assert f"Check: line {k + 1} should be {second.splitlines()[k]}.\n" in problem.solution
    assert problem.solution.endswith(f"{code.RIGHT}\n#### {problem.answer}")


def test_the_error_rate_is_the_fraction_of_traces_that_correct_themselves():
  problems = tasks.with_code(tasks.get_task("arithmetic"), error_rate=0.3).generate(400, seed=0)
  fraction = np.mean([len(CALL.findall(p.solution)) == 2 for p in problems])
  assert 0.22 < fraction < 0.38
  never = tasks.with_code(tasks.get_task("arithmetic"), error_rate=0.0).generate(50, seed=0)
  assert all(len(CALL.findall(p.solution)) == 1 for p in never)


def test_operands_that_are_earlier_results_are_their_variables():
  lines = code.program_lines(["3 * 5 = 15", "12 + 15 = 27", "27 - 7 = 20"])
  assert lines == [("3", "*", "5"), ("12", "+", "x1"), ("x2", "-", "7")]
  assert run(code.render(lines)) == "20"


def test_bad_knobs_and_steps_that_are_not_equations_are_refused():
  with pytest.raises(ValueError, match=r"config.task.code has no field\(s\) \['errors'\]"):
    tasks.with_code(tasks.get_task("arithmetic"), errors=0.1)
  with pytest.raises(ValueError, match="error_rate=1.5"):
    tasks.with_code(tasks.get_task("arithmetic"), error_rate=1.5)
  with pytest.raises(ValueError, match="'She has 3 apples.' is not an equation"):
    code.program_lines(["She has 3 apples."])
  task = tasks.with_code(tasks.get_task("arithmetic"), timeout_s=1.5, max_calls=2)
  assert (task.tool.timeout_s, task.tool.max_calls, task.error_rate) == (1.5, 2, 0.3)


def test_programs_are_graded_by_the_base_task_on_the_moves_they_make():
  task = tasks.with_code(tasks.get_task("countdown"), error_rate=0.0)
  problem = task.generate(1, seed=5)[0]
  assert task.check_answer(problem, problem.solution)
  # The right answer from numbers the question does not give: Countdown's checker refuses it.
  cheat = f"<code>\nx1 = {problem.answer} + 0\nprint(x1)\n</code>\n#### {problem.answer}"
  assert not task.check_answer(problem, cheat)
  assert not task.check_answer(problem, problem.solution.replace(f"#### {problem.answer}", ""))
  assert code.equations("x1 = 3 * 5\nx2 = 12 + x1\nprint(x2)") == ["3 * 5 = 15", "12 + 15 = 27"]
  assert code.equations("x1 = x2 + 1\nx2 = 3 + 1\nprint(x2)") is None
  assert code.equations("print(3)") is None


def test_a_number_of_the_question_stays_a_literal_after_a_result_has_been_used():
  # "Start with 7. Subtract 2. Add 8. Add 5.": the 5 added is the question's, not x1.
  lines = code.program_lines(["7 - 2 = 5", "5 + 8 = 13", "13 + 5 = 18"])
  assert code.render(lines) == "x1 = 7 - 2\nx2 = x1 + 8\nx3 = x2 + 5\nprint(x3)"
