"""Countdown: reach a target from given numbers with + - * /, each number used at most once.

    Using the numbers 3, 7, 25, 50, reach 125 with + - * /. Use each number at most once.
    25 - 3 = 22
    ...
    #### 125

Each step combines two numbers still available (given, or results of earlier steps) into a new
one; intermediate results must be positive integers. Many solutions exist, so search matters.
Step i is correct iff it is a valid move AND the target is still reachable from the numbers it
leaves: a legal move into a dead end is the step where the solution went wrong.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter

import numpy as np

from reasonjax.data.tasks.base import (Problem, StepCheck, Task, apply_op, parse_answer,
                                       parse_equation)

_OPS = "+-*/"


@functools.lru_cache(maxsize=200_000)
def reachable(pool: tuple[int, ...], target: int) -> bool:
  """Can `target` be made from the sorted multiset `pool` (each number at most once)?"""
  if target in pool:
    return True
  for i in range(len(pool)):
    for j in range(len(pool)):
      if i == j:
        continue
      for op in _OPS:
        result = apply_op(pool[i], op, pool[j])
        if result is None or result <= 0:
          continue
        rest = [p for k, p in enumerate(pool) if k not in (i, j)] + [result]
        if reachable(tuple(sorted(rest)), target):
          return True
  return False


def _move(pool: Counter, step: str) -> int | None:
  """Applies step 'a op b = c' to `pool` in place; None (pool unchanged) if not a valid move."""
  parsed = parse_equation(step)
  if parsed is None:
    return None
  a, op, b, c = parsed
  need = Counter([a, b])
  if any(pool[n] < k for n, k in need.items()) or apply_op(a, op, b) != c or c <= 0:
    return None
  pool.subtract(need)
  pool[c] += 1
  return c


@dataclasses.dataclass(frozen=True)
class Countdown(Task):
  """Knobs: how many numbers, their range, and the target range."""

  num_numbers: int = 4
  max_number: int = 50
  min_target: int = 10
  max_target: int = 500

  name = "countdown"

  def __post_init__(self):
    if not 2 <= self.num_numbers <= 6:
      raise ValueError(f"countdown: num_numbers must be in [2, 6], got {self.num_numbers}")
    if not 1 <= self.min_target <= self.max_target:
      raise ValueError(f"countdown: need 1 <= min_target <= max_target, got {self}")

  def _sample(self, rng: np.random.Generator) -> Problem:
    while True:
      numbers = [int(x) for x in rng.integers(1, self.max_number + 1, self.num_numbers)]
      pool, lines = list(numbers), []
      # A random sequence of moves over all the numbers gives a target and a gold solution.
      while len(pool) > 1:
        i, j = rng.choice(len(pool), 2, replace=False)
        op = _OPS[int(rng.integers(4))]
        result = apply_op(pool[i], op, pool[j])
        if result is None or result <= 0:
          continue
        lines.append(f"{pool[i]} {op} {pool[j]} = {result}")
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [result]
      target = pool[0]
      if self.min_target <= target <= self.max_target and target not in numbers:
        break
    listed = ", ".join(str(n) for n in sorted(numbers))
    question = (f"Using the numbers {listed}, reach {target} with + - * /. "
                "Use each number at most once.")
    return Problem(question=question, answer=str(target),
                   solution="\n".join(lines + [f"#### {target}"]),
                   data={"numbers": tuple(sorted(numbers)), "target": target})

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    pool, target, correct = Counter(problem.data["numbers"]), problem.data["target"], []
    for step in steps:
      valid = _move(pool, step) is not None
      alive = reachable(tuple(sorted(pool.elements())), target)
      correct.append(valid and alive)
    return StepCheck(tuple(correct))

  def check_answer(self, problem: Problem, text: str) -> bool:
    """Every step a valid move, and the last one produces the target (stated after ####)."""
    steps = self.parse_steps(text)
    pool, last = Counter(problem.data["numbers"]), None
    for step in steps:
      last = _move(pool, step)
      if last is None:
        return False
    return last == problem.data["target"] and parse_answer(text) == problem.answer
