"""Arithmetic chains: a start value and a list of operations, one solution step per operation.

    Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?
    7 + 5 = 12
    12 * 3 = 36
    36 - 4 = 32
    #### 32

Step i is correct iff it is the equation `v_{i-1} op_i x_i = v_i` with the true running values:
a slip in the arithmetic, a wrong operand or a skipped operation makes that step wrong, and so is
every later step built on a wrong value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reasonjax.data.tasks.base import Problem, StepCheck, Task, apply_op, parse_equation

_WORDS = {"+": "Add {x}.", "-": "Subtract {x}.", "*": "Multiply by {x}.", "/": "Divide by {x}."}


@dataclasses.dataclass(frozen=True)
class ArithmeticChains(Task):
  """Knobs: number of operations, operand size, which operators, the largest running value."""

  min_steps: int = 2
  max_steps: int = 4
  max_operand: int = 20
  max_value: int = 999
  ops: str = "+-*/"

  name = "arithmetic"

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"arithmetic: need 1 <= min_steps <= max_steps, got {self}")
    if self.max_operand < 2 or not set(self.ops) <= set(_WORDS) or not self.ops:
      raise ValueError(f"arithmetic: max_operand >= 2 and ops within '+-*/' needed, got {self}")

  def _sample(self, rng: np.random.Generator) -> Problem:
    value = int(rng.integers(1, self.max_operand + 1))
    start, operations, lines = value, [], []
    for _ in range(int(rng.integers(self.min_steps, self.max_steps + 1))):
      while True:  # Keep running values in [0, max_value] and divisions exact.
        op = self.ops[int(rng.integers(len(self.ops)))]
        x = int(rng.integers(2 if op in "*/" else 1, self.max_operand + 1))
        result = apply_op(value, op, x)
        if result is not None and 0 <= result <= self.max_value:
          break
      operations.append((op, x))
      lines.append(f"{value} {op} {x} = {result}")
      value = result
    question = " ".join([f"Start with {start}."] + [_WORDS[op].format(x=x)
                                                    for op, x in operations]
                        + ["What is the result?"])
    return Problem(question=question, answer=str(value),
                   solution="\n".join(lines + [f"#### {value}"]),
                   data={"start": start, "operations": tuple(operations)})

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    value, correct = problem.data["start"], []
    operations = problem.data["operations"]
    for i, step in enumerate(steps):
      parsed = parse_equation(step)
      if i >= len(operations) or parsed is None:
        correct.append(False)
        continue
      op, x = operations[i]
      expected = apply_op(value, op, x)
      correct.append(parsed == (value, op, x, expected))
      value = expected
    return StepCheck(tuple(correct))
