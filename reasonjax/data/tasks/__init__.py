"""Synthetic step-structured tasks with per-step ground truth, picked by name."""

import dataclasses
from typing import Any

from reasonjax.data.tasks.arithmetic import ArithmeticChains
from reasonjax.data.tasks.base import (ANSWER_PREFIX, Problem, StepCheck, Task, parse_answer,
                                       parse_steps, split_of)
from reasonjax.data.tasks.countdown import Countdown
from reasonjax.data.tasks.word_problems import WordProblems

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticChains,
    "countdown": Countdown,
    "word_problems": WordProblems,
}


def get_task(name: str, **knobs: Any) -> Task:
  """The task `name` with difficulty `knobs`; unknown names or knobs list the valid ones."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
  cls = TASKS[name]
  valid = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(knobs) - valid)
  if unknown:
    raise ValueError(f"task {name!r} has no knob(s) {unknown}; valid knobs: {sorted(valid)}")
  return cls(**knobs)


__all__ = [
    "ANSWER_PREFIX", "TASKS", "ArithmeticChains", "Countdown", "Problem", "StepCheck", "Task",
    "WordProblems", "get_task", "parse_answer", "parse_steps", "split_of",
]
