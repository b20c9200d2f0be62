"""What every task shares: problems, step parsing, deterministic disjoint splits.

A task generates `Problem`s whose gold solution is one reasoning step per line, ending with the
answer line `#### <answer>`. Besides grading the final answer (`check_answer`), a task grades each
step (`check_steps`): the ground truth that process reward models are trained and evaluated on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

ANSWER_PREFIX = "####"
SPLITS = ("train", "test")
# "a op b = c" with integers; '*' and '/' in ASCII.
EQUATION = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem. `data` holds what the task's checker needs (numbers, operations)."""

  question: str
  answer: str
  solution: str
  data: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

  def hinted(self, hint: str) -> Problem:
    """The problem with `hint` (its {answer} filled in) after the question: STaR's
    rationalisation and Guide-GRPO's guidance."""
    return dataclasses.replace(self, question=self.question + hint.format(answer=self.answer))


@dataclasses.dataclass(frozen=True)
class StepCheck:
  """Per-step ground truth: `correct[i]` for step i, and the index of the first wrong step."""

  correct: tuple[bool, ...]

  @property
  def first_error(self) -> int | None:
    return next((i for i, ok in enumerate(self.correct) if not ok), None)

  @property
  def all_correct(self) -> bool:
    return all(self.correct)


def split_of(question: str, test_fraction: float) -> str:
  """'test' or 'train', from a stable hash of the question: the splits never share a problem."""
  digest = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
  return "test" if digest % 10_000 < test_fraction * 10_000 else "train"


def parse_steps(text: str, delimiter: str = "\n") -> list[str]:
  """The reasoning steps of a solution: non-empty chunks before the `####` answer line."""
  steps = []
  for chunk in text.split(delimiter):
    chunk = chunk.strip()
    if chunk.startswith(ANSWER_PREFIX):
      break
    if chunk:
      steps.append(chunk)
  return steps


def parse_answer(text: str) -> str | None:
  """The text after the last `####`, up to the end of its line; None without one. The last:
  a completion that lists several answers is judged by its final word."""
  found = re.findall(re.escape(ANSWER_PREFIX) + r"\s*([^\n]*)", text)
  return found[-1].strip() if found else None


def ends_with_answer_line(text: str) -> bool:
  """Exactly one `####` answer line, and it is the last line."""
  return text.count(ANSWER_PREFIX) == 1 and text.strip().split("\n")[-1].startswith(ANSWER_PREFIX)


def parse_equation(step: str) -> tuple[int, str, int, int] | None:
  """'12 * 3 = 36' -> (12, '*', 3, 36); None if the step is not such an equation."""
  match = EQUATION.match(step)
  if not match:
    return None
  a, op, b, c = match.groups()
  return int(a), op, int(b), int(c)


def apply_op(a: int, op: str, b: int) -> int | None:
  """Exact integer arithmetic; None for a division that is not exact (or by zero)."""
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  if b == 0 or a % b:
    return None
  return a // b


def equation_holds(a: int, op: str, b: int, c: int) -> bool:
  return apply_op(a, op, b) == c


class Task:
  """Base class: a subclass implements `_sample(rng)`, `check_steps` and `check_answer`.

  Subclasses are frozen dataclasses whose fields are the difficulty knobs.
  """

  name = "task"
  test_fraction = 0.2
  # A `sampling.tools.PythonTool` the policy calls while it solves (the code format), or None.
  tool = None

  def _sample(self, rng: np.random.Generator) -> Problem:
    raise NotImplementedError

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    raise NotImplementedError

  def check_answer(self, problem: Problem, text: str) -> bool:
    """The `####` answer of `text` equals the problem's answer."""
    answer = parse_answer(text)
    return answer is not None and answer.replace(",", "") == problem.answer

  def well_formed(self, text: str) -> bool:
    """Whether `text` is in the task's answer format (the `format` reward)."""
    return ends_with_answer_line(text)

  def generate(self, num: int, *, seed: int = 0, split: str = "train") -> list[Problem]:
    """`num` distinct problems of `split`, the same for the same (seed, split, knobs)."""
    return list(self.iterate(seed=seed, split=split, limit=num))

  def iterate(self, *, seed: int = 0, split: str = "train", limit: int | None = None
              ) -> Iterator[Problem]:
    """Distinct problems of `split`, in a deterministic order."""
    if split not in SPLITS:
      raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    seen, misses = set(), 0
    while limit is None or len(seen) < limit:
      problem = self._sample(rng)
      if problem.question in seen or split_of(problem.question, self.test_fraction) != split:
        misses += 1
        if misses > 100_000:
          raise ValueError(f"{self.name}: ran out of distinct {split} problems after "
                           f"{len(seen)}; widen the difficulty knobs ({self})")
        continue
      misses = 0
      seen.add(problem.question)
      yield problem

  def prompt(self, problem: Problem) -> str:
    """The model's input; the gold completion is `problem.solution`."""
    return problem.question + "\n"

  def parse_steps(self, text: str) -> list[str]:
    return parse_steps(text)
