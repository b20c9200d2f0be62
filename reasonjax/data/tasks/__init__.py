"""Tasks picked by name: synthetic step-structured tasks with per-step ground truth (`TASKS`),
and GSM8K / MATH read from local JSONL files (`DATA_TASKS`, `tasks.jsonl`); `with_code` puts a
task in the format of programs run by a tool (`tasks.code`), `with_format` in a structured
reasoning format (`tasks.structured`: Satori's meta-actions, ReFIne's tagged sections)."""

import dataclasses
from typing import Any

from reasonjax.data.tasks.arithmetic import ArithmeticChains
from reasonjax.data.tasks.code import WithCode, with_code
from reasonjax.data.tasks.base import (ANSWER_PREFIX, Problem, StepCheck, Task, parse_answer,
                                       parse_steps, split_of)
from reasonjax.data.tasks.countdown import Countdown
from reasonjax.data.tasks.jsonl import Gsm8k, JsonlTask, Math
from reasonjax.data.tasks.structured import WithFormat, with_format
from reasonjax.data.tasks.word_problems import WordProblems

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticChains,
    "countdown": Countdown,
    "word_problems": WordProblems,
}
# Separate from TASKS: these need data files, so code that generates every synthetic task with
# its default knobs (the shipped tokenizer, the TFDS builders) iterates TASKS only.
DATA_TASKS: dict[str, type[Task]] = {
    "gsm8k": Gsm8k,
    "math": Math,
}


def get_task(name: str, **knobs: Any) -> Task:
  """The task `name` (in TASKS or DATA_TASKS) with `knobs`; unknown names or knobs list the
  valid ones."""
  every = TASKS | DATA_TASKS
  if name not in every:
    raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(every)}")
  cls = every[name]
  valid = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(knobs) - valid)
  if unknown:
    raise ValueError(f"task {name!r} has no knob(s) {unknown}; valid knobs: {sorted(valid)}")
  return cls(**knobs)


__all__ = [
    "ANSWER_PREFIX", "DATA_TASKS", "TASKS", "ArithmeticChains", "Countdown", "Gsm8k",
    "JsonlTask", "Math", "Problem", "StepCheck", "Task", "WithCode", "WithFormat", "WordProblems",
    "get_task", "parse_answer", "parse_steps", "split_of", "with_code", "with_format",
]
