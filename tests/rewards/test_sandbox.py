"""The code sandbox: output, limits, timeouts, and what sandboxed code must not reach.

Tests marked by the `mode` fixture run twice: under "namespaces" (skipped where this machine does
not give it, e.g. without root) and under the "rlimits" fallback, forced even where namespaces
work, so that its socket guard and process-group kill are tested too.
"""

import concurrent.futures
import hashlib
import os
import pathlib
import socket
import tempfile
import textwrap
import time

import pytest

from reasonjax.rewards import sandbox

REPO = pathlib.Path(__file__).resolve().parents[2]
SLACK_S = 1.0  # past the timeout: kill, drain and reap, on a loaded 2-core machine


@pytest.fixture(params=["namespaces", "rlimits"])
def mode(request, monkeypatch):
  """The isolation mode under test; "rlimits" is forced, "namespaces" needs the machine."""
  if request.param == "namespaces":
    if sandbox.isolation() != "namespaces":
      pytest.skip("namespaces are not available here (needs root with CAP_SYS_ADMIN on Linux)")
  else:
    monkeypatch.setattr(sandbox, "isolation", lambda: "rlimits")
  return request.param


@pytest.fixture
def namespaces():
  """Skips where the strong isolation is unavailable: the fallback does not claim these."""
  if sandbox.isolation() != "namespaces":
    pytest.skip("the rlimits fallback does not confine writes or processes; needs namespaces")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
  """Makes the sandbox create its temporary folders under `tmp_path`, to check on them."""
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  return tmp_path


def run(code, **kwargs):
  return sandbox.run_python(textwrap.dedent(code), **kwargs)


def processes_mentioning(text):
  """Pids of live processes whose command line contains `text`."""
  pids = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        if text.encode() in f.read():
          pids.append(int(entry))
    except (OSError, ValueError):
      continue
  return pids


def test_normal_code_returns_stdout_and_returncode_0(mode):
  result = run("print(sum(range(10)))\nprint('é')")
  assert result.stdout == "45\né\n"
  assert (result.stderr, result.returncode, result.timed_out) == ("", 0, False)
  assert result.ok and not result.memory_exceeded
  assert 0 < result.duration_s < 5


def test_stdin_is_passed_also_beyond_a_pipe_buffer(mode):
  text = "hello sandbox\n" * 100_000  # 1.4 MB: blocks unless written while reading output
  result = run("""
      import hashlib, sys
      data = sys.stdin.read()
      print(len(data), hashlib.sha256(data.encode()).hexdigest())
      """, stdin=text)
  assert result.ok, result.stderr
  assert result.stdout.split() == [str(len(text)), hashlib.sha256(text.encode()).hexdigest()]


def test_code_that_ignores_stdin_still_finishes(mode):
  result = run("print('done')", stdin="x" * (4 << 20))
  assert result.ok and result.stdout == "done\n"


def test_exception_traceback_goes_to_stderr(mode):
  result = run("""
      x = 1
      raise ValueError('boom')
      """)
  assert result.returncode == 1 and not result.ok and not result.timed_out
  assert result.stdout == ""
  assert result.stderr.startswith("Traceback (most recent call last):")
  assert result.stderr.rstrip().endswith("ValueError: boom")
  assert "main.py\", line 3, in <module>" in result.stderr
  assert "<string>" not in result.stderr  # the sandbox's runner frame is dropped


def test_syntax_error_and_exit_codes(mode):
  result = run("def f(:\n  pass")
  assert result.returncode == 1 and "SyntaxError" in result.stderr
  result = run("print('a'); exit(3)")  # exit() exists although `site` is skipped
  assert (result.returncode, result.stdout, result.ok) == (3, "a\n", False)


def test_multiprocessing_works(mode):
  result = run("""
      import multiprocessing
      if __name__ == '__main__':
        with multiprocessing.Pool(2) as pool:
          print(pool.map(abs, [-1, -2, -3]))
      """, timeout_s=10.0)
  assert result.ok, result.stderr
  assert result.stdout == "[1, 2, 3]\n"


@pytest.mark.parametrize("code", [
    "while True: pass",
    "import time; time.sleep(60)",
    "import os, time; os.close(1); os.close(2); time.sleep(60)",  # pipes close, process lives
], ids=["busy", "sleep", "closed_pipes"])
def test_endless_loop_is_stopped_by_the_timeout(mode, code):
  start = time.monotonic()
  result = run(code, timeout_s=1.0)
  elapsed = time.monotonic() - start
  assert result.timed_out and result.returncode is None and not result.ok
  assert 1.0 <= result.duration_s < 1.0 + SLACK_S
  assert elapsed < 1.0 + SLACK_S


@pytest.mark.parametrize("code", [
    "x = bytearray(4 * 2**30)",
    "x = []\nwhile True: x.append(bytearray(2**20))",
], ids=["4GB_at_once", "growing_list"])
def test_memory_bomb_is_stopped(mode, code):
  start = time.monotonic()
  result = run(code, timeout_s=10.0, memory_mb=256)
  assert time.monotonic() - start < 5
  assert not result.timed_out and result.returncode != 0 and not result.ok
  assert result.memory_exceeded and "MemoryError" in result.stderr


def test_file_size_is_limited(mode):
  result = run(f"""
      import os
      try:
        with open('big', 'wb') as f:
          f.write(b'x' * {2 * sandbox.MAX_FILE_BYTES})
      except OSError as e:
        print(e.strerror, os.path.getsize('big'))
      """)
  assert result.ok, result.stderr
  assert result.stdout == f"File too large {sandbox.MAX_FILE_BYTES}\n"


def test_output_is_truncated(mode):
  result = run("""
      import sys
      sys.stdout.write('x' * (3 << 20))
      sys.stderr.write('y' * (2 << 20))
      """)
  assert result.ok
  for text, total in ((result.stdout, 3 << 20), (result.stderr, 2 << 20)):
    kept, marker = text[:sandbox.MAX_OUTPUT_BYTES], text[sandbox.MAX_OUTPUT_BYTES:]
    assert set(kept) <= {"x", "y"} and len(set(kept)) == 1
    assert f"{total - sandbox.MAX_OUTPUT_BYTES} more bytes dropped" in marker


def test_network_is_blocked(mode):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    result = run(f"""
        import socket
        try:
          socket.create_connection(('127.0.0.1', {port}), timeout=2).close()
          print('connected')
        except OSError as e:
          print('blocked', type(e).__name__, e)
        """)
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
      server.accept()
  assert result.ok, result.stderr
  assert result.stdout.startswith("blocked"), result.stdout
  if mode == "rlimits":
    assert "PermissionError" in result.stdout  # the Python-level guard, not a refused connection


def test_environment_is_minimal_and_interpreter_isolated(mode, monkeypatch):
  monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
  monkeypatch.setenv("PYTHONPATH", str(REPO))
  monkeypatch.setenv("SECRET_TOKEN", "hunter2")
  result = run("""
      import os, sys
      print(sorted(os.environ))
      print(os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd())
      print(sys.flags.isolated, sys.flags.no_site, [p for p in sys.path if 'site-packages' in p])
      import reasonjax
      """)
  lines = result.stdout.splitlines()
  assert lines[0] == str(sorted(["HOME", "LANG", "LC_ALL", "MALLOC_ARENA_MAX", "PATH", "TMPDIR"]))
  assert lines[1:] == ["True", "1 1 []"]
  assert "ModuleNotFoundError: No module named 'reasonjax'" in result.stderr


def test_temp_dir_is_removed_afterwards(mode, private_tmp):
  result = run("""
      import os
      os.makedirs('a/b')
      open('a/b/f.txt', 'w').write('data')
      os.chmod('a/b', 0o500)  # the cleanup must cope with folders the code locked
      print(os.getcwd())
      """)
  assert result.ok, result.stderr
  cwd = result.stdout.strip()
  assert cwd.startswith(str(private_tmp))
  assert not os.path.exists(cwd)
  assert os.listdir(private_tmp) == []


def test_writes_outside_the_working_directory_fail(namespaces, tmp_path):
  outside = pathlib.Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-outside-"))
  try:
    outside.chmod(0o755)
    targets = [outside / "f.txt", REPO / "sandbox-escape.txt",
               pathlib.Path("/tmp/sandbox-escape.txt"), pathlib.Path("/etc/sandbox-escape.txt")]
    targets = [t for t in targets if not t.exists()]
    result = run(f"""
        for path in {[str(t) for t in targets]}:
          try:
            with open(path, 'w') as f:
              f.write('escaped')
            print('WROTE', path)
          except OSError as e:
            print('denied', path, type(e).__name__)
        with open('inside.txt', 'w') as f:
          f.write('fine')
        print(open('inside.txt').read())
        """)
    assert result.ok, result.stderr
    assert "WROTE" not in result.stdout
    assert result.stdout.count("denied") == len(targets)
    assert result.stdout.rstrip().endswith("fine")
    for target in targets:
      assert not target.exists(), target
  finally:
    for target in outside.iterdir():
      target.unlink()
    outside.rmdir()


def test_code_runs_unprivileged_and_sees_no_host_files(namespaces):
  result = run(f"""
      import os
      print(os.getuid() >= 2**31, os.getgid() >= 2**31)
      try:
        os.setuid(0)
      except PermissionError:
        print('setuid denied')
      print(os.path.exists({str(REPO)!r}), os.path.exists('/var'))
      print(os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
      """)
  assert result.stdout.splitlines() == ["True True", "setuid denied", "False False", "2 [1, 2]"]


def test_process_count_is_capped(namespaces):
  result = run("""
      import os, time
      n = 0
      try:
        while n < 200:
          if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
          n += 1
      except OSError as e:
        print(n, e.errno)
      """, timeout_s=10.0)
  assert result.ok, result.stderr
  forked, errno = map(int, result.stdout.split())
  # The code and its init count too; EAGAIN comes from RLIMIT_NPROC.
  assert forked == sandbox.MAX_PROCESSES - 2 and errno == 11


def test_fork_bomb_and_setsid_leave_no_process_behind(namespaces, private_tmp):
  # Bounded by RLIMIT_NPROC (32 small processes), then the timeout kills the PID namespace.
  result = run("""
      import os
      while True:
        try:
          if os.fork() == 0:
            os.setsid()  # leaves the process group; the PID namespace still holds it
        except OSError:
          pass
      """, timeout_s=2.0)
  assert result.timed_out and result.duration_s < 2.0 + SLACK_S
  assert processes_mentioning(str(private_tmp)) == []


def test_concurrent_runs_are_independent():
  codes = [f"import time; time.sleep(0.2); print({i} * 2)" for i in range(8)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(sandbox.run_python, codes))
  assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(8)]


def test_fallback_is_announced(monkeypatch):
  def refuse(*args):
    raise sandbox.SandboxError("unshare: Operation not permitted")
  monkeypatch.setattr(sandbox, "_run", refuse)
  monkeypatch.setattr(os, "geteuid", lambda: 0)
  with pytest.warns(RuntimeWarning, match="no namespaces.*unshare: Operation not permitted"):
    assert sandbox.isolation.__wrapped__() == "rlimits"


@pytest.mark.parametrize("kwargs, match", [
    ({"code": b"print(1)"}, "must be str"),
    ({"code": "", "timeout_s": 0}, "timeout_s"),
    ({"code": "", "timeout_s": float("inf")}, "timeout_s"),
    ({"code": "", "memory_mb": 8}, "memory_mb"),
    ({"code": "", "memory_mb": 256.0}, "memory_mb"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sandbox.run_python(**kwargs)
