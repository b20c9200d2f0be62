"""Rewards: components, weights, group majority, and failures that score 0 without crashing."""

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from reasonjax.data import tasks
from reasonjax.data.tasks.base import Problem
from reasonjax.rewards import scoring

TASK = tasks.get_task("arithmetic")
PROBLEMS = TASK.generate(6, seed=0)


def wrong(problem):
  return problem.solution.rsplit("####", 1)[0] + f"#### {int(problem.answer) + 1}"


def test_components_on_task_answers():
  scorer = scoring.Scorer(scoring.TaskVerifier(TASK), {"correctness": 1.0, "format": 0.5},
                          num_workers=0)
  texts = [PROBLEMS[0].solution, wrong(PROBLEMS[1]), "no answer at all",
           PROBLEMS[3].solution + "\n#### 7"]
  rewards, metrics = scorer(PROBLEMS[:4], texts)
  np.testing.assert_allclose(rewards, [1.5, 0.5, 0.0, 0.0])
  assert metrics["reward/correctness"] == 0.25 and metrics["reward/format"] == 0.5
  assert metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0


def test_brevity_is_linear_in_length():
  scorer = scoring.Scorer(scoring.TaskVerifier(TASK), {"brevity": 1.0}, num_workers=0,
                          max_chars=100)
  rewards, _ = scorer([PROBLEMS[0]] * 3, ["x" * 25, "x" * 100, "x" * 300])
  np.testing.assert_allclose(rewards, [0.75, 0.0, 0.0])


def test_calibration_and_a_structured_tasks_format():
  """ReFIne's confidence reward 1 - (c - correct)^2 by hand, 0 without a stated confidence; the
  format reward is the task's own check (`Task.well_formed`)."""
  refine = tasks.with_format(TASK, style="refine")
  problems = refine.generate(4, seed=0)
  scorer = scoring.Scorer(scoring.TaskVerifier(refine), {"calibration": 1.0, "format": 0.5},
                          num_workers=0)
  seed = problems[0].solution  # right, "Confidence: 10/10", in the format
  texts = [seed.replace("10/10", "7/10"), problems[1].solution.replace(
               f"#### {problems[1].answer}", "#### 1000").replace("10/10", "7/10"),
           problems[2].solution.replace("Confidence: 10/10", "Sure."),
           TASK.generate(4, seed=0)[3].solution]  # plain: right, not in the format
  rewards, metrics = scorer(problems, texts)
  np.testing.assert_allclose(rewards, [1 - 0.3**2 + 0.5, 1 - 0.7**2 + 0.5, 0.0, 0.0], rtol=1e-6)
  assert metrics["reward/format"] == 0.5


def test_majority_rewards_by_hand():
  answers = ["3", "4", "3", None, None, None, "7", "8", "8", "7"]
  np.testing.assert_array_equal(scoring.majority_rewards(answers[:4], 4), [1, 0, 1, 0])
  np.testing.assert_array_equal(scoring.majority_rewards(answers[4:6], 2), [0, 0])
  np.testing.assert_array_equal(scoring.majority_rewards(answers[6:], 4), [1, 0, 0, 1])
  with pytest.raises(ValueError, match="do not split into groups of 3"):
    scoring.majority_rewards(answers[:4], 3)


def test_self_consistency_in_groups():
  scorer = scoring.Scorer(scoring.TaskVerifier(TASK), {"self_consistency": 1.0}, num_workers=0)
  group = [PROBLEMS[0]] * 3 + [PROBLEMS[1]] * 3
  texts = ["#### 5", "#### 5", "#### 6", "#### 1", "#### 2", "#### 2"]
  rewards, _ = scorer(group, texts, group_size=3)
  np.testing.assert_array_equal(rewards, [1, 1, 0, 0, 1, 1])


def test_answer_frequency_and_group_length_in_groups():
  """EMPO's cluster frequency and Kimi k1.5's length reward, through the scorer, by hand:
  answers 5, 5, 6, None; lengths 6, 13, 6, 2 chars; the first two right (answer 5)."""
  problem = dataclasses.replace(PROBLEMS[0], answer="5")
  texts = ["#### 5", "so.... #### 5", "#### 6", "no"]
  scorer = scoring.Scorer(scoring.TaskVerifier(TASK), {"answer_frequency": 1.0}, num_workers=0)
  rewards, _ = scorer([problem] * 4, texts, group_size=4)
  np.testing.assert_allclose(rewards, [0.5, 0.5, 0.25, 0.0])
  scorer = scoring.Scorer(scoring.TaskVerifier(TASK), {"group_length": 1.0}, num_workers=0)
  rewards, _ = scorer([problem] * 4, texts, group_size=4)
  lam = [0.5 - (n - 2) / (13 - 2) for n in (6, 13, 6, 2)]
  np.testing.assert_allclose(rewards, [lam[0], lam[1], min(0, lam[2]), min(0, lam[3])],
                             rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_group_rewards_against_loops(seed):
  rng = np.random.default_rng(seed)
  g, n = 4, 12
  answers = [None if v == 0 else str(v) for v in rng.integers(0, 3, n)]
  lengths = rng.integers(1, 4, n) * 10
  correct = rng.integers(0, 2, n).astype(float)
  freq = scoring.answer_frequencies(answers, g)
  length = scoring.group_length_rewards(lengths, correct, g)
  for start in range(0, n, g):
    group = range(start, start + g)
    low, high = min(lengths[i] for i in group), max(lengths[i] for i in group)
    for i in group:
      same = sum(answers[j] == answers[i] for j in group)
      assert freq[i] == (0.0 if answers[i] is None else same / g)
      lam = 0.0 if high == low else 0.5 - (lengths[i] - low) / (high - low)
      assert length[i] == pytest.approx(lam if correct[i] else min(0.0, lam), abs=1e-6)


def test_overlong_penalty_by_hand():
  got = scoring.overlong_penalty([10, 12, 13, 16, 20], max_length=16, cache=4)
  np.testing.assert_allclose(got, [0.0, 0.0, -0.25, -1.0, -1.0])
  with pytest.raises(ValueError, match="cache=0: expected 0 < cache <= max_length=16"):
    scoring.overlong_penalty([1], max_length=16, cache=0)


@dataclasses.dataclass(frozen=True)
class Broken:
  """A verifier that raises on '#### 1', hangs on '#### 2', and is otherwise always right."""

  def extract(self, text):
    return text

  def check(self, problem, text):
    if text == "#### 1":
      raise RuntimeError("bug in a reward function")
    if text == "#### 2":
      time.sleep(60)
    return True

  def well_formed(self, text):
    return True


@pytest.mark.parametrize("num_workers", [0, 2])
def test_errors_and_timeouts_score_zero_and_are_counted(num_workers):
  scorer = scoring.Scorer(Broken(), {"correctness": 1.0}, num_workers=num_workers,
                          timeout_s=1.0)
  start = time.monotonic()
  rewards, metrics = scorer(PROBLEMS[:4], ["#### 0", "#### 1", "#### 2", "#### 3"])
  assert time.monotonic() - start < 25  # the workers' spawn start-up plus one timeout
  np.testing.assert_array_equal(rewards, [1, 0, 0, 1])
  assert metrics["reward/errors"] == 1 and metrics["reward/timeouts"] == 1
  start = time.monotonic()
  scorer.close()  # ends the workers, however busy (a worker that ignored SIGTERM hung here)
  assert time.monotonic() - start < 10


GROUP_SIGNAL_SCRIPT = """
import os, signal, threading, time
from reasonjax.data import tasks
from reasonjax.rewards import scoring


class Slow(scoring.TaskVerifier):
  def __init__(self):
    pass

  def check(self, problem, text):
    time.sleep(30)
    return True

if __name__ == "__main__":
  task = tasks.get_task("arithmetic")
  problems = task.generate(4, seed=0)
  texts = [p.solution for p in problems]
  scorer = scoring.Scorer(scoring.TaskVerifier(task), {"correctness": 1.0}, num_workers=2)
  assert scorer(problems, texts)[0].tolist() == [1.0] * 4  # starts the workers
  workers = [w.proc.pid for w in scorer._workers]
  deadline = time.monotonic() + 60  # each leaves the group once it has started up
  while any(os.getpgid(pid) != pid for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  # The trainer catches these itself (loop._stop_requests); here they are just survived.
  signal.signal(signal.SIGINT, lambda *_: None)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and later workers must still close
  os.killpg(os.getpgrp(), signal.SIGINT)  # what Ctrl-C in a terminal does
  os.killpg(os.getpgrp(), signal.SIGTERM)  # what `timeout` does
  time.sleep(1.0)
  assert [w.proc.pid for w in scorer._workers] == workers, "a worker died"
  assert scorer(problems, texts)[0].tolist() == [1.0] * 4
  scorer.close()
  # close() ends workers even in the middle of a task (the call in the thread then raises).
  slow = scoring.Scorer(Slow(), {"correctness": 1.0}, num_workers=1, timeout_s=60.0)
  threading.Thread(target=slow, args=(problems[:1], ["x"]), daemon=True).start()
  time.sleep(8.0)  # the worker starts up and sleeps in the task
  start = time.monotonic()
  slow.close()
  assert time.monotonic() - start < 5, f"close took {time.monotonic() - start:.0f} s"
  print("ok")
"""


def test_workers_outlive_a_signal_to_the_process_group(tmp_path):
  """Ctrl-C or `timeout` signals every process of the group: grading workers must keep going, so
  that the trainer can finish its step and save its checkpoint, and `close` must still end
  them. Run in a session of its own, so that the group's signals stay away from pytest."""
  script = tmp_path / "group_signal.py"
  script.write_text(GROUP_SIGNAL_SCRIPT)
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, start_new_session=True)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_gsm8k_and_math_verifiers():
  gsm = scoring.Gsm8kVerifier()
  problem = Problem("q", "1000", "")
  assert gsm.check(problem, "so she has 1,000 coins.\n#### 1,000")
  assert not gsm.check(problem, "#### 999")
  boxed = scoring.MathVerifier()
  assert boxed.check(Problem("q", "\\frac{1}{2}", ""), "so \\boxed{0.5}")
  assert not boxed.well_formed("no box")


def test_unknown_reward_is_named():
  with pytest.raises(ValueError, match=r"unknown reward\(s\) \['speed'\]; valid rewards"):
    scoring.Scorer(scoring.TaskVerifier(TASK), {"speed": 1.0})


def test_make_verifier_by_name():
  assert scoring.make_verifier("task", TASK) == scoring.TaskVerifier(TASK)
  assert scoring.make_verifier("gsm8k", TASK) == scoring.Gsm8kVerifier()
  assert scoring.make_verifier("math", TASK) == scoring.MathVerifier()
  assert set(scoring.VERIFIERS) == {"task", "gsm8k", "math"}
  with pytest.raises(ValueError, match=r"unknown verifier 'lean'; valid verifiers: \['gsm8k', "):
    scoring.make_verifier("lean", TASK)


# ----------------------------------------------------------------------------- misbehaving rewards

TIMEOUT_S = 1.0


@dataclasses.dataclass(frozen=True)
class Misbehaves:
  """A verifier that is always right, except on texts that name a way for a reward to go wrong.

  Module level, so that spawned workers can unpickle it (as tests.rewards.test_scoring.Misbehaves).
  """

  def extract(self, text):
    return text

  def check(self, problem, text):
    if text == "exit":
      os._exit(3)
    if text == "kill":
      os.kill(os.getpid(), signal.SIGKILL)
    if text == "sys.exit":
      sys.exit(1)
    if text == "interrupt":
      raise KeyboardInterrupt
    if text == "generator-exit":
      raise GeneratorExit
    if text == "deaf":  # the alarm cannot stop it: only killing its process can
      signal.signal(signal.SIGALRM, signal.SIG_IGN)
      time.sleep(60)
    if text == "stubborn":  # swallows every interruption, for up to 10 s
      end = time.monotonic() + 10
      while time.monotonic() < end:
        try:
          time.sleep(0.05)
        except BaseException:  # noqa: BLE001
          pass
    if text == "spin":  # the same in pure Python
      end, n = time.monotonic() + 10, 0
      while time.monotonic() < end:
        try:
          n += sum(range(100))
        except BaseException:  # noqa: BLE001
          pass
    return True

  def well_formed(self, text):
    return True


@pytest.fixture(scope="module")
def workers():
  """Two warm workers shared by the tests below: each test also checks that the scorer keeps
  working after the previous one had a worker replaced."""
  scorer = scoring.Scorer(Misbehaves(), {"correctness": 1.0}, num_workers=2, timeout_s=TIMEOUT_S)
  assert scorer(PROBLEMS[:2], ["ok", "ok"])[0].tolist() == [1, 1]  # start-up (~1 s) not timed
  yield scorer
  scorer.close()


@pytest.mark.parametrize("bad, counted", [
    ("exit", "errors"), ("kill", "errors"), ("sys.exit", "errors"), ("interrupt", "errors"),
    ("deaf", "timeouts"), ("stubborn", "timeouts")])
def test_a_bad_reward_costs_only_its_own_item(workers, bad, counted):
  texts = ["ok"] * 8
  texts[5] = bad
  start = time.monotonic()
  rewards, metrics = workers([PROBLEMS[0]] * 8, texts)
  elapsed = time.monotonic() - start
  np.testing.assert_array_equal(rewards, [1, 1, 1, 1, 1, 0, 1, 1])
  other = {"errors": "timeouts", "timeouts": "errors"}[counted]
  assert metrics[f"reward/{counted}"] == 1 and metrics[f"reward/{other}"] == 0
  assert metrics["reward/correctness"] == 7 / 8
  # One per-item limit at most (timeout_s, and the grace before a kill), not one per item. A
  # dead worker's replacement re-imports the package: up to about 5 s when the suite's other
  # worker loads both cores (measured 5.6 s with a third job beside them).
  limit = 8 * TIMEOUT_S if counted == "errors" else TIMEOUT_S + scoring._GRACE_S + 1.5
  assert elapsed < limit, f"{elapsed:.1f} s"


def test_a_replaced_worker_grades_the_next_call():
  scorer = scoring.Scorer(Misbehaves(), {"correctness": 1.0}, num_workers=1, timeout_s=TIMEOUT_S)
  try:
    assert scorer(PROBLEMS[:2], ["ok", "ok"])[0].tolist() == [1, 1]
    first = scorer._workers[0].proc.pid
    assert scorer(PROBLEMS[:2], ["ok", "ok"])[0].tolist() == [1, 1]
    assert scorer._workers[0].proc.pid == first, "workers are reused across calls"
    for bad, counted in [("exit", "errors"), ("deaf", "timeouts")]:
      rewards, metrics = scorer(PROBLEMS[:3], ["ok", bad, "ok"])
      np.testing.assert_array_equal(rewards, [1, 0, 1])  # the last one by the new worker
      assert metrics[f"reward/{counted}"] == 1
    assert scorer._workers[0].proc.pid != first
    assert scorer(PROBLEMS[:3], ["ok"] * 3)[0].tolist() == [1, 1, 1]
  finally:
    scorer.close()


def test_a_worker_killed_while_starting_up_is_replaced():
  """Ctrl-C in a terminal reaches a worker still starting up (before it leaves the process
  group): a death by a signal is retried, unlike a start-up that fails by itself."""
  import multiprocessing
  scorer = scoring.Scorer(Misbehaves(), {"correctness": 1.0}, num_workers=1, timeout_s=TIMEOUT_S)
  try:
    scorer._workers = [scoring._Worker(multiprocessing.get_context("spawn"))]
    killed = scorer._workers[0].proc
    # SIGKILL, not the terminal's SIGINT: in the full suite the worker survived SIGINT (it
    # inherits a SIG_IGN that an earlier test may leave in this process); the scorer treats
    # any death by a signal alike.
    os.kill(killed.pid, signal.SIGKILL)
    assert scorer(PROBLEMS[:2], ["ok", "ok"])[0].tolist() == [1, 1]
    killed.join(5)  # reaped lazily: the replacement can come first
    assert killed.exitcode < 0 and scorer._workers[0].proc is not killed
  finally:
    scorer.close()

def _alarm_state():
  return signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL), sys.gettrace()


def test_in_process_a_reward_cannot_end_the_trainer():
  scorer = scoring.Scorer(Misbehaves(), {"correctness": 1.0}, num_workers=0, timeout_s=TIMEOUT_S)
  before = _alarm_state()
  rewards, metrics = scorer(PROBLEMS[:4], ["ok", "sys.exit", "generator-exit", "ok"])
  np.testing.assert_array_equal(rewards, [1, 0, 0, 1])
  assert metrics["reward/errors"] == 2 and metrics["reward/timeouts"] == 0
  # In-process a reward's KeyboardInterrupt cannot be told from the user's Ctrl-C: it propagates.
  with pytest.raises(KeyboardInterrupt):
    scorer(PROBLEMS[:1], ["interrupt"])
  assert _alarm_state() == before


@pytest.mark.parametrize("bad", ["stubborn", "spin"])
def test_in_process_a_reward_that_swallows_the_alarm_is_stopped(bad):
  scorer = scoring.Scorer(Misbehaves(), {"correctness": 1.0}, num_workers=0, timeout_s=0.5)
  before = _alarm_state()
  start = time.monotonic()
  rewards, metrics = scorer(PROBLEMS[:2], ["ok", bad])
  elapsed = time.monotonic() - start
  np.testing.assert_array_equal(rewards, [1, 0])
  assert metrics["reward/timeouts"] == 1 and metrics["reward/errors"] == 0
  assert elapsed < 0.5 + 1.5, f"{elapsed:.1f} s"
  assert _alarm_state() == before, "the timer, SIGALRM handler and trace function are restored"


def test_in_process_off_the_main_thread_grades_without_an_alarm():
  scorer = scoring.Scorer(Broken(), {"correctness": 1.0}, num_workers=0, timeout_s=TIMEOUT_S)
  out = []
  thread = threading.Thread(target=lambda: out.append(scorer(PROBLEMS[:2], ["#### 0", "#### 1"])))
  thread.start()
  thread.join(30)
  rewards, metrics = out[0]
  np.testing.assert_array_equal(rewards, [1, 0])
  assert metrics["reward/errors"] == 1


NO_MAIN_GUARD_SCRIPT = """
import sys
from reasonjax.data import tasks
from reasonjax.rewards import scoring

task = tasks.get_task("arithmetic")
problems = task.generate(2, seed=0)
scorer = scoring.Scorer(scoring.TaskVerifier(task), {"correctness": 1.0}, num_workers=1)
try:
  print(scorer(problems, [p.solution for p in problems]))
except scoring.ScorerError as e:
  print(e)
  sys.exit(0)
"""


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path):
  """Spawned workers re-import the main module; without the guard each tries to start workers
  of its own while bootstrapping, and dies of multiprocessing's RuntimeError."""
  script = tmp_path / "no_guard.py"
  script.write_text(NO_MAIN_GUARD_SCRIPT)
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, start_new_session=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'if __name__ == "__main__":' in result.stdout, result.stdout
  assert "exited with code 1" in result.stdout and "num_workers=0" in result.stdout
