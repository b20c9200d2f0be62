r"""Tasks read from local JSONL files: GSM8K and MATH (e.g. MATH-500), graded like the rewards.

    task = tasks.get_task("gsm8k", train_path="data/gsm8k/train.jsonl",
                          test_path="data/gsm8k/test.jsonl", template="chat",
                          tokenizer="path/to/Qwen2.5-0.5B-Instruct")
    problems = task.generate(200, seed=0, split="test")
    task.prompt(problems[0])           # the chat-formatted question and instruction
    task.check_answer(problems[0], completion)

Unlike the synthetic tasks, the splits are the files: `generate(num, seed, split)` returns the
first `num` rows of a seed-shuffled order of the split's file (all of them, with a warning, when
the file has fewer). Each file is read once per process (`datasets.load_jsonl`) and cached.

The prompt is the question, a line break and the task's `instruction` (which says where the final
answer goes). template="plain" ends it with a line break, the form the gold solutions are trained
on; template="chat" wraps it as a user turn (after an optional `system` turn) with the chat
template of the Hugging Face tokenizer folder `tokenizer` (configs tie that knob to
`config.tokenizer`), so every trainer that calls `task.prompt` sends a chat model the same text.

Grading: GSM8K compares the number `rewards.math.extract_gsm8k` finds ("#### N", "The answer is
N", else the last number) with the gold number; MATH compares the last `\boxed{...}` with
`rewards.math.is_equiv` (normalised strings, then math-verify). Real data has no per-step ground
truth: `check_steps` raises.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

import numpy as np
from absl import logging

from reasonjax.data import datasets
from reasonjax.data.tasks.base import SPLITS, Problem, StepCheck, Task

TEMPLATES = ("plain", "chat")
GSM8K_INSTRUCTION = ("Solve the problem step by step. End with a line '#### <answer>' that holds "
                     "only the final number.")
MATH_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."


@functools.lru_cache(maxsize=16)
def _read(path: str, mtime_ns: int, size: int, schema: str, on_error: str
          ) -> tuple[Problem, ...]:
  """The rows of one file version (mtime and size in the key: an edited file is read again)."""
  del mtime_ns, size
  return tuple(datasets.load_jsonl(path, datasets.ROW_PARSERS[schema], on_error=on_error)[0])


@functools.lru_cache(maxsize=4)
def _chat_tokenizer(path: str):
  from reasonjax.data import tokenizers  # Local: tokenizers imports the tasks package.
  return tokenizers.load(path)


@dataclasses.dataclass(frozen=True)
class JsonlTask(Task):
  """A task over rows of JSONL files; subclasses set `name` (a `datasets.ROW_PARSERS` schema)
  and `check_answer`.

  Knobs:
    train_path, test_path: the JSONL file of each split ("" for a split the data lacks).
    template: "plain" or "chat" (see the module docstring).
    instruction: appended to the question ("" for none).
    system: the chat template's system turn ("" for the template's default).
    tokenizer: the Hugging Face folder whose chat template formats template="chat" prompts.
    on_error: "raise" on a broken row (naming file and line), or "skip" it with a warning.
  """

  train_path: str = ""
  test_path: str = ""
  template: str = "plain"
  instruction: str = ""
  system: str = ""
  tokenizer: str = ""
  on_error: str = "raise"

  def __post_init__(self):
    if self.template not in TEMPLATES:
      raise ValueError(f"task {self.name!r}: template={self.template!r}; expected one of "
                       f"{TEMPLATES}")
    if self.on_error not in datasets.ON_ERROR:
      raise ValueError(f"task {self.name!r}: on_error={self.on_error!r}; expected one of "
                       f"{datasets.ON_ERROR}")
    if self.template == "chat" and not self.tokenizer:
      raise ValueError(f"task {self.name!r}: template='chat' needs the knob `tokenizer` (a "
                       "Hugging Face folder with a chat template; configs tie it to "
                       "config.tokenizer)")
    for knob in ("train_path", "test_path"):
      path = getattr(self, knob)
      if path and not os.path.isfile(path):
        raise FileNotFoundError(f"task {self.name!r}: {knob}={path!r} is not a file")

  def problems(self, split: str) -> tuple[Problem, ...]:
    """Every row of `split`'s file, in file order (read once, then cached)."""
    if split not in SPLITS:
      raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    knob = f"{split}_path"
    path = getattr(self, knob)
    if not path:
      raise ValueError(f"task {self.name!r} has no {split} data: set the knob {knob} (a JSONL "
                       f"file; in a config, --config.task.knobs.{knob}=...)")
    stat = os.stat(path)
    return _read(os.path.abspath(path), stat.st_mtime_ns, stat.st_size, self.name, self.on_error)

  def generate(self, num: int, *, seed: int = 0, split: str = "train") -> list[Problem]:
    """The first `num` problems of a `seed`-shuffled order of `split`'s rows; all of them, with
    a warning, if the file has fewer. The same for the same (seed, split, file)."""
    return list(self.iterate(seed=seed, split=split, limit=num))

  def iterate(self, *, seed: int = 0, split: str = "train", limit: int | None = None
              ) -> Iterator[Problem]:
    rows = self.problems(split)
    if limit is not None and limit > len(rows):
      logging.warning("task %s: %d %s problems asked for, %s has %d; using all of them",
                      self.name, limit, split, getattr(self, f"{split}_path"), len(rows))
    order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(rows))
    for i in order[:limit]:
      yield rows[i]

  def prompt(self, problem: Problem) -> str:
    content = problem.question + (f"\n{self.instruction}" if self.instruction else "")
    if self.template == "plain":
      return content + "\n"
    messages = [{"role": "system", "content": self.system}] if self.system else []
    return _chat_tokenizer(self.tokenizer).apply_chat_template(
        messages + [{"role": "user", "content": content}])

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    raise NotImplementedError(f"task {self.name!r} has no per-step ground truth (its data labels "
                              "final answers only); step labels need a synthetic task or a "
                              "process reward model")


@dataclasses.dataclass(frozen=True)
class Gsm8k(JsonlTask):
  """GSM8K rows {question, answer ending in '#### N'} (`datasets.load_gsm8k`)."""

  name = "gsm8k"
  instruction: str = GSM8K_INSTRUCTION

  def check_answer(self, problem: Problem, text: str) -> bool:
    """The number of `text` equals the gold number: GRPO's grader (`scoring.Gsm8kVerifier`), so
    evaluation and reward agree."""
    from reasonjax.rewards import scoring  # Local: scoring imports the tasks package.
    return scoring.Gsm8kVerifier().check(problem, text)


@dataclasses.dataclass(frozen=True)
class Math(JsonlTask):
  """MATH / MATH-500 rows {problem, solution, answer, ...} (`datasets.load_math`); MATH-500 has
  a test split only."""

  name = "math"
  instruction: str = MATH_INSTRUCTION

  def check_answer(self, problem: Problem, text: str) -> bool:
    """The last `\\boxed{...}` of `text` is equivalent to the gold answer (math-verify): GRPO's
    grader (`scoring.MathVerifier`), so evaluation and reward agree."""
    from reasonjax.rewards import scoring  # Local: scoring imports the tasks package.
    return scoring.MathVerifier().check(problem, text)
