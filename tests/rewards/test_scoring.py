"""Rewards: components, weights, group majority, and failures that score 0 without crashing."""

import dataclasses
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
  assert time.monotonic() - start < 25  # the pool's spawn start-up plus one timeout
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
  assert scorer(problems, texts)[0].tolist() == [1.0] * 4  # starts the pool
  workers = [w.pid for w in scorer._pool._pool]
  deadline = time.monotonic() + 60  # each leaves the group once it has started up
  while any(os.getpgid(pid) != pid for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  # The trainer catches these itself (loop._stop_requests); here they are just survived.
  signal.signal(signal.SIGINT, lambda *_: None)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and a later pool must still close
  os.killpg(os.getpgrp(), signal.SIGINT)  # what Ctrl-C in a terminal does
  os.killpg(os.getpgrp(), signal.SIGTERM)  # what `timeout` does
  time.sleep(1.0)
  assert [w.pid for w in scorer._pool._pool] == workers, "a worker died"
  assert scorer(problems, texts)[0].tolist() == [1.0] * 4
  scorer.close()
  # close() ends workers even in the middle of a task (Pool.terminate's SIGTERM reaches them).
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
  import subprocess
  import sys
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
