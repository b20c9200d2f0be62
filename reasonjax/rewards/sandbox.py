"""Runs model-written Python in a sandbox: `run_python(code) -> Result`.

Methods that execute programs a model wrote (self-correction with programs, tool use, unit-test
rewards) call `run_python` and never `exec`. Each call runs the code in a fresh interpreter
(`sys.executable -I -S`) in a new session, with resource limits, a minimal environment, a wall-clock
timeout enforced by this process (the whole process group is killed) and stdout/stderr captured up
to `MAX_OUTPUT_BYTES` each. `-I` keeps PYTHON* variables, the user site and the script's folder out
of `sys.path`; `-S` skips `site`: the code sees the standard library only, no `.pth` file runs at
start-up, and start-up is faster and smaller. (`exit()`/`quit()`, which `site` defines and models
call, are provided.)

Isolation, strongest first; `isolation()` says which one this machine gets:

* "namespaces" (Linux, root with CAP_SYS_ADMIN; probed once): a small bootstrap interpreter
  unshares new mount, network, PID, IPC and UTS namespaces, then builds a root on a tmpfs that holds
  only read-only binds of /usr, /etc, the lib folders and the interpreter's prefix, a few /dev
  nodes, a small /dev/shm, a fresh /proc and a size-capped tmpfs as the working directory, and
  chroots into it. The code runs as a per-call unprivileged uid (>= 2**31, owning no files), with
  no capabilities and `no_new_privs` (setuid binaries cannot regain root), so it cannot write
  anywhere but its working directory and /dev/shm, cannot see the host's files outside the
  read-only binds, and has no network at all (its network namespace holds only a loopback that is
  down). It runs as PID 2 under a tiny init;
  when it exits or is killed, the kernel kills every process left in its PID namespace, so
  `setsid` cannot escape. RLIMIT_NPROC caps its processes and threads, which works because the uid
  is its own (root is exempt from RLIMIT_NPROC).
  Dropping to `nobody` alone is not enough here: on this machine the interpreter lives under
  /root (mode 0700), and an unprivileged user cannot read its standard library (CPython then
  silently falls back to /usr/lib/python3.X, a different build); the private root avoids this.
* "rlimits" (anything else: not root, or root in a container without CAP_SYS_ADMIN): the same
  resource limits, process-group kill and private working directory, plus a Python-level guard that
  replaces the `socket` constructors with ones raising PermissionError. This is much weaker: the
  code runs as the calling user and can write wherever that user can, and can reach the network
  through `ctypes` or a subprocess; setsid'd descendants survive. A warning says so once.

The set-up runs in a bootstrap interpreter between fork and exec, not in `preexec_fn`: Python
documents `preexec_fn` as unsafe when the parent has threads, and JAX processes always do.

Limits per call: RLIMIT_AS = `memory_mb` per process, RLIMIT_CPU = timeout + 1 s (backstop; the
wall clock is enforced here), RLIMIT_FSIZE = `MAX_FILE_BYTES`, RLIMIT_NOFILE = `MAX_OPEN_FILES`,
RLIMIT_CORE = 0, and in "namespaces" mode RLIMIT_NPROC = `MAX_PROCESSES`, a working directory of
`SCRATCH_MB` and `SHM_MB` of /dev/shm. Memory is per process: with forks the total can reach
`MAX_PROCESSES * memory_mb`. There is no seccomp filter; the kernel's attack surface is the usual
one of an unprivileged process.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

MAX_OUTPUT_BYTES = 1 << 20  # per stream; the rest is read and dropped so the child never blocks
MAX_FILE_BYTES = 16 << 20
MAX_OPEN_FILES = 256
MAX_PROCESSES = 32  # processes and threads of the sandboxed uid ("namespaces" mode only)
SCRATCH_MB = 64  # tmpfs working directory ("namespaces" mode only)
SHM_MB = 16  # tmpfs /dev/shm for multiprocessing ("namespaces" mode only)
KILL_GRACE_S = 0.5  # after a kill or exit: how long to keep draining pipes held by stragglers

# Host folders bound read-only into the private root (those that exist; symlinks are copied).
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_DEVICES = ("null", "zero", "full", "random", "urandom")
# Per-call uids: 2**31 + (pid mod 2**22) * 256 + (call mod 256), below 2**32 - 1 ("no uid").
_UID_BASE = 1 << 31
_calls = itertools.count()
_MEMORY_ERROR = re.compile(r"MemoryError|Cannot allocate memory")
# glibc reserves 64 MiB of address space per malloc arena (one per thread), which would turn
# RLIMIT_AS into a limit of a handful of threads.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "MALLOC_ARENA_MAX": "2"}


class SandboxError(RuntimeError):
  """The sandbox itself could not be set up (not an error of the code it runs)."""


@dataclasses.dataclass(frozen=True)
class Result:
  """What a sandboxed run produced.

  Attributes:
    stdout: decoded standard output (UTF-8, invalid bytes replaced), truncated to
      `MAX_OUTPUT_BYTES` with a marker line.
    stderr: the same for standard error (tracebacks land here).
    returncode: exit status, negative for a signal; None when the run timed out.
    timed_out: the wall-clock timeout killed the run.
    memory_exceeded: best effort: stderr shows a MemoryError or ENOMEM.
    duration_s: wall-clock seconds from spawn to reaping, start-up included.
  """
  stdout: str
  stderr: str
  returncode: int | None
  timed_out: bool
  memory_exceeded: bool
  duration_s: float

  @property
  def ok(self) -> bool:
    """The code ran to completion with exit status 0."""
    return self.returncode == 0 and not self.timed_out


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, *,
               stdin: str = "") -> Result:
  """Runs `code` as a Python program in the sandbox and returns its output.

  Args:
    code: program source, run as `__main__` from a file in the working directory.
    timeout_s: wall-clock limit in seconds, interpreter start-up included (~50 ms). Output the
      code still held in its stdout buffer when killed is lost, as with any killed process.
    memory_mb: address-space limit per process (RLIMIT_AS), >= 16 (the interpreter starts in 16).
    stdin: text fed to the program's standard input.

  Returns:
    A `Result`. Errors of the code (exceptions, timeouts, limits) are reported there.

  Raises:
    ValueError: for a bad argument.
    SandboxError: if the sandbox could not be set up.
  """
  if not isinstance(code, str) or not isinstance(stdin, str):
    raise ValueError(f"code and stdin must be str, got {type(code).__name__} and "
                     f"{type(stdin).__name__}")
  if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
    raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
  if not (isinstance(memory_mb, int) and memory_mb >= 16):
    raise ValueError(f"memory_mb must be an int >= 16, got {memory_mb!r}")
  return _run(code, float(timeout_s), memory_mb, stdin, isolation())


@functools.cache
def isolation() -> str:
  """The isolation this machine gives: "namespaces" or "rlimits" (see the module docstring)."""
  if not sys.platform.startswith("linux"):
    raise SandboxError(f"the sandbox needs Linux (prctl, namespaces), not {sys.platform}")
  if os.geteuid() != 0:
    reason = "not running as root"
  else:
    # Probe with a real run: unshare, mounts or the interpreter inside the root can each fail.
    try:
      probe = _run("import json, socket", 10.0, 256, "", "namespaces")
      if probe.ok:
        return "namespaces"
      reason = f"probe exited {probe.returncode}: {probe.stderr.strip()[-500:]}"
    except SandboxError as e:
      reason = str(e)
  warnings.warn(f"sandbox: no namespaces ({reason}); sandboxed code runs as this user with "
                "resource limits and a Python-level socket guard only, and can write where this "
                "user can", RuntimeWarning, stacklevel=3)
  return "rlimits"


# ----------------------------------------------------------------------------- parent side


def _run(code: str, timeout_s: float, memory_mb: int, stdin: str, mode: str) -> Result:
  """One sandboxed run in `mode`; see `run_python`."""
  tmpdir = tempfile.mkdtemp(prefix="reasonjax-sandbox-")
  err_r = err_w = -1
  try:
    script = os.path.join(tmpdir, "main.py")
    with open(script, "w", encoding="utf-8") as f:
      f.write(code)
    work = os.path.join(tmpdir, "work")
    os.mkdir(work)
    python = os.path.realpath(sys.executable)  # a venv's symlink would need the venv bound too
    cpu_s = math.ceil(timeout_s) + 1
    rlimits = [("RLIMIT_AS", memory_mb << 20), ("RLIMIT_CPU", (cpu_s, cpu_s + 1)),
               ("RLIMIT_FSIZE", MAX_FILE_BYTES), ("RLIMIT_NOFILE", MAX_OPEN_FILES),
               ("RLIMIT_CORE", 0)]
    env = dict(_ENV, HOME=work, TMPDIR=work)
    # Set-up errors come back through this pipe; exec closes it (close-on-exec), so EOF without
    # data means the user's code started.
    err_r, err_w = os.pipe()
    cfg = {"mode": mode, "parent_pid": os.getpid(), "err_fd": err_w, "work": work,
           "env": env, "rlimits": rlimits,
           "argv": [python, "-I", "-S", "-c", _runner(guard=mode != "namespaces"), script]}
    if mode == "namespaces":
      root = os.path.join(tmpdir, "root")
      os.mkdir(root)
      links, binds = _root_layout(python)
      cfg.update(root=root, script=script, links=links, binds=binds, devices=_DEVICES,
                 root_bytes=len(code.encode()) + (4 << 20), scratch_bytes=SCRATCH_MB << 20,
                 shm_bytes=SHM_MB << 20,
                 uid=_UID_BASE + ((os.getpid() % (1 << 22)) << 8) + next(_calls) % 256)
      cfg["rlimits"].append(("RLIMIT_NPROC", MAX_PROCESSES))
    start = time.monotonic()
    proc = subprocess.Popen([python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmpdir, env=env, start_new_session=True, pass_fds=(err_w,))
    os.close(err_w)
    err_w = -1
    try:
      out, err, timed_out = _communicate(proc, stdin.encode(), start + timeout_s)
    finally:
      if proc.returncode is None:  # an exception (e.g. KeyboardInterrupt) left it running
        _kill_group(proc)
        proc.wait()
    duration_s = time.monotonic() - start
    setup_error = _read_all(err_r)
    if setup_error:
      raise SandboxError(f"sandbox set-up failed ({mode}): {setup_error}")
    stdout, stderr = out.text(), err.text()
    return Result(stdout=stdout, stderr=stderr,
                  returncode=None if timed_out else proc.returncode, timed_out=timed_out,
                  memory_exceeded=(not timed_out and proc.returncode != 0
                                   and bool(_MEMORY_ERROR.search(stderr[-2000:]))),
                  duration_s=duration_s)
  finally:
    for fd in (err_r, err_w):
      if fd >= 0:
        os.close(fd)
    _rmtree(tmpdir)


def _root_layout(python: str) -> tuple[list[list[str]], list[str]]:
  """(symlinks [path, target], folders to bind read-only) that make up the private root."""
  links, binds = [], []
  for path in _SYSTEM_PATHS:
    if os.path.islink(path):
      links.append([path, os.readlink(path)])
    elif os.path.isdir(path):
      binds.append(path)
  covered = [os.path.realpath(p) for p in binds]
  for path in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(python)):
    path = os.path.realpath(path)
    if not any(path == c or path.startswith(c + os.sep) for c in covered):
      binds.append(path)
      covered.append(path)
  return links, binds


class _Capture:
  """Keeps the first `MAX_OUTPUT_BYTES` of a stream and counts the rest."""

  def __init__(self):
    self.data = bytearray()
    self.dropped = 0

  def add(self, chunk: bytes):
    keep = max(0, MAX_OUTPUT_BYTES - len(self.data))
    self.data += chunk[:keep]
    self.dropped += len(chunk) - min(keep, len(chunk))

  def text(self) -> str:
    text = self.data.decode("utf-8", errors="replace")
    if self.dropped:
      text += f"\n[sandbox: output truncated, {self.dropped} more bytes dropped]\n"
    return text


def _communicate(proc: subprocess.Popen, data: bytes, deadline: float
                 ) -> tuple[_Capture, _Capture, bool]:
  """Feeds stdin and reads both pipes until EOF or `deadline`; (stdout, stderr, timed_out)."""
  out, err = _Capture(), _Capture()
  sel = selectors.DefaultSelector()
  sel.register(proc.stdout, selectors.EVENT_READ, out)
  sel.register(proc.stderr, selectors.EVENT_READ, err)
  if data:
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
  else:
    proc.stdin.close()
  view, offset = memoryview(data), 0
  timed_out, stop_at = False, None
  try:
    while sel.get_map():
      now = time.monotonic()
      if stop_at is None:
        if now >= deadline:
          timed_out = True
          _kill_group(proc)
          stop_at = now + KILL_GRACE_S
        elif _exited(proc):
          # Descendants may still hold the pipes ("rlimits" mode): end them too.
          _kill_group(proc)
          stop_at = now + KILL_GRACE_S
      elif now >= stop_at:
        break
      for key, _ in sel.select(min((stop_at or deadline) - now, 0.1)):
        if key.fileobj is proc.stdin:
          try:
            offset += os.write(key.fd, view[offset:offset + 65536])
            done = offset >= len(view)
          except BrokenPipeError:  # the code exited or closed stdin without reading it all
            done = True
          if done:
            sel.unregister(proc.stdin)
            proc.stdin.close()
        else:
          chunk = os.read(key.fd, 65536)
          if chunk:
            key.data.add(chunk)
          else:
            sel.unregister(key.fileobj)
  finally:
    sel.close()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
      pipe.close()
  # The pipes can close before the process ends (the code closed stdout and kept running).
  while not _exited(proc):
    if not timed_out and time.monotonic() >= deadline:
      timed_out = True
      _kill_group(proc)
    time.sleep(0.005)
  _kill_group(proc)  # stragglers, while the leader's unreaped pid keeps the group id ours
  proc.wait()
  return out, err, timed_out


def _exited(proc: subprocess.Popen) -> bool:
  """Whether the bootstrap exited, without reaping it (its pid stays ours for killpg)."""
  return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(proc: subprocess.Popen):
  """SIGKILLs the session's process group; the bootstrap is its leader (start_new_session)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read_all(fd: int) -> str:
  """What the bootstrap wrote to the error pipe (all writers have exited by now)."""
  os.set_blocking(fd, False)
  chunks = []
  while True:
    try:
      chunk = os.read(fd, 65536)
    except BlockingIOError:
      break
    if not chunk:
      break
    chunks.append(chunk)
  return b"".join(chunks).decode("utf-8", errors="replace")


def _rmtree(path: str):
  """Removes `path`, also when the code left folders without write or search permission."""
  def make_writable_and_retry(func, p, _):
    os.chmod(os.path.dirname(p), 0o700)
    if os.path.isdir(p) and not os.path.islink(p):
      os.chmod(p, 0o700)
      shutil.rmtree(p, ignore_errors=True)
    else:
      func(p)
  handler = "onexc" if sys.version_info >= (3, 12) else "onerror"
  try:
    shutil.rmtree(path, **{handler: make_writable_and_retry})
  except OSError as e:  # never mask the run's own result or exception
    warnings.warn(f"sandbox: could not remove {path}: {e}", RuntimeWarning, stacklevel=2)


def _runner(guard: bool) -> str:
  """The `-c` program that runs the user's file as __main__ (with the socket guard if asked)."""
  return _RUNNER.replace("#GUARD\n", _GUARD if guard else "")


# ----------------------------------------------------------------------------- child side

# Runs the user's file as __main__. Tracebacks start at the user's code.
_RUNNER = r'''
def _main():
  import builtins, sys
  import __main__
  del __main__._main
  # Without `site` there is no exit()/quit(), and model-written programs call them.
  builtins.exit = builtins.quit = sys.exit
#GUARD
  path = sys.argv[1]
  sys.argv = [path]
  __main__.__file__ = path
  try:
    with open(path, "rb") as f:
      code = compile(f.read(), path, "exec")
    exec(code, __main__.__dict__)
  except SystemExit:
    raise
  except BaseException as e:
    e = e.with_traceback(e.__traceback__.tb_next)  # the traceback printer reads it from `e`
    sys.excepthook(type(e), e, e.__traceback__)
    sys.exit(1)
_main()
'''

# "rlimits" mode only: stops accidental socket use from Python. Not a security boundary (ctypes,
# subprocess and the original class through introspection all get around it).
_GUARD = r'''
  import socket, _socket
  def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
  class _NoSocket(socket.socket):
    __init__ = _no_network
  for module in (socket, _socket):
    module.socket = module.SocketType = _NoSocket
    module.socketpair = module.fromfd = _no_network
  socket.create_connection = socket.create_server = _no_network
'''

# Runs as root (or the calling user) between spawn and the user's interpreter; argv[1] is the JSON
# config from `_run`. Errors go to cfg["err_fd"], which exec closes.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, signal, sys

cfg = json.loads(sys.argv[1])
err_fd = cfg["err_fd"]
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def check(ret, what):
  if ret != 0:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(src, dst, fstype, flags, data=None):
  enc = lambda s: None if s is None else s.encode()
  check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {src} on {dst}")


def prctl(option, value):
  check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl {option}")


def bind_readonly(src, dst, flags=MS_NOSUID | MS_NODEV):
  mount(src, dst, None, MS_BIND)
  # A bind keeps the source's flags; read-only takes a second, remounting call.
  mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def build_root():
  """Private root: read-only binds, /dev nodes, the script, a tmpfs working directory."""
  root = cfg["root"]
  # Nothing mounted below may propagate back to the host's namespace.
  mount(None, "/", None, MS_REC | MS_PRIVATE)
  mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={cfg['root_bytes']}")
  for path, target in cfg["links"]:
    os.symlink(target, root + path)
  for path in cfg["binds"]:
    os.makedirs(root + path, exist_ok=True)
    bind_readonly(path, root + path)
  os.mkdir(root + "/dev")
  for name in cfg["devices"]:
    open(f"{root}/dev/{name}", "w").close()
    bind_readonly(f"/dev/{name}", f"{root}/dev/{name}", flags=MS_NOSUID)  # nodev would deny them
  uid = cfg["uid"]
  # multiprocessing's locks and queues need a POSIX shared-memory folder.
  os.mkdir(root + "/dev/shm")
  mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
        f"mode=0700,uid={uid},gid={uid},size={cfg['shm_bytes']}")
  os.symlink("/proc/self/fd", root + "/dev/fd")
  for i, name in enumerate(("stdin", "stdout", "stderr")):
    os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
  os.mkdir(root + "/proc")
  os.makedirs(root + cfg["work"])
  mount("tmpfs", root + cfg["work"], "tmpfs", MS_NOSUID | MS_NODEV,
        f"mode=0700,uid={uid},gid={uid},size={cfg['scratch_bytes']}")
  with open(cfg["script"], "rb") as src, open(root + cfg["script"], "wb") as dst:
    dst.write(src.read())
  os.chmod(root + cfg["script"], 0o444)
  mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def limits():
  for name, value in cfg["rlimits"]:
    soft, hard = value if isinstance(value, list) else (value, value)
    resource.setrlimit(getattr(resource, name), (soft, hard))


def exec_user():
  limits()
  prctl(PR_SET_NO_NEW_PRIVS, 1)
  os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def drop_privileges():
  uid = cfg["uid"]
  os.setgroups([])
  os.setresgid(uid, uid, uid)
  os.setresuid(uid, uid, uid)
  if os.getuid() != uid or os.geteuid() != uid:
    raise OSError("uid change did not take")


def exit_like(status):
  """Exits with `status` (a waitpid status), re-raising a fatal signal on this process."""
  if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
  os._exit(os.waitstatus_to_exitcode(status))


def init(status_w):
  """PID 1 of the new namespace: runs the user's code as PID 2, reaps orphans, reports status."""
  root = cfg["root"]
  mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  os.chroot(root)
  os.chdir(cfg["work"])
  drop_privileges()
  prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change, so set here
  main = os.fork()
  if main == 0:
    try:
      prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
      exec_user()
    except BaseException as e:
      fail(e)
  os.close(err_fd)
  while True:
    pid, status = os.wait()
    if pid == main:
      break
  # Signals from inside the namespace cannot kill its PID 1, so the status travels by pipe; the
  # kernel kills what is left in the namespace when this process exits.
  os.write(status_w, str(status).encode())
  os._exit(0)


def fail(e):
  os.write(err_fd, f"{type(e).__name__}: {e}".encode()[:4000])
  os._exit(127)


try:
  os.set_inheritable(err_fd, False)
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != cfg["parent_pid"]:  # the parent died before PDEATHSIG was set
    os._exit(127)
  if cfg["mode"] != "namespaces":
    os.chdir(cfg["work"])
    exec_user()
  unshare = getattr(os, "unshare", None) or (lambda flags: check(libc.unshare(flags), "unshare"))
  unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS)
  build_root()
  status_r, status_w = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      os.close(status_r)
      init(status_w)
    except BaseException as e:
      fail(e)
except BaseException as e:
  fail(e)

os.close(err_fd)
os.close(status_w)
_, init_status = os.waitpid(pid, 0)
reported = os.read(status_r, 64)
exit_like(int(reported) if reported else init_status)
'''
