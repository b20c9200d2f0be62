"""Runs `reasonjax.main` as a multi-node SLURM job: renders an sbatch script and submits it.

    python -m launch.slurm --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \
        --venv=.venv --config=configs/sft_arith.py --workdir=/shared/runs/sft \
        --config.model.dtype=bfloat16 --dry_run          # prints the script; without: sbatch

The script starts one task per node with `srun`, each task seeing all of its node's GPUs, and every
task runs the same `python -m reasonjax.main ...`: main calls `jax.distributed.initialize()`,
which reads the job's shape from SLURM's variables (SLURM_NTASKS, SLURM_PROCID,
SLURM_STEP_NODELIST, SLURM_JOB_ID for the coordinator's port). Task 0 logs, writes metrics and
exports; the workdir must be on a filesystem that all nodes share.

Time limits and preemption: `--signal=TERM@S` has SLURM send SIGTERM to the tasks S seconds
before the time limit; main then saves a checkpoint and exits with 143 (128 + SIGTERM), and the
script requeues the job, which resumes from that checkpoint when it runs again. `--requeue` also
lets SLURM put the job back in the queue after a preemption or a node failure. The output file is
appended to (`--open-mode=append`), so one file holds every restart of the job.

`render` builds the script; it is the one place where its text lives.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys

import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(ValueError):
  """Bad input; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Job:
  """What the sbatch script asks for and runs."""
  config: str  # --config of reasonjax.main, FILE[:ARG], relative to `chdir`.
  workdir: str  # On a filesystem every node mounts.
  main_args: tuple[str, ...] = ()  # Further flags of reasonjax.main (--config.KEY=VALUE, ...).
  nodes: int = 1
  gpus_per_node: int = 8
  partition: str | None = None
  account: str | None = None
  qos: str | None = None
  time: str | None = None  # SLURM's formats: 24:00:00, 2-00:00:00, ...
  job_name: str = "reasonjax"
  cpus_per_task: int | None = None  # The task is the node's only one: all its cores, usually.
  mem: str | None = None  # Per node; "0" is all of it.
  chdir: str = REPO  # The checkout the job runs in (shared with the nodes).
  output: str = "slurm-%x-%j.out"  # Relative to `chdir`; %x: job name, %j: job id.
  venv: str | None = None  # Activated before srun; the tasks inherit its environment.
  setup: tuple[str, ...] = ()  # Shell lines before srun: `module load cuda/12.4`, ...
  env: tuple[tuple[str, str], ...] = ()
  python: str = "python"
  signal_s: int = 120  # SIGTERM this long before the time limit (SLURM may send it 60 s early).
  requeue: bool = True
  sbatch_options: tuple[str, ...] = ()  # More #SBATCH lines: --constraint=h100, --exclusive, ...


def check(job: Job) -> None:
  """Raises LaunchError for a job SLURM or the script would get wrong."""
  if job.nodes < 1:
    raise LaunchError(f"--nodes={job.nodes}: a job needs at least one node")
  if job.gpus_per_node < 1:
    raise LaunchError(f"--gpus_per_node={job.gpus_per_node}: give the GPUs of a node (1 or more)")
  if job.cpus_per_task is not None and job.cpus_per_task < 1:
    raise LaunchError(f"--cpus_per_task={job.cpus_per_task}: 1 or more")
  if job.signal_s < 1:
    raise LaunchError(f"--signal_s={job.signal_s}: the seconds between SIGTERM and the time "
                      "limit, for the checkpoint (1 or more)")
  for key, _ in job.env:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env={key}=...: not a variable name")
  for option in job.sbatch_options:
    if not option.startswith("-"):
      raise LaunchError(f"--sbatch={option}: an sbatch option such as --constraint=h100")
  text = [job.config, job.workdir, job.job_name, job.chdir, job.output, job.python, *job.setup,
          *job.main_args, *job.sbatch_options, *(v for _, v in job.env),
          *(v for v in (job.partition, job.account, job.qos, job.time, job.mem, job.venv) if v)]
  if any("\n" in t for t in text):
    raise LaunchError("a flag holds a newline; each setup line is a flag of its own (--setup)")


def render(job: Job) -> str:
  """The sbatch script of `job`."""
  check(job)
  sbatch = [f"--job-name={job.job_name}", f"--nodes={job.nodes}",
            # One task per node that sees all the node's GPUs: one JAX process per host.
            "--ntasks-per-node=1", f"--gpus-per-node={job.gpus_per_node}"]
  for flag, value in (("cpus-per-task", job.cpus_per_task), ("mem", job.mem),
                      ("partition", job.partition), ("account", job.account), ("qos", job.qos),
                      ("time", job.time)):
    if value is not None:
      sbatch.append(f"--{flag}={value}")
  sbatch += [f"--chdir={job.chdir}", f"--output={job.output}", "--open-mode=append",
             f"--signal=TERM@{job.signal_s}"]
  sbatch += ["--requeue"] if job.requeue else []
  sbatch += list(job.sbatch_options)

  srun = ["srun", "--ntasks-per-node=1", f"--gpus-per-node={job.gpus_per_node}"]
  if job.cpus_per_task is not None:  # srun does not take it from the allocation on every version.
    srun.append(f"--cpus-per-task={job.cpus_per_task}")
  srun += [job.python, "-m", "reasonjax.main", f"--config={job.config}",
           f"--workdir={job.workdir}", *job.main_args]

  lines = ["#!/bin/bash", "# Written by launch/slurm.py (python -m launch.slurm --help)."]
  # sbatch reads #SBATCH lines only up to the first command.
  lines += [f"#SBATCH {option}" for option in sbatch]
  lines.append("")
  if job.venv:
    lines.append(f"source {shlex.quote(os.path.join(job.venv, 'bin', 'activate'))}")
  lines += list(job.setup)
  lines += [f"export {k}={shlex.quote(v)}" for k, v in job.env]
  lines += [
      "# print() output reaches the log as it happens, not in 8 KB blocks.",
      "export PYTHONUNBUFFERED=1",
      "# Under SLURM, jax.distributed.initialize() gives each process the one GPU numbered by its",
      "# SLURM_LOCALID (it assumes a task per GPU); this job's one task per node takes them all.",
      "export JAX_LOCAL_DEVICE_IDS=" + ",".join(map(str, range(job.gpus_per_node))),
      "",
      'echo "$(date): job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on '
      '$SLURM_JOB_NODELIST"',
      shlex.join(srun),
      "rc=$?"]
  if job.requeue:
    lines += [
        "# 143 = 128 + SIGTERM: the tasks were told to stop (--signal, before the time limit) and",
        "# saved a checkpoint; back in the queue, the job resumes from it.",
        'if [ "$rc" -eq 143 ]; then',
        '  echo "$(date): stopped with a checkpoint; requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi"]
  lines.append('exit "$rc"')
  return "\n".join(lines) + "\n"


def submit_command(script_path: str | None = None) -> list[str]:
  """sbatch of the script file, or (None) of the script on its standard input."""
  return ["sbatch", "--parsable"] + ([script_path] if script_path else [])


def _parser() -> argparse.ArgumentParser:
  defaults = Job(config="", workdir="")
  p = argparse.ArgumentParser(prog="python -m launch.slurm", allow_abbrev=False,
                              description=__doc__.split("\n")[0],
                              epilog="--config.KEY=VALUE flags and anything after -- go to "
                                     "reasonjax.main.")
  p.add_argument("--config", required=True, help="FILE[:ARG], relative to --chdir")
  p.add_argument("--workdir", required=True, help="on a filesystem that every node mounts")
  p.add_argument("--nodes", type=int, default=defaults.nodes)
  p.add_argument("--gpus_per_node", type=int, default=defaults.gpus_per_node)
  p.add_argument("--partition")
  p.add_argument("--account")
  p.add_argument("--qos")
  p.add_argument("--time", help="time limit, e.g. 24:00:00 (default: the partition's)")
  p.add_argument("--job_name", default=defaults.job_name)
  p.add_argument("--cpus_per_task", type=int, help="cores of the node's one task")
  p.add_argument("--mem", help="memory per node, e.g. 0 (all of it) or 500G")
  p.add_argument("--chdir", default=defaults.chdir, help="the checkout the job runs in")
  p.add_argument("--output", default=defaults.output, help="the job's log, relative to --chdir")
  p.add_argument("--venv", help="virtual environment to activate, e.g. .venv")
  p.add_argument("--setup", action="append", default=[],
                 help="shell line run before srun, e.g. 'module load cuda' (repeatable)")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the tasks (repeatable)")
  p.add_argument("--python", default=defaults.python)
  p.add_argument("--signal_s", type=int, default=defaults.signal_s,
                 help="SIGTERM this many seconds before the time limit: time for the checkpoint")
  p.add_argument("--norequeue", dest="requeue", action="store_false",
                 help="after that SIGTERM, end the job instead of putting it back in the queue")
  p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                 help="another #SBATCH option, e.g. --constraint=h100 (repeatable)")
  p.add_argument("--script", help="also write the script here (and submit that file)")
  p.add_argument("--dry_run", action="store_true",
                 help="print the script and the sbatch command instead of submitting")
  return p


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args, unknown, passthrough = launch.parse(parser, argv)
  bad = [a for a in unknown if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  try:
    env = []
    for pair in args.env:
      key, sep, value = pair.partition("=")
      if not sep:
        raise LaunchError(f"--env={pair}: expected KEY=VALUE")
      env.append((key, value))
    job = Job(config=args.config, workdir=args.workdir, main_args=(*unknown, *passthrough),
              nodes=args.nodes, gpus_per_node=args.gpus_per_node, partition=args.partition,
              account=args.account, qos=args.qos, time=args.time, job_name=args.job_name,
              cpus_per_task=args.cpus_per_task, mem=args.mem, chdir=args.chdir,
              output=args.output, venv=args.venv, setup=tuple(args.setup), env=tuple(env),
              python=args.python, signal_s=args.signal_s, requeue=args.requeue,
              sbatch_options=tuple(args.sbatch))
    script = render(job)
  except LaunchError as e:
    sys.exit(f"error: {e}")
  command = submit_command(args.script)
  if args.dry_run:
    print(script, end="")
    print(f"# submit: {shlex.join(command)}" + ("" if args.script else " < this script"))
    return 0
  if args.script:
    with open(args.script, "w") as f:
      f.write(script)
  try:
    out = subprocess.run(command, input=None if args.script else script, text=True,
                         capture_output=True, check=True)
  except subprocess.CalledProcessError as e:
    sys.exit(f"error: sbatch failed (exit code {e.returncode}): {e.stderr.strip()}")
  job_id = out.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER".
  print(f"submitted job {job_id} (squeue -j {job_id}); its log: "
        f"{os.path.join(job.chdir, job.output)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
