"""Reward functions, combined with config weights, scored in a process pool.

    scorer = scoring.Scorer(scoring.TaskVerifier(task), {"correctness": 1.0, "format": 0.1})
    rewards, metrics = scorer(problems, completions, group_size=8)

Per completion: `correctness` (1 if the verifier accepts the answer), `format` (1 if the text
ends with exactly one answer line in the verifier's format), `brevity` (1 - chars / max_chars,
clipped to [0, 1]). Per group of `group_size` samples of one problem: `self_consistency` (1 if
the completion's answer is the group's majority answer: a pseudo-label when the gold answer is
unknown, as in test-time RL). The reward is the weighted sum.

Grading runs in worker processes (spawned: forking a process that holds JAX is unsafe). An
exception or a timeout in a reward function scores that completion 0 and is counted in the
metrics; it never stops training. A worker stuck beyond the safety margin is replaced.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import signal
from collections.abc import Mapping, Sequence

import numpy as np

from reasonjax.data.tasks.base import ANSWER_PREFIX, Problem, Task, parse_answer
from reasonjax.rewards import math as rmath

REWARDS = ("correctness", "format", "brevity", "self_consistency")


def ends_with_answer_line(text: str) -> bool:
  """Exactly one `####` answer line, and it is the last line."""
  return text.count(ANSWER_PREFIX) == 1 and text.strip().split("\n")[-1].startswith(ANSWER_PREFIX)


@dataclasses.dataclass(frozen=True)
class TaskVerifier:
  """Synthetic tasks: the task's own checker; answers after `####`."""

  task: Task

  def extract(self, text: str) -> str | None:
    return parse_answer(text)

  def check(self, problem: Problem, text: str) -> bool:
    return self.task.check_answer(problem, text)

  def well_formed(self, text: str) -> bool:
    return ends_with_answer_line(text)


@dataclasses.dataclass(frozen=True)
class Gsm8kVerifier:
  """GSM8K-style answers (`#### N`, 'The answer is N', ...), compared as numbers."""

  timeout_s: float = 2.0

  def extract(self, text: str) -> str | None:
    return rmath.extract_gsm8k(text)

  def check(self, problem: Problem, text: str) -> bool:
    return rmath.is_equiv(self.extract(text), problem.answer, timeout_s=self.timeout_s)

  def well_formed(self, text: str) -> bool:
    return ends_with_answer_line(text)


@dataclasses.dataclass(frozen=True)
class MathVerifier(Gsm8kVerifier):
  """MATH answers in the last `\\boxed{...}`, compared with math-verify."""

  timeout_s: float = 5.0

  def extract(self, text: str) -> str | None:
    return rmath.extract_boxed(text)

  def well_formed(self, text: str) -> bool:
    return self.extract(text) is not None


class _Timeout(BaseException):
  """Not an Exception: a reward function's `except Exception` must not swallow the limit."""


def _alarm(signum, frame):
  raise _Timeout()


def _own_process_group():
  """In grading workers: Ctrl-C in a terminal and `timeout` signal the whole process group. A
  worker killed mid-task would leave the trainer waiting for its results while it saves its
  checkpoint, so workers leave the group; the trainer ends them itself (`Scorer.close`). A worker
  still starting up holds no task: if a signal kills it, the pool starts another."""
  os.setpgrp()
  # `close` ends workers with SIGTERM, even when the trainer ignored it when the pool started.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _grade(args) -> tuple[dict[str, float], str | None, str | None]:
  """(per-completion rewards, extracted answer, failure kind) for one completion, in a worker."""
  verifier, problem, text, max_chars, timeout_s = args
  signal.signal(signal.SIGALRM, _alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    values = {"correctness": float(verifier.check(problem, text)),
              "format": float(verifier.well_formed(text)),
              "brevity": float(np.clip(1.0 - len(text) / max_chars, 0.0, 1.0))}
    return values, verifier.extract(text), None
  except _Timeout:
    return {}, None, "timeout"
  except Exception:  # noqa: BLE001 -- any bug in a reward function scores 0, never crashes.
    return {}, None, "error"
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)


def majority_rewards(answers: Sequence[str | None], group_size: int) -> np.ndarray:
  """1 where a completion's answer is its group's most common (non-None) answer. [N] float32.

  Ties go to the answer seen first, so the result does not depend on dict ordering.
  """
  if len(answers) % group_size:
    raise ValueError(f"{len(answers)} completions do not split into groups of {group_size}")
  out = np.zeros(len(answers), np.float32)
  for start in range(0, len(answers), group_size):
    group = answers[start:start + group_size]
    counts = collections.Counter(a for a in group if a is not None)
    if counts:
      top = max(counts.values())
      majority = next(a for a in group if a is not None and counts[a] == top)
      out[start:start + group_size] = [a == majority for a in group]
  return out


class Scorer:
  """Weighted rewards for batches of completions; see the module docstring.

  Args:
    verifier: TaskVerifier, Gsm8kVerifier or MathVerifier (picklable).
    weights: {reward name: weight}; names from REWARDS.
    num_workers: grading processes (0: grade in this process, e.g. in tests or notebooks).
    timeout_s: limit per completion.
    max_chars: length at which `brevity` reaches 0.
  """

  def __init__(self, verifier, weights: Mapping[str, float], *, num_workers: int = 2,
               timeout_s: float = 5.0, max_chars: int = 2000):
    self._pool = None
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
      raise ValueError(f"unknown reward(s) {unknown}; valid rewards: {list(REWARDS)}")
    self.verifier, self.weights = verifier, dict(weights)
    self.num_workers, self.timeout_s, self.max_chars = num_workers, timeout_s, max_chars

  def _map(self, items: list) -> list:
    if self.num_workers == 0:
      return [_grade(item) for item in items]
    if self._pool is None:
      self._pool = multiprocessing.get_context("spawn").Pool(self.num_workers,
                                                             initializer=_own_process_group)
    pending = self._pool.map_async(_grade, items, chunksize=max(1, len(items) // (
        4 * self.num_workers)))
    # Alarms stop slow Python code in the workers; this margin catches code that ignores them.
    margin = 30.0 + self.timeout_s * len(items) / self.num_workers
    try:
      return pending.get(timeout=margin)
    except multiprocessing.TimeoutError:
      self.close()
      return [({}, None, "timeout")] * len(items)

  def __call__(self, problems: Sequence[Problem], completions: Sequence[str], *,
               group_size: int = 1) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards float32 [N] and metrics (mean of each component, failure counts).

    `problems[i]` is the problem of `completions[i]`; groups are consecutive runs of
    `group_size` completions of the same problem.
    """
    if len(problems) != len(completions):
      raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    graded = self._map([(self.verifier, p, c, self.max_chars, self.timeout_s)
                        for p, c in zip(problems, completions)])
    components = {name: np.asarray([g[0].get(name, 0.0) for g in graded], np.float32)
                  for name in ("correctness", "format", "brevity")}
    components["self_consistency"] = majority_rewards([g[1] for g in graded], group_size)
    rewards = sum(w * components[name] for name, w in self.weights.items())
    rewards = np.asarray(rewards, np.float32) * np.ones(len(completions), np.float32)
    failures = collections.Counter(g[2] for g in graded if g[2])
    metrics = {f"reward/{name}": float(v.mean()) for name, v in components.items()}
    metrics |= {"reward/total": float(rewards.mean()),
                "reward/timeouts": failures["timeout"], "reward/errors": failures["error"]}
    return rewards, metrics

  def close(self):
    if self._pool is not None:
      self._pool.terminate()
      self._pool = None

  def __del__(self):
    self.close()
