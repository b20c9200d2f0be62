"""A task's problems solved by programs that a tool runs, with self-correction: CoSC's format.

    task = tasks.with_code(tasks.get_task("arithmetic"), error_rate=0.3)
    task.prompt(p)    # the question, then "Solve it with a program.\\n"
    p.solution        # a seed trace:

    <code>
    x1 = 7 + 5
    x2 = x1 * 3
    x3 = x2 - 4
    print(x3)
    </code>
    <output>
    32
    </output>
    Check: every line follows the question.
    #### 32

With probability `error_rate` a seed trace first runs a program with one line wrong, checks it
against the question ("Check: line 2 should be x2 = x1 * 3.") and runs the corrected program:
the verify-then-correct rounds of CoSC (Gao et al. 2024, "Embedding Self-Correction as an
Inherent Ability in Large Language Models for Enhanced Mathematical Reasoning"), whose seed
traces came from GPT-4 and are written here from the task's own solution steps. The model runs
its programs with `task.tool` (`sampling.tools.PythonTool`): the sampling and evaluation code
passes it to `generate_texts`. Problems are the base task's, in the same order.

A step `a op b = c` becomes the line `xi = A op B`, where an operand equal to an earlier unused
result is that result's variable, and division is `//` (the tasks' divisions are exact). Tasks whose
solutions are not such equations (GSM8K, MATH) have no seed programs: generating raises.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import zlib

import numpy as np

from reasonjax.data.tasks.base import (ANSWER_PREFIX, Problem, StepCheck, Task, parse_answer,
                                       parse_equation, parse_steps)
from reasonjax.sampling.tools import PythonTool

INSTRUCTION = "Solve it with a program.\n"
RIGHT = "Check: every line follows the question."
_PYTHON_OPS = {"+": "+", "-": "-", "*": "*", "/": "//"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
_LINE = re.compile(r"^x(\d+) = (x\d+|-?\d+) (\+|-|\*|//) (x\d+|-?\d+)$")


def program_lines(steps: list[str]) -> list[tuple[str, str, str]]:
  """(left, op, right) per equation step, operands as literals or earlier variables `x<i>`:
  an operand equal to an earlier result that no step has used yet is that result's variable
  (each result is used once, as in the tasks' solutions; a question's number stays a literal).

  Raises ValueError for a step that is not an equation `a op b = c`."""
  unused: dict[int, list[str]] = {}
  out = []
  for i, step in enumerate(steps, 1):
    parsed = parse_equation(step)
    if parsed is None:
      raise ValueError(f"code format: step {step!r} is not an equation 'a op b = c'")
    a, op, b, c = parsed
    operand = lambda v: unused[v].pop() if unused.get(v) else str(v)  # noqa: E731
    out.append((operand(a), op, operand(b)))
    unused.setdefault(c, []).append(f"x{i}")
  return out


def render(lines: list[tuple[str, str, str]]) -> str:
  """The program: one assignment per line, then print of the last variable."""
  body = [f"x{i} = {a} {_PYTHON_OPS[op]} {b}" for i, (a, op, b) in enumerate(lines, 1)]
  return "\n".join(body + [f"print(x{len(lines)})"])


def _values(lines: list[tuple[str, str, str]]) -> list[int] | None:
  """The value of each variable x1, x2, ... of `render(lines)`; None where it would raise."""
  values: list[int] = []
  for a, op, b in lines:
    x, y = (values[int(t[1:]) - 1] if t.startswith("x") else int(t) for t in (a, b))
    if op == "/" and y == 0:
      return None
    values.append(_APPLY[op](x, y))
  return values


def evaluate(lines: list[tuple[str, str, str]]) -> int | None:
  """What `render(lines)` prints, computed here (None where it would raise): the seed traces'
  outputs, with no program run."""
  values = _values(lines)
  return None if values is None else values[-1]


def equations(program: str) -> list[str] | None:
  """The steps `a op b = c` that a program in the seed form computes (the inverse of `render`
  with the values filled in); None for any other program."""
  lines = program.strip().splitlines()
  parsed = [_LINE.match(line) for line in lines[:-1]]
  if not parsed or not all(parsed) or lines[-1] != f"print(x{len(parsed)})":
    return None
  steps = [(a, {"//": "/"}.get(op, op), b) for _, a, op, b in (m.groups() for m in parsed)]
  if [int(m.group(1)) for m in parsed] != list(range(1, len(steps) + 1)) or any(
      t.startswith("x") and int(t[1:]) > i for i, (a, _, b) in enumerate(steps) for t in (a, b)):
    return None  # Variables out of order, or read before they are set.
  values = _values(steps)
  if values is None:
    return None
  value = lambda t: values[int(t[1:]) - 1] if t.startswith("x") else int(t)  # noqa: E731
  return [f"{value(a)} {op} {value(b)} = {c}" for (a, op, b), c in zip(steps, values)]


def corrupt(lines, rng: np.random.Generator) -> tuple[int, list[tuple[str, str, str]]] | None:
  """(line index, the program with that line's literal operand or operator changed) whose
  output differs from the original's; None if no such change exists."""
  right = evaluate(lines)
  for _ in range(20):
    k = int(rng.integers(len(lines)))
    a, op, b = lines[k]
    if rng.random() < 0.5 and not b.startswith("x"):
      b = str(max(1, int(b) + int(rng.choice([-2, -1, 1, 2]))))
    else:
      op = str(rng.choice([o for o in _PYTHON_OPS if o != op]))
    wrong = lines[:k] + [(a, op, b)] + lines[k + 1:]
    output = evaluate(wrong)
    if output is not None and output != right:
      return k, wrong
  return None


def call(tool: PythonTool, program: str, output) -> str:
  """One tool call as the trace shows it: the program and its output block."""
  return f"{tool.start}{program}\n{tool.end}{tool.output_block(str(output))}"


def trace(problem: Problem, tool: PythonTool, error_rate: float) -> str:
  """The seed trace of `problem` (see the module docstring); the draws are seeded by the
  question, so a problem always has the same trace."""
  lines = program_lines(parse_steps(problem.solution))
  rng = np.random.default_rng(zlib.crc32(problem.question.encode()))
  text = ""
  wrong = corrupt(lines, rng) if rng.random() < error_rate else None
  if wrong is not None:
    k, bad = wrong
    fix = render(lines).splitlines()[k]
    text += call(tool, render(bad), evaluate(bad)) + f"Check: line {k + 1} should be {fix}.\n"
  return (text + call(tool, render(lines), evaluate(lines)) + RIGHT + "\n"
          + f"{ANSWER_PREFIX} {problem.answer}")


@dataclasses.dataclass(frozen=True)
class WithCode(Task):
  """`base`'s problems, prompted for a program and solved by seed traces; graded by `base`."""

  base: Task
  error_rate: float = 0.3
  tool: PythonTool = PythonTool()

  def __post_init__(self):
    if not 0.0 <= self.error_rate <= 1.0:
      raise ValueError(f"config.task.code.error_rate={self.error_rate}: expected a fraction")

  @property
  def name(self) -> str:
    return f"{self.base.name}_code"

  @property
  def test_fraction(self) -> float:
    return self.base.test_fraction

  def _sample(self, rng: np.random.Generator) -> Problem:
    problem = self.base._sample(rng)
    return dataclasses.replace(problem, solution=trace(problem, self.tool, self.error_rate))

  def check_answer(self, problem: Problem, text: str) -> bool:
    """The base task's grading of the last program's steps (`equations`) and the `####` answer,
    or of the text itself when that program is not in the seed form: Countdown's checker then
    sees the moves the program made."""
    answer = parse_answer(text)
    if answer is None:
      return False
    at = text.rfind(self.tool.start)
    end = text.find(self.tool.end, at)
    steps = equations(text[at + len(self.tool.start):end]) if 0 <= at < end else None
    graded = text if steps is None else "\n".join(steps + [f"{ANSWER_PREFIX} {answer}"])
    return self.base.check_answer(problem, graded)

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    raise NotImplementedError(f"{self.name}: a trace's steps are program rounds, not steps "
                              "the base task grades")

  def prompt(self, problem: Problem) -> str:
    return self.base.prompt(problem) + INSTRUCTION


def with_code(task: Task, **knobs) -> WithCode:
  """`task` in the code format; knobs: error_rate and the `PythonTool` fields (timeout_s,
  memory_mb, max_calls, ...). Unknown knobs raise, naming the valid ones."""
  tool_fields = {f.name for f in dataclasses.fields(PythonTool)}
  unknown = sorted(set(knobs) - tool_fields - {"error_rate"})
  if unknown:
    raise ValueError(f"config.task.code has no field(s) {unknown}; valid: "
                     f"{sorted(tool_fields | {'error_rate'})}")
  tool = PythonTool(**{k: v for k, v in knobs.items() if k in tool_fields})
  return WithCode(task, error_rate=knobs.get("error_rate", 0.3), tool=tool)
