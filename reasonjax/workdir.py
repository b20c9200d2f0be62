"""One run per workdir: an exclusive lock held for the life of the process.

    with workdir.lock("runs/grpo"):      # WorkdirLocked if another process holds it
      trainer.run(config, "runs/grpo")

Two processes training into one workdir would save over each other's checkpoints and interleave
metrics.jsonl (its trim on resume replaces the file while the other process appends to the old
one). The lock is `flock` on `<workdir>/.lock`, which holds the holder's pid and host: the
kernel releases it when the process ends, however it ends, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator

LOCK_FILE = ".lock"


class WorkdirLocked(RuntimeError):
  """Another process holds the workdir's lock; the message names its pid and host."""


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the exclusive lock of `workdir` (created if missing) inside the block.

  Raises:
    WorkdirLocked: at once, when another process holds it.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      raise WorkdirLocked(
          f"{os.path.abspath(workdir)} is in use by another run (pid {holder.get('pid', '?')} "
          f"on host {holder.get('host', '?')}, started with: {holder.get('command', '?')}); "
          "wait for it to end or stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "command": " ".join(sys.argv)}).encode(), 0)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode())
  except (OSError, ValueError):
    return {}
