"""The TPU launcher: the gcloud commands that --dry_run prints and that a real run executes (with
subprocess.run replaced by a recorder: gcloud never runs), its refusals, and its worker-side shell
scripts, run here with a stand-in for the venv's python."""

import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import pytest

from launch import tpu

T = ["--name=rj", "--zone=us-west4-a"]
Z = "--zone=us-west4-a"
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]


def dry_run(capsys, action, *flags) -> list[list[str]]:
  """The commands `python -m launch.tpu ACTION --dry_run FLAGS` prints, each as its argv."""
  assert tpu.main([action, "--dry_run", *flags]) == 0
  commands = []
  for token in shlex.split(capsys.readouterr().out, comments=True):
    if token == "gcloud":
      commands.append([])
    commands[-1].append(token)
  return commands


def script_of(command: list[str]) -> list[str]:
  """The lines of the shell script that an ssh command runs on the workers."""
  assert command[-1].startswith("--command=")
  return command[-1].removeprefix("--command=").split("\n")


class Recorder:
  """Stands in for subprocess.run: records each command and answers with `replies[verb]`."""

  def __init__(self, replies=None):
    self.calls, self.replies = [], replies or {}

  def __call__(self, cmd, **kwargs):
    assert cmd[0] == "gcloud", cmd
    self.calls.append(cmd)
    returncode, stdout = self.replies.get(cmd[4], (0, ""))
    if kwargs.get("check") and returncode:
      raise subprocess.CalledProcessError(returncode, cmd)
    return subprocess.CompletedProcess(cmd, returncode, stdout, "")


@pytest.mark.parametrize("accelerator_type, workers", [
    ("v2-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-16", 2), ("v4-32", 4), ("v5p-8", 1),
    ("v5p-64", 8), ("v5litepod-1", 1), ("v5litepod-8", 1), ("v5litepod-16", 4),
    ("v5litepod-256", 64), ("v6e-8", 1), ("v6e-16", 4), ("v6e-256", 64)])
def test_workers_per_slice(accelerator_type, workers):
  assert tpu.hosts(accelerator_type) == workers


@pytest.mark.parametrize("accelerator_type, says", [
    ("v5e-8", "v5litepod-N"), ("v7-8", "unknown accelerator type"), ("tpu", "FAMILY-N"),
    ("v5litepod", "FAMILY-N"), ("v5litepod-12", "1, 4, 8, 16"), ("v6e-2", "1, 4, 8, 16"),
    ("v5p-12", "multiples of 8"), ("v4-0", "multiples of 8")])
def test_unknown_accelerator_types_are_refused(accelerator_type, says, capsys):
  with pytest.raises(tpu.LaunchError, match=says):
    tpu.hosts(accelerator_type)
  with pytest.raises(SystemExit, match=says):
    tpu.main(["create", *T, f"--accelerator_type={accelerator_type}", "--dry_run"])
  assert capsys.readouterr().out == ""  # Not a command printed.


def test_create_dry_run(capsys):
  assert dry_run(capsys, "create", *T, "--accelerator_type=v5litepod-16", "--spot") == [
      GCLOUD + ["describe", "rj", Z, "--format=value(acceleratorType,state)"],
      GCLOUD + ["create", "rj", Z, "--accelerator-type=v5litepod-16",
                "--version=v2-alpha-tpuv5-lite", "--spot"]]
  assert dry_run(capsys, "create", *T, "--project=lab", "--accelerator_type=v5p-64",
                 "--version=v2-alpha-tpuv5-custom")[1] == GCLOUD + [
                     "create", "rj", Z, "--project=lab", "--accelerator-type=v5p-64",
                     "--version=v2-alpha-tpuv5-custom"]
  assert dry_run(capsys, "create", *T, "--accelerator_type=v4-8", "--preemptible")[1][-2:] == [
      "--version=tpu-ubuntu2204-base", "--preemptible"]
  with pytest.raises(SystemExit):  # One provisioning model at a time.
    tpu.main(["create", *T, "--accelerator_type=v4-8", "--spot", "--reserved", "--dry_run"])


@pytest.mark.parametrize("found, created, error", [
    ((1, ""), True, None),  # No such TPU: create it.
    ((0, "v5litepod-16\tREADY\n"), False, None),  # Reuse it.
    ((0, "v5litepod-8\tREADY\n"), False, "exists in us-west4-a as v5litepod-8"),
    ((0, "v5litepod-16\tPREEMPTED\n"), False, "PREEMPTED.*delete it")])
def test_create_reuses_a_ready_slice_of_the_same_type(monkeypatch, found, created, error):
  recorder = Recorder({"describe": found})
  monkeypatch.setattr(subprocess, "run", recorder)
  argv = ["create", *T, "--accelerator_type=v5litepod-16", "--spot"]
  if error:
    with pytest.raises(SystemExit, match=error):
      tpu.main(argv)
  else:
    assert tpu.main(argv) == 0
  assert [c[4] for c in recorder.calls] == ["describe"] + ["create"] * created


def test_install_packs_this_checkout(monkeypatch, capsys):
  def no_packing(*args):
    raise AssertionError("a dry run packs nothing")
  monkeypatch.setattr(tpu, "pack_tree", no_packing)
  archive = os.path.join(tempfile.gettempdir(), "reasonjax-src.tar.gz")
  scp, ssh = dry_run(capsys, "install", *T)
  assert scp == GCLOUD + ["scp", archive, "rj:reasonjax-src.tar.gz", Z, "--worker=all"]
  assert ssh[:-1] == GCLOUD + ["ssh", "rj", Z, "--worker=all"]
  lines = script_of(ssh)
  assert lines[0] == "set -e"
  for line in ['rm -rf "$HOME/reasonjax"',
               'tar -xzf "$HOME"/reasonjax-src.tar.gz -C "$HOME/reasonjax"',
               '[ -x "$HOME/.venvs/reasonjax/bin/python" ] || uv venv --python 3.11 '
               '"$HOME/.venvs/reasonjax"',
               'uv pip install --python "$HOME/.venvs/reasonjax/bin/python" '
               '-e "$HOME/reasonjax[tpu]"']:
    assert line in lines
  # The code is in place before the install reads it.
  assert lines.index('rm -rf "$HOME/reasonjax"') < lines.index(
      'tar -xzf "$HOME"/reasonjax-src.tar.gz -C "$HOME/reasonjax"') < len(lines) - 2


def test_install_from_git_or_a_wheel(capsys):
  ssh, = dry_run(capsys, "install", *T, "--source=git", "--git_url=https://github.com/me/rj.git",
                 "--git_ref=v0.2", "--code_dir=/opt/rj", "--python=3.12")
  lines = script_of(ssh)
  assert lines[lines.index("rm -rf /opt/rj") + 1:lines.index("rm -rf /opt/rj") + 3] == [
      "git clone https://github.com/me/rj.git /opt/rj", "git -C /opt/rj checkout v0.2"]
  assert ("uv pip install --python \"$HOME/.venvs/reasonjax/bin/python\" -e '/opt/rj[tpu]'"
          in lines)
  assert any("uv venv --python 3.12" in line for line in lines)

  scp, ssh = dry_run(capsys, "install", *T, "--source=wheel",
                     "--wheel=dist/reasonjax-0.1.0-py3-none-any.whl")
  assert scp == GCLOUD + ["scp", "dist/reasonjax-0.1.0-py3-none-any.whl",
                          "rj:reasonjax-0.1.0-py3-none-any.whl", Z, "--worker=all"]
  install = [line for line in script_of(ssh) if line.startswith("uv pip install")]
  assert shlex.split(install[0])[-1] == (
      "reasonjax[tpu] @ file://$HOME/reasonjax-0.1.0-py3-none-any.whl")
  with pytest.raises(SystemExit, match="--git_url"):
    tpu.main(["install", *T, "--source=git", "--dry_run"])
  with pytest.raises(SystemExit, match="--code_dir=~: give a directory of its own"):
    tpu.main(["install", *T, "--code_dir=~", "--dry_run"])


def test_run_starts_main_on_every_worker_and_follows_worker_0(capsys):
  start, follow = dry_run(
      capsys, "run", *T, "--accelerator_type=v5litepod-16", "--config=configs/sft_arith.py",
      "--workdir=gs://bucket/runs/sft", "--config.model.dtype=bfloat16", "--env=A=b c",
      "--", "--compilation_cache=", "--config.seed=3")
  assert start[:-1] == GCLOUD + ["ssh", "rj", Z, "--worker=all"]
  lines = script_of(start)
  nohup, = [shlex.split(line) for line in lines if line.startswith("nohup ")]
  assert nohup[:nohup.index(">")] == [
      "nohup", "$HOME/.venvs/reasonjax/bin/python", "-m", "reasonjax.main", "--distributed=on",
      "--config=configs/sft_arith.py", "--workdir=gs://bucket/runs/sft",
      "--config.model.dtype=bfloat16", "--compilation_cache=", "--config.seed=3"]
  assert nohup[nohup.index(">"):] == [">", "$HOME/reasonjax-logs/main.log", "2>&1", "<",
                                      "/dev/null", "&"]
  assert lines.index('cd "$HOME/reasonjax"') < lines.index("export A='b c'") < lines.index(
      next(line for line in lines if line.startswith("nohup ")))
  assert follow[:-1] == GCLOUD + ["ssh", "rj", Z, "--worker=0"]
  assert 'exec tail -n +1 -F --pid="$(cat "$HOME/reasonjax-logs/main.pid")" ' \
         '"$HOME/reasonjax-logs/main.log"' in "\n".join(script_of(follow))

  start, = dry_run(capsys, "run", *T, "--accelerator_type=v5litepod-8", "--detach",
                   "--config=configs/demo.py:runlocal", "--workdir=~/runs/demo")
  nohup, = [shlex.split(line) for line in script_of(start) if line.startswith("nohup ")]
  assert nohup[5:7] == ["--config=configs/demo.py:runlocal", "--workdir=$HOME/runs/demo"]


@pytest.mark.parametrize("workdir, accelerator_type, shared, error", [
    ("gs://bucket/runs/x", "v5litepod-16", False, None),
    ("gs://", "v4-8", False, "name a bucket"),
    ("/home/me/runs/x", "v5litepod-16", False, "4 workers.*gs://BUCKET"),
    ("/mnt/nfs/runs/x", "v5p-64", True, None),
    ("~/runs/x", "v5p-64", True, "the mount's absolute path"),
    ("/home/me/runs/x", "v5litepod-8", False, None),  # One worker: its own disk will do.
    ("~/runs/x", "v6e-8", False, None),
    ("runs/x", "v6e-8", False, "relative"),
    ("gs://bucket/x", "v5e-16", False, "v5litepod-N")])
def test_the_workdir_must_be_one_that_every_worker_sees(workdir, accelerator_type, shared, error,
                                                        monkeypatch):
  if error:
    with pytest.raises(tpu.LaunchError, match=error):
      tpu.check_workdir(workdir, accelerator_type, shared)
    monkeypatch.setattr(subprocess, "run", Recorder())
    with pytest.raises(SystemExit, match=error):
      tpu.main(["run", *T, f"--accelerator_type={accelerator_type}", "--config=configs/x.py",
                f"--workdir={workdir}"] + ["--shared_workdir"] * shared)
    assert subprocess.run.calls == []
  else:
    tpu.check_workdir(workdir, accelerator_type, shared)


def test_what_runs_is_what_the_dry_run_prints(monkeypatch, capsys):
  for argv in (["stop", *T, "--timeout_s=30"], ["logs", *T, "--worker=3", "--lines=20"],
               ["delete", *T, "--yes"],
               ["run", *T, "--accelerator_type=v4-16", "--config=configs/x.py",
                "--workdir=gs://b/x", "--config.steps=5"]):
    printed = dry_run(capsys, *argv)
    recorder = Recorder()
    monkeypatch.setattr(subprocess, "run", recorder)
    assert tpu.main(argv) == 0
    assert recorder.calls == printed
    monkeypatch.undo()
  assert printed[1][4:8] == ["ssh", "rj", Z, "--worker=0"]  # The run's log stream.
  assert dry_run(capsys, "delete", *T) == [GCLOUD + ["delete", "rj", Z]]  # gcloud asks first.


def test_a_failing_gcloud_stops_the_launcher(monkeypatch):
  monkeypatch.setattr(subprocess, "run", Recorder({"ssh": (255, "")}))
  with pytest.raises(SystemExit, match="exit code 255"):
    tpu.main(["run", *T, "--accelerator_type=v4-8", "--config=c.py", "--workdir=/data/x"])
  assert [c[4] for c in subprocess.run.calls] == ["ssh"]  # Not the log stream after it.


def test_unknown_flags_are_refused():
  with pytest.raises(SystemExit):  # Only run passes --config.* on to reasonjax.main.
    tpu.main(["stop", *T, "--config.steps=3", "--dry_run"])
  with pytest.raises(SystemExit):
    tpu.main(["stop", *T, "--dry_run", "--", "--steps=3"])
  with pytest.raises(SystemExit):
    tpu.main(["run", *T, "--accelerator_type=v4-8", "--config=c.py", "--workdir=/d/x",
              "--workdir_typo=3", "--dry_run"])


def test_pack_tree_takes_the_files_git_sees(tmp_path):
  repo = tmp_path / "repo"
  (repo / "pkg").mkdir(parents=True)
  (repo / "runs").mkdir()
  for name in ("pkg/a.py", "pkg/gone.py", "new.py", "runs/ckpt", ".gitignore"):
    (repo / name).write_text("runs/\n" if name == ".gitignore" else name)
  subprocess.run(["git", "init", "-q", str(repo)], check=True)
  subprocess.run(["git", "-C", str(repo), "add", "pkg", ".gitignore"], check=True)
  (repo / "pkg/gone.py").unlink()  # Tracked, deleted here: not sent.
  out = tmp_path / "src.tar.gz"
  assert tpu.pack_tree(str(repo), str(out)) == 3
  with tarfile.open(out) as tar:
    assert sorted(tar.getnames()) == [".gitignore", "new.py", "pkg/a.py"]
    assert tar.extractfile("pkg/a.py").read() == b"pkg/a.py"


FAKE_PYTHON = """#!/bin/bash
# Stands in for the venv's python: records how it was started, then runs until SIGTERM.
if [ -n "$IGNORE_TERM" ]; then trap '' TERM; else trap 'echo "got SIGTERM"; exit 143' TERM; fi
echo "args: $*"
echo "cwd: $PWD"
echo "A=$A PYTHONUNBUFFERED=$PYTHONUNBUFFERED"
while true; do sleep 0.1; done
"""


def _bash(script, home, **env):
  return subprocess.run(["bash", "-c", script], env={**os.environ, "HOME": str(home), **env},
                        capture_output=True, text=True, timeout=60)


def _running(pid: int) -> bool:
  """Not gone, and not a zombie (whose cmdline is empty) that nobody has reaped yet."""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return bool(f.read())
  except FileNotFoundError:
    return False


def _wait_for(path, text, timeout_s=20.0):
  deadline = time.monotonic() + timeout_s
  while not (path.exists() and text in path.read_text()):
    assert time.monotonic() < deadline, f"{text!r} not in {path}"
    time.sleep(0.05)
  return path.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the scripts read /proc")
def test_the_worker_scripts_start_follow_and_stop_a_run(tmp_path):
  home = tmp_path
  python = home / ".venvs/reasonjax/bin/python"
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  (home / "reasonjax").mkdir()
  paths = dict(code_dir="~/reasonjax", venv="~/.venvs/reasonjax", log_dir="~/reasonjax-logs")
  log, pid_file = home / "reasonjax-logs/main.log", home / "reasonjax-logs/main.pid"
  start = tpu.run_script("configs/x.py:runlocal", "gs://b/run x", ["--config.seed=3"],
                         env={"A": "b c"}, **paths)

  started = []  # The stand-ins' pids: none outlives the test, even a failing one.
  try:
    out = _bash(start, home)
    assert out.returncode == 0, out.stderr
    assert "started reasonjax.main" in out.stdout
    text = _wait_for(log, "PYTHONUNBUFFERED")
    assert "args: -m reasonjax.main --distributed=on --config=configs/x.py:runlocal " \
           f"--workdir=gs://b/run x --config.seed=3\ncwd: {home}/reasonjax\nA=b c PYTHONUNBUFFERED=1\n" in text
    pid = int(pid_file.read_text())
    started.append(pid)

    again = _bash(start, home)  # A second run on the same worker is refused.
    assert again.returncode == 1 and f"a run is going on (pid {pid})" in again.stderr
    assert log.read_text() == text

    follow = subprocess.Popen(["bash", "-c", tpu.tail_script(paths["log_dir"], "+1")],
                              env={**os.environ, "HOME": str(home)}, stdout=subprocess.PIPE,
                              text=True)
    timer = threading.Timer(30, follow.kill)  # A stream that stalls fails the test, not hangs it.
    timer.start()
    stop = _bash(tpu.stop_script(paths["log_dir"], timeout_s=30), home)
    assert stop.returncode == 0, stop.stderr
    assert f"SIGTERM to pid {pid}" in stop.stdout and "stopped" in stop.stdout
    assert log.read_text().endswith("got SIGTERM\n") and not pid_file.exists()
    # The stream shows the whole log as it grows. (It ends when the run's process is reaped:
    # `tail --pid`; this machine's init may leave a zombie for seconds, so the test ends it.)
    followed = []
    for line in follow.stdout:
      followed.append(line)
      if line == "got SIGTERM\n":
        break
    follow.kill()
    follow.wait()
    timer.cancel()
    assert "".join(followed) == log.read_text()
    assert "no run going on" in _bash(tpu.stop_script(paths["log_dir"], 30), home).stdout

    # A second run keeps the first one's log as main.log.prev; one that ignores SIGTERM is killed.
    assert _bash(start, home, IGNORE_TERM="1").returncode == 0
    _wait_for(log, "PYTHONUNBUFFERED")
    assert (home / "reasonjax-logs/main.log.prev").read_text().endswith("got SIGTERM\n")
    pid = int(pid_file.read_text())
    started.append(pid)
    stop = _bash(tpu.stop_script(paths["log_dir"], timeout_s=1), home)
    assert "still running after 1 s: SIGKILL" in stop.stderr
    deadline = time.monotonic() + 10
    while _running(pid):  # SIGKILL is delivered, not waited for.
      assert time.monotonic() < deadline
      time.sleep(0.05)
    assert not pid_file.exists()
  finally:
    for pid in started + ([int(pid_file.read_text())] if pid_file.exists() else []):
      if _running(pid):
        os.kill(pid, signal.SIGKILL)
