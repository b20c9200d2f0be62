"""Reward functions, combined with config weights, scored in worker processes.

    scorer = scoring.Scorer(scoring.make_verifier("task", task), {"correctness": 1, "format": 0.1})
    rewards, metrics = scorer(problems, completions, group_size=8)

Per completion: `correctness` (1 if the verifier accepts the answer), `format` (1 if the text
is in the verifier's format: for tasks, `Task.well_formed`, by default one answer line, the
last), `brevity` (1 - chars / max_chars, clipped to [0, 1]), `calibration` (ReFIne's confidence
reward, 1 - (c - correct)^2 for the text's stated "Confidence: k/10" c = k / 10; 0 without
one). Per group of `group_size` samples of one problem: `self_consistency` (1 if the
completion's answer is the group's majority answer: a pseudo-label when the gold answer is
unknown, as in test-time RL), `answer_frequency` (the fraction of the group that gives the same
answer: EMPO's semantic-entropy reward, answers as the meaning clusters) and `group_length` (Kimi
k1.5's length reward, `group_length_rewards`). The reward is the weighted sum.

A failing reward function scores its completion 0, is counted in the metrics, and never stops
training or costs another completion its score:
- an exception (any BaseException: also `sys.exit()`; `KeyboardInterrupt` in workers) is an error;
- past `timeout_s` a SIGALRM raises `_Timeout` in it; one that swallows that is interrupted again
  every 0.1 s, and also at its next line (a trace function), until it gives up: a timeout;
- in workers, one that blocks the alarm (a long call into C, SIG_IGN) is killed with its worker
  at `timeout_s + 1` s: a timeout; a worker that dies (`os._exit`, a signal) loses only the item
  it held: an error. Either way a new worker takes its place.

Workers are spawned processes (forking a process that holds JAX is unsafe), started on first use
and reused across calls. Each gets a chunk of completions through its own pipe and answers them one
by one, so the scorer knows which one each is grading and since when: a dead or killed worker costs
only that one (the rest of its chunk goes to another worker), and the stall a bad reward can cause
is one per-item limit, whatever the batch size. Spawned workers re-import the main module: scripts
need `if __name__ == "__main__":` (a worker that fails to start up raises ScorerError saying so).

`num_workers=0` grades in this process (tests, notebooks), with two limits: a reward stuck in one
call into C cannot be interrupted, and off the main thread there is no alarm at all (signals are
main-thread only), so there is no time limit. A `KeyboardInterrupt` propagates: in-process a
reward's cannot be told from the user's Ctrl-C.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from reasonjax.data.tasks.base import Problem, Task, ends_with_answer_line, parse_answer
from reasonjax.data.tasks.structured import parse_confidence
from reasonjax.rewards import math as rmath

REWARDS = ("correctness", "format", "brevity", "calibration", "self_consistency",
           "answer_frequency", "group_length")


@dataclasses.dataclass(frozen=True)
class TaskVerifier:
  """Synthetic tasks: the task's own checker; answers after `####`."""

  task: Task

  def extract(self, text: str) -> str | None:
    return parse_answer(text)

  def check(self, problem: Problem, text: str) -> bool:
    return self.task.check_answer(problem, text)

  def well_formed(self, text: str) -> bool:
    return self.task.well_formed(text)


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


# Picked by name in configs (`make_verifier`).
VERIFIERS = {"task": TaskVerifier, "gsm8k": Gsm8kVerifier, "math": MathVerifier}


def make_verifier(name: str, task: Task):
  """The verifier named `name` (a key of VERIFIERS).

  A TaskVerifier checks with the task's own checker; the GSM8K and MATH verifiers compare with
  each problem's gold answer and ignore `task`.
  """
  if name not in VERIFIERS:
    raise ValueError(f"unknown verifier {name!r}; valid verifiers: {sorted(VERIFIERS)}")
  cls = VERIFIERS[name]
  return cls(task) if issubclass(cls, TaskVerifier) else cls()


class ScorerError(RuntimeError):
  """Grading workers cannot run at all (e.g. they fail to start up)."""


# ----------------------------------------------------------------------------- time limit

_REPEAT_S = 0.1  # past the limit, the alarm fires again this often until the reward gives up


class _Timeout(BaseException):
  """Not an Exception: a reward function's `except Exception` must not swallow the limit."""


class _Alarm:
  """SIGALRM handler for one graded completion: raises _Timeout in the reward while `armed`.

  A reward that catches it (`except BaseException: pass` in a loop) gets it again at each repeat
  of the timer, and a trace function on its frames raises it at its next line too: raised inside
  an `except` clause, it escapes that clause, so the reward unwinds one `try` per attempt.
  """

  def __init__(self, guard):
    self.guard = guard  # the frame that called the reward: tracing stops there
    self.armed, self.traced = True, False

  def __call__(self, signum, frame):
    del signum
    if not self.armed:
      return
    while frame is not None and frame is not self.guard:
      frame.f_trace = self._trace
      frame = frame.f_back
    self.traced = True
    sys.settrace(self._trace)
    raise _Timeout()

  def _trace(self, frame, event, arg):
    del arg
    if not self.armed or frame.f_code is _Alarm.__call__.__code__:
      return None  # the next alarm's handler must run to its end, to trace again
    if event == "line":
      raise _Timeout()  # this also unsets the trace function; the next alarm sets it again
    return self._trace


def _limited(fn: Callable[[], tuple], timeout_s: float) -> tuple:
  """fn() with `_Timeout` raised in it past `timeout_s` (main thread only; elsewhere no limit).

  The timer is always disarmed and the previous SIGALRM handler, timer and trace function put
  back, even when the alarm lands during this clean-up.
  """
  if threading.current_thread() is not threading.main_thread():
    return fn()  # signals reach only the main thread; see the module docstring
  alarm = _Alarm(sys._getframe())  # noqa: SLF001
  # Read before the try: an alarm between installing and assigning would lose them.
  old_handler, old_trace = signal.getsignal(signal.SIGALRM), sys.gettrace()
  old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
  start = time.monotonic()
  try:
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s, _REPEAT_S)
    return fn()
  finally:
    # First, and with no call in between (calls are where signals are handled): from here on
    # the handler and the tracer do nothing.
    alarm.armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    if alarm.traced:
      sys.settrace(old_trace)
    # None: a handler installed outside Python, which cannot be put back; the default is closest.
    signal.signal(signal.SIGALRM, signal.SIG_DFL if old_handler is None else old_handler)
    if old_delay > 0:  # someone else's timer was pending (e.g. an outer limit): re-arm what is left
      left = max(old_delay - (time.monotonic() - start), 1e-3)
      signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _grade(args, *, in_process: bool = False) -> tuple[dict[str, float], str | None, str | None]:
  """(per-completion rewards, extracted answer, failure kind: None, "timeout" or "error")."""
  verifier, problem, text, max_chars, timeout_s = args

  def score():
    correct = float(verifier.check(problem, text))
    confidence = parse_confidence(text)
    values = {"correctness": correct, "format": float(verifier.well_formed(text)),
              "brevity": float(np.clip(1.0 - len(text) / max_chars, 0.0, 1.0)),
              "calibration": 0.0 if confidence is None else 1.0 - (confidence - correct) ** 2}
    return values, verifier.extract(text), None

  try:
    return _limited(score, timeout_s)
  except _Timeout:
    return {}, None, "timeout"
  except KeyboardInterrupt:
    if in_process:  # the user's Ctrl-C or the reward's: no telling them apart here
      raise
    return {}, None, "error"
  except BaseException:  # noqa: BLE001 -- SystemExit, bugs, ...: score 0, never stop training.
    return {}, None, "error"


# ----------------------------------------------------------------------------- workers

_GRACE_S = 1.0  # past timeout_s, time for the alarm to act before the worker is killed
_START_TIMEOUT_S = 120.0  # a spawned worker imports the main module: allow for JAX and friends
_MAX_START_FAILURES = 3  # workers killed by signals in a row while starting up
_READY = "ready"


def _own_process_group():
  """In grading workers: Ctrl-C in a terminal and `timeout` signal the whole process group. A
  worker killed mid-task would leave the trainer waiting for its results while it saves its
  checkpoint, so workers leave the group; the trainer ends them itself (`Scorer.close`). A worker
  still starting up holds no task: if a signal kills it, the scorer starts another."""
  os.setpgrp()
  # `close` may end workers with a signal, even when the trainer ignored SIGTERM when they started.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_main(conn):
  """A grading worker: says it is ready, then grades lists of items, sending back each result as
  soon as it has it (so the scorer knows which item it is on), until EOF."""
  _own_process_group()
  conn.send(_READY)
  while True:
    try:
      items = conn.recv()
    except (EOFError, OSError):  # the scorer is gone
      return
    for item in items:
      result = _grade(item)
      try:
        conn.send(result)
      except (EOFError, OSError):
        return
      except Exception:  # noqa: BLE001 -- e.g. an extracted answer that does not pickle
        conn.send(({}, None, "error"))


class _Worker:
  """One spawned grading process and its pipe.

  `held`: indices of the items sent to it and not answered yet, in order; it grades the first,
  which must be answered by `deadline` (its start-up's before it is `ready`; inf when idle).
  """

  def __init__(self, ctx):
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_worker_main, args=(child,), name="reasonjax-scorer",
                            daemon=True)
    self.proc.start()
    child.close()  # so that the worker's death reads as EOF here
    self.ready, self.killed = False, False
    self.held: collections.deque[int] = collections.deque()
    self.deadline = time.monotonic() + _START_TIMEOUT_S

  def kill(self):
    """SIGKILLs the worker and whatever it started in its process group, reaps it and closes
    its pipe."""
    if self.killed:
      return
    self.killed = True
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)  # the worker leads its group once started up
    except (ProcessLookupError, PermissionError):
      pass
    self.proc.kill()
    self.proc.join(5.0)
    self.conn.close()


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


def answer_frequencies(answers: Sequence[str | None], group_size: int) -> np.ndarray:
  """[N] float32: the fraction of a completion's group with its answer (0 for no answer).

  Zhang et al. 2025 (EMPO) reward each output with the empirical probability of its meaning
  cluster; with group-normalised advantages this lowers the group's semantic entropy. Here the
  clusters are the extracted answers.
  """
  if len(answers) % group_size:
    raise ValueError(f"{len(answers)} completions do not split into groups of {group_size}")
  out = np.zeros(len(answers), np.float32)
  for start in range(0, len(answers), group_size):
    group = answers[start:start + group_size]
    counts = collections.Counter(group)
    out[start:start + group_size] = [counts[a] / group_size if a is not None else 0.0
                                     for a in group]
  return out


def group_length_rewards(lengths: Sequence[int], correct: Sequence[float],
                         group_size: int) -> np.ndarray:
  """[N] float32: Kimi k1.5's length reward in each group of `group_size`:
  lambda = 0.5 - (len - min_len) / (max_len - min_len) (0 where all lengths are equal), given
  as lambda to a right completion (correct > 0) and min(0, lambda) to a wrong one: shorter right
  answers gain, longer wrong ones lose."""
  lengths = np.asarray(lengths, np.float64)
  correct = np.asarray(correct, np.float64)
  if len(lengths) % group_size or len(correct) != len(lengths):
    raise ValueError(f"{len(lengths)} lengths and {len(correct)} grades do not split into "
                     f"groups of {group_size}")
  grouped = lengths.reshape(-1, group_size)
  low, high = grouped.min(1, keepdims=True), grouped.max(1, keepdims=True)
  lam = np.where(high > low, 0.5 - (grouped - low) / np.maximum(high - low, 1e-12), 0.0)
  lam = lam.reshape(-1)
  return np.where(correct > 0, lam, np.minimum(0.0, lam)).astype(np.float32)


def overlong_penalty(lengths, max_length: int, cache: int) -> np.ndarray:
  """[N] float32: DAPO's soft overlong punishment of a completion of `lengths` tokens, 0 up to
  max_length - cache, then falling linearly to -1 at max_length (and -1 beyond):
  ((max_length - cache) - len) / cache."""
  if not 0 < cache <= max_length:
    raise ValueError(f"overlong cache={cache}: expected 0 < cache <= max_length={max_length}")
  lengths = np.asarray(lengths, np.float64)
  return np.clip((max_length - cache - lengths) / cache, -1.0, 0.0).astype(np.float32)


class Scorer:
  """Weighted rewards for batches of completions; see the module docstring.

  Calls are not thread-safe, but `close` may come from another thread (the call then raises).

  Args:
    verifier: TaskVerifier, Gsm8kVerifier or MathVerifier (picklable); see `make_verifier`.
    weights: {reward name: weight}; names from REWARDS.
    num_workers: grading processes (0: grade in this process, e.g. in tests or notebooks).
    timeout_s: limit per completion.
    max_chars: length at which `brevity` reaches 0.
  """

  def __init__(self, verifier, weights: Mapping[str, float], *, num_workers: int = 2,
               timeout_s: float = 5.0, max_chars: int = 2000):
    self._workers: list[_Worker | None] = []
    self._generation = 0  # bumped by close(), so that a call in another thread notices
    self._start_failures = 0
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
      raise ValueError(f"unknown reward(s) {unknown}; valid rewards: {list(REWARDS)}")
    self.verifier, self.weights = verifier, dict(weights)
    self.num_workers, self.timeout_s, self.max_chars = num_workers, timeout_s, max_chars

  def _map(self, items: list) -> list:
    if self.num_workers == 0:
      return [_grade(item, in_process=True) for item in items]
    ctx = multiprocessing.get_context("spawn")
    if not self._workers:
      self._workers = [None] * self.num_workers
    workers, generation = self._workers, self._generation
    for k, w in enumerate(workers):
      if w is None:
        workers[k] = _Worker(ctx)
    results = [None] * len(items)
    todo = collections.deque(range(len(items)))
    try:
      while todo or any(w.held for w in workers):
        for w in workers:
          if w.ready and not w.held and todo:
            self._send(w, items, todo)
        # Each worker is now busy, starting, or idle with nothing left to do: each has a deadline.
        wait_s = min(w.deadline for w in workers) - time.monotonic()
        ready = set(multiprocessing.connection.wait(
            [w.conn for w in workers] + [w.proc.sentinel for w in workers],
            timeout=min(max(wait_s, 0.0), 1.0)))
        if self._generation != generation:
          raise ScorerError("Scorer.close() was called during this call")
        now = time.monotonic()
        for k, w in enumerate(workers):
          dead = w.proc.sentinel in ready  # then all it sent before dying is in the pipe
          if ((dead or w.conn in ready or now >= w.deadline)
              and not self._poll(w, dead, results, todo)):
            workers[k] = _Worker(ctx)  # ready for the rest of this call, or for the next
    except BaseException:
      # Interrupted (Ctrl-C, an item that does not pickle, close() from another thread): a
      # worker still holding items would answer the next call with this one's results.
      for k, w in enumerate(workers):
        if w is not None and w.held:
          w.kill()
          workers[k] = None
      raise
    return results

  def _send(self, w: _Worker, items: list, todo: collections.deque):
    """Sends an idle worker a chunk of items: one message per chunk, as a message costs a
    context switch (~0.1 ms); chunks shrink as the work runs out, to end together."""
    size = max(1, len(todo) // (4 * self.num_workers))
    w.held.extend(todo.popleft() for _ in range(size))
    w.deadline = time.monotonic() + self.timeout_s + _GRACE_S
    try:
      w.conn.send([items[i] for i in w.held])
    except OSError:  # it died while idle: nothing started; `_poll` replaces it
      todo.extendleft(reversed(w.held))
      w.held.clear()
      w.deadline = float("inf")

  def _poll(self, w: _Worker, dead: bool, results: list, todo: collections.deque) -> bool:
    """Reads w's messages and enforces its deadline; False once w is gone (dead or killed)."""
    try:
      while w.conn.poll():
        try:
          message = w.conn.recv()
        except (EOFError, OSError):
          dead = True
          break
        except Exception:  # noqa: BLE001 -- a result that does not unpickle here
          message = ({}, None, "error")
        if message == _READY:
          w.ready, w.deadline = True, float("inf")
          self._start_failures = 0
        elif w.held:
          results[w.held.popleft()] = message
          # It starts on the next item right away: that one's time starts now.
          w.deadline = time.monotonic() + self.timeout_s + _GRACE_S if w.held else float("inf")
    except OSError:  # the pipe broke under poll()
      dead = True
    if not dead and time.monotonic() < w.deadline:
      return True
    w.kill()
    if w.held:
      # Past its deadline, the alarm did not stop the reward: a timeout. Dead: an error. The
      # items after it never started: they go back to the queue.
      results[w.held.popleft()] = ({}, None, "error" if dead else "timeout")
      todo.extendleft(reversed(w.held))
      w.held.clear()
    elif not w.ready:
      self._start_failed(w, dead)
    return False

  def _start_failed(self, w: _Worker, dead: bool):
    """A worker died (or hung) before it was ready: retry one killed by a signal (Ctrl-C in the
    terminal before it left the group); otherwise grading cannot work at all."""
    code = w.proc.exitcode
    self._start_failures += 1
    if dead and code is not None and code < 0 and self._start_failures < _MAX_START_FAILURES:
      return
    self.close()
    if not dead:
      raise ScorerError(f"a grading worker did not start up within {_START_TIMEOUT_S:.0f} s")
    raise ScorerError(
        f"a grading worker exited with code {code} while starting up (its traceback, if any, is "
        "on stderr). Workers are spawned processes that re-import the main module: a script that "
        "uses a Scorer with num_workers > 0 must put that code under "
        "`if __name__ == \"__main__\":`, or use num_workers=0.")

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
                  for name in ("correctness", "format", "brevity", "calibration")}
    answers = [g[1] for g in graded]
    components["self_consistency"] = majority_rewards(answers, group_size)
    components["answer_frequency"] = answer_frequencies(answers, group_size)
    components["group_length"] = group_length_rewards(
        [len(c) for c in completions], components["correctness"], group_size)
    rewards = sum(w * components[name] for name, w in self.weights.items())
    rewards = np.asarray(rewards, np.float32) * np.ones(len(completions), np.float32)
    failures = collections.Counter(g[2] for g in graded if g[2])
    metrics = {f"reward/{name}": float(v.mean()) for name, v in components.items()}
    metrics |= {"reward/total": float(rewards.mean()),
                "reward/timeouts": failures["timeout"], "reward/errors": failures["error"]}
    return rewards, metrics

  def close(self):
    """Ends the workers, busy or not (SIGKILL); a later call starts new ones."""
    workers, self._workers = self._workers, []
    self._generation += 1
    for w in workers:
      if w is not None:
        w.kill()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 -- at interpreter exit modules may be half torn down
      pass
