"""Templated GSM8K-style word problems with multi-step solutions.

    Mia has 12 marbles. She buys 3 bags with 5 marbles each. Then she gives away 7 marbles.
    How many marbles does Mia have now?
    3 * 5 = 15
    12 + 15 = 27
    27 - 7 = 20
    #### 20

A template fixes the computation (a small program over the quantities); the solution writes one
equation per intermediate value. Step i is correct iff its equation is true arithmetic, uses only
numbers from the question or earlier correct results, and produces an intermediate value of the
template's computation that no earlier step produced: the steps may come in any valid order.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from reasonjax.data.tasks.base import (Problem, StepCheck, Task, apply_op, equation_holds,
                                       parse_equation)

NAMES = ("Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom")
ITEMS = ("marbles", "stickers", "apples", "cards", "books", "coins", "shells", "pencils")


def _has_buys_gives(rng, v):
  """a + b * c - d."""
  a, b, c = v(5, 40), v(2, 6), v(2, 12)
  d = v(1, a + b * c - 1)
  steps = [(b, "*", c), (a, "+", b * c), (a + b * c, "-", d)]
  text = ("{name} has {a} {item}. {pronoun} buys {b} bags with {c} {item} each. Then "
          "{pronoun_l} gives away {d} {item}. How many {item} does {name} have now?")
  return dict(a=a, b=b, c=c, d=d), steps, text


def _shared_equally(rng, v):
  """(a * b + c) / d with an exact share."""
  d = v(2, 6)
  share = v(2, 15)
  a, b = v(2, 6), v(2, 8)
  c = share * d - a * b
  if c <= 0:
    return None
  steps = [(a, "*", b), (a * b, "+", c), (a * b + c, "/", d)]
  text = ("{name} packs {a} boxes of {b} {item} and finds {c} more {item}. {pronoun} shares "
          "all the {item} equally among {d} friends. How many {item} does each friend get?")
  return dict(a=a, b=b, c=c, d=d), steps, text


def _weekly_saving(rng, v):
  """(a - b) * c + d."""
  b = v(1, 20)
  a, c, d = v(b + 1, b + 30), v(2, 8), v(1, 50)
  steps = [(a, "-", b), (a - b, "*", c), ((a - b) * c, "+", d)]
  text = ("{name} earns {a} coins a week and spends {b} of them. After {c} weeks "
          "{pronoun_l} also gets a gift of {d} coins. How many coins has {name} saved?")
  return dict(a=a, b=b, c=c, d=d), steps, text


def _two_groups(rng, v):
  """a * b + c * d - e."""
  a, b, c, d = v(2, 9), v(2, 9), v(2, 9), v(2, 9)
  e = v(1, a * b + c * d - 1)
  steps = [(a, "*", b), (c, "*", d), (a * b, "+", c * d), (a * b + c * d, "-", e)]
  text = ("{name} has {a} red boxes with {b} {item} each and {c} blue boxes with {d} {item} "
          "each. {pronoun} loses {e} {item}. How many {item} are left?")
  return dict(a=a, b=b, c=c, d=d, e=e), steps, text


TEMPLATES = (_has_buys_gives, _shared_equally, _weekly_saving, _two_groups)


@dataclasses.dataclass(frozen=True)
class WordProblems(Task):
  """Knobs: which templates (by index into TEMPLATES) and a scale for the quantities."""

  templates: tuple[int, ...] = tuple(range(len(TEMPLATES)))
  scale: int = 1

  name = "word_problems"

  def __post_init__(self):
    if not self.templates or not set(self.templates) <= set(range(len(TEMPLATES))):
      raise ValueError(f"word_problems: templates must be indices in [0, {len(TEMPLATES)}), "
                       f"got {self.templates}")
    if self.scale < 1:
      raise ValueError(f"word_problems: scale must be >= 1, got {self.scale}")

  def _sample(self, rng: np.random.Generator) -> Problem:
    v = lambda lo, hi: int(rng.integers(lo * self.scale, hi * self.scale + 1))  # noqa: E731
    while True:
      template = TEMPLATES[self.templates[int(rng.integers(len(self.templates)))]]
      made = template(rng, v)
      if made is not None:
        break
    values, steps, text = made
    results = [apply_op(a, op, b) for a, op, b in steps]
    name = NAMES[int(rng.integers(len(NAMES)))]
    pronoun = "She" if name in ("Mia", "Ava", "Zoe", "Lena", "Sara") else "He"
    question = text.format(name=name, pronoun=pronoun, pronoun_l=pronoun.lower(),
                           item=ITEMS[int(rng.integers(len(ITEMS)))], **values)
    lines = [f"{a} {op} {b} = {c}" for (a, op, b), c in zip(steps, results)]
    return Problem(question=question, answer=str(results[-1]),
                   solution="\n".join(lines + [f"#### {results[-1]}"]),
                   data={"given": tuple(values.values()), "results": tuple(results)})

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    known = set(problem.data["given"])
    remaining = Counter(problem.data["results"])
    correct = []
    for step in steps:
      parsed = parse_equation(step)
      ok = (parsed is not None and equation_holds(*parsed) and parsed[0] in known
            and parsed[2] in known and remaining[parsed[3]] > 0)
      if ok:
        remaining[parsed[3]] -= 1
        known.add(parsed[3])
      correct.append(ok)
    return StepCheck(tuple(correct))
