"""One run per workdir: the lock is exclusive across processes and names its holder."""

import os
import socket
import subprocess
import sys
import time

import pytest

from reasonjax import workdir
from tests.conftest import REPO, run_main

HOLD = "from reasonjax import workdir; import sys\nwith workdir.lock(sys.argv[1]):\n  print('took it', flush=True)"


def test_a_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  with workdir.lock(str(tmp_path)):
    start = time.perf_counter()
    out = run_main("--config=configs/sft_arith.py:runlocal", workdir=tmp_path, timeout=120)
    assert out.returncode != 0
    assert f"in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "config.json").exists()  # It did nothing.
    assert time.perf_counter() - start < 60  # Not after a training run (the SFT takes minutes).
    # Another process, directly.
    other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True)
    assert other.returncode != 0 and "WorkdirLocked" in other.stderr
  # Released with the block (and by the kernel when a holder dies): the next one takes it.
  other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True)
  assert other.returncode == 0 and "took it" in other.stdout


def test_the_lock_is_held_by_the_process_not_left_behind_by_a_kill(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD + "; import time; time.sleep(60)",
                             str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "took it"
  with pytest.raises(workdir.WorkdirLocked, match=f"pid {holder.pid} "):
    with workdir.lock(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with workdir.lock(str(tmp_path)):  # No stale lock after a SIGKILL.
    pass
