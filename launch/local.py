"""One reasonjax job as N processes on this machine, talking over 127.0.0.1: what a cluster's
launcher does, for tests and for trying multi-host code on a laptop.

    python -m launch.local --num_processes=2 --devices_per_process=4 -- \
        --config=configs/sft_arith.py:runlocal --workdir=/tmp/sft2

Each process runs `python -m reasonjax.main ARGS --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=I` on `devices_per_process` CPU devices (gloo collectives).
Process 0's output is this command's; the others' go to LOG_DIR/process_<i>.log, printed when a
process fails. SIGTERM or Ctrl-C here is passed on to every process (each saves a checkpoint
and exits); when one process fails, the rest are stopped after `--grace_s`. The exit status is
process 0's, or the first failure's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(main_args: list[str], *, num_processes: int, port: int,
             python: str = sys.executable) -> list[list[str]]:
  """The argv of each process."""
  return [[python, "-m", "reasonjax.main", *main_args, f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={num_processes}", f"--process_id={i}"]
          for i in range(num_processes)]


def environment(base: dict[str, str], devices_per_process: int) -> dict[str, str]:
  """`base` for a CPU process with `devices_per_process` devices. XLA_FLAGS' forced device
  count would override the per-process count, so it is dropped."""
  flags = [f for f in base.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = {k: v for k, v in base.items() if k != "XLA_FLAGS"}
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  return env | {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices_per_process)}


def run(main_args: list[str], *, num_processes: int, devices_per_process: int,
        log_dir: str | None = None, grace_s: float = 60.0, dry_run: bool = False) -> int:
  """Starts the processes and waits for them (module docstring); their exit status."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"--num_processes={num_processes}, --devices_per_process="
                     f"{devices_per_process}: each must be at least 1")
  argvs = commands(main_args, num_processes=num_processes, port=free_port())
  env = environment(dict(os.environ), devices_per_process)
  if dry_run:
    for argv in argvs:
      print(f"JAX_NUM_CPU_DEVICES={devices_per_process} {shlex.join(argv)}")
    return 0
  log_dir = log_dir or tempfile.mkdtemp(prefix="reasonjax_local_")
  os.makedirs(log_dir, exist_ok=True)
  logs = [None] + [open(os.path.join(log_dir, f"process_{i}.log"), "w")
                   for i in range(1, num_processes)]
  procs = [subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
           for argv, log in zip(argvs, logs)]

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    failed_at = None
    while any(p.poll() is None for p in procs):
      if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
        failed_at = time.monotonic()
      if failed_at is not None and time.monotonic() - failed_at > grace_s:
        for p in procs:  # Blocked in a collective with a process that is gone.
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for log in logs[1:]:
      log.close()
  codes = [p.returncode for p in procs]
  for i in range(1, num_processes):
    if codes[i]:
      with open(os.path.join(log_dir, f"process_{i}.log")) as f:
        print(f"--- process {i} exited with {codes[i]}; its log ends:\n{f.read()[-3000:]}",
              file=sys.stderr)
  return codes[0] or next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   usage="%(prog)s [options] -- MAIN_ARGS")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="CPU devices per process")
  parser.add_argument("--log_dir", default=None,
                      help="where processes 1.. write their output (default: a new temp dir)")
  parser.add_argument("--grace_s", type=float, default=60.0,
                      help="seconds the others get to finish after one process fails")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  parser.add_argument("main_args", nargs=argparse.REMAINDER,
                      help="after --: the arguments of reasonjax.main")
  args = parser.parse_args(argv)
  main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
  if not main_args:
    parser.error("no reasonjax.main arguments: add -- --config=... --workdir=...")
  return run(main_args, num_processes=args.num_processes,
             devices_per_process=args.devices_per_process, log_dir=args.log_dir,
             grace_s=args.grace_s, dry_run=args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
