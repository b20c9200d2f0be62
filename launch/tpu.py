"""Runs `reasonjax.main` on every worker of a Cloud TPU VM slice, through gcloud.

    T="--name=rj --zone=us-west4-a"
    python -m launch.tpu create $T --accelerator_type=v5litepod-16 --spot   # or reuse it
    python -m launch.tpu install $T                     # this checkout's files, on every worker
    python -m launch.tpu run $T --accelerator_type=v5litepod-16 \
        --config=configs/sft_arith.py --workdir=gs://BUCKET/runs/sft --config.model.dtype=bfloat16
    python -m launch.tpu logs $T                        # follow worker 0's log again
    python -m launch.tpu stop $T                        # SIGTERM: a checkpoint, then exit
    python -m launch.tpu delete $T

Every worker runs the same `python -m reasonjax.main ...`; main calls
`jax.distributed.initialize()`, which on a TPU VM finds the slice's workers by itself, and worker 0
is process 0, the one that logs, writes metrics and exports. A slice of several workers needs a
workdir that all of them read and write: a gs:// bucket (orbax writes checkpoints there directly),
or with --shared_workdir a path every worker mounts. Rerunning `run` resumes from the newest
checkpoint in the workdir.

Each gcloud command is built by a function of its own (`create_command`, `ssh_command`, ...);
`--dry_run` prints them, one shell-quoted command per line, instead of running them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = "reasonjax-src.tar.gz"  # The packed checkout, in /tmp here and in ~ on the workers.
PYTHON = "3.11"  # setup.py's python_requires; TPU VM images (Ubuntu 22.04) ship 3.10.


class LaunchError(ValueError):
  """Bad input, or a slice unlike the one asked for; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Family:
  """A TPU generation as `--accelerator-type=FAMILY-N` names it."""
  per_host: int  # What N counts (TensorCores up to v5p, chips from v5e on) on one worker.
  single_host: tuple[int, ...]  # The sizes N that are one worker.
  version: str  # The runtime (`--version`) Google's docs give for JAX on this generation.
  multi_host: tuple[int, ...] | None = None  # The multi-worker sizes; None: any multiple.


# v2-v5p count TensorCores (2 per chip, 4 chips per worker); v5e and v6e count chips, 8 on the
# single-worker sizes and 4 per worker on the larger ones (v5litepod-16: 4 workers).
FAMILIES = {
    "v2": Family(8, (8,), "tpu-ubuntu2204-base"),
    "v3": Family(8, (8,), "tpu-ubuntu2204-base"),
    "v4": Family(8, (8,), "tpu-ubuntu2204-base"),
    "v5p": Family(8, (8,), "v2-alpha-tpuv5"),
    "v5litepod": Family(4, (1, 4, 8), "v2-alpha-tpuv5-lite", (16, 32, 64, 128, 256)),
    "v6e": Family(4, (1, 4, 8), "v2-alpha-tpuv6e", (16, 32, 64, 128, 256)),
}


def _family(accelerator_type: str) -> tuple[Family, int]:
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
  if not m or m.group(1) not in FAMILIES:
    hint = " (v5e slices are named v5litepod-N)" if accelerator_type.startswith("v5e") else ""
    raise LaunchError(f"unknown accelerator type {accelerator_type!r}{hint}; expected FAMILY-N "
                      f"with FAMILY one of {', '.join(FAMILIES)} (v5litepod-16, v5p-64, ...)")
  return FAMILIES[m.group(1)], int(m.group(2))


def hosts(accelerator_type: str) -> int:
  """The workers of a slice: v5litepod-8 -> 1, v5litepod-16 -> 4, v5p-64 -> 8.

  Raises:
    LaunchError: an unknown generation, or a size it does not come in.
  """
  family, n = _family(accelerator_type)
  if n in family.single_host:
    return 1
  if family.multi_host is not None:
    valid = n in family.multi_host
    sizes = ", ".join(map(str, family.single_host + family.multi_host))
  else:
    valid = n > 0 and n % family.per_host == 0
    sizes = f"multiples of {family.per_host}"
  if not valid:
    raise LaunchError(f"no TPU slice {accelerator_type!r}: the sizes of "
                      f"{accelerator_type.split('-')[0]} are {sizes}")
  return n // family.per_host


def default_version(accelerator_type: str) -> str:
  """The TPU runtime for JAX on this generation (`gcloud ... create --version`)."""
  return _family(accelerator_type)[0].version


def check_workdir(workdir: str, accelerator_type: str, shared: bool = False) -> None:
  """Refuses a workdir that the slice's workers would not all see.

  A gs:// path is always fine. Otherwise the path must be absolute (or start with ~/): a relative
  one would land in the code directory, which `install` replaces. On a slice of several workers a
  local path gives each worker checkpoints of its own, so only a mount that all of them share
  (--shared_workdir, an absolute path) will do.
  """
  num_hosts = hosts(accelerator_type)
  if workdir.startswith("gs://"):
    if not workdir[5:].strip("/"):
      raise LaunchError(f"--workdir={workdir}: name a bucket, gs://BUCKET/runs/NAME")
    return
  if not workdir.startswith(("/", "~/")):
    raise LaunchError(f"--workdir={workdir}: give gs://BUCKET/..., or an absolute path (/... or "
                      "~/...): a relative one would be inside the code directory that `install` "
                      "replaces")
  if num_hosts > 1 and not shared:
    raise LaunchError(
        f"--workdir={workdir}: a {accelerator_type} slice has {num_hosts} workers, which must all "
        "read and write one workdir (checkpoints, metrics, the exports): give gs://BUCKET/..., or "
        "a path that every worker mounts (NFS, Filestore, gcsfuse) with --shared_workdir")
  if shared and not workdir.startswith("/"):
    raise LaunchError(f"--workdir={workdir}: with --shared_workdir give the mount's absolute path "
                      "(~ is each worker's own home directory)")


def _check_remote_dir(flag: str, path: str) -> None:
  """A directory of its own on the workers (install replaces the code directory): below ~ or
  at least two levels below /, without `..`."""
  parts = [p for p in path.split("/") if p]
  if not path.startswith(("~/", "/")) or ".." in parts or len(parts) < 2:
    raise LaunchError(f"--{flag}={path}: give a directory of its own, such as ~/reasonjax or "
                      "/opt/reasonjax (install replaces the code directory)")


def remote_path(path: str) -> str:
  """`path` quoted for a worker's shell, a leading ~/ kept as that worker's home directory."""
  if not path.startswith("~/"):
    return shlex.quote(path)
  rest = path[2:]
  if re.search(r'[$`"\\!]', rest):  # What is special inside double quotes.
    return '"$HOME"/' + shlex.quote(rest)
  return f'"$HOME/{rest}"'


@dataclasses.dataclass(frozen=True)
class Tpu:
  """Which slice: its name, zone and (optionally) project."""
  name: str
  zone: str
  project: str | None = None

  def flags(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def describe_command(tpu: Tpu) -> list[str]:
  """Prints the slice's accelerator type and state (READY, PREEMPTED, ...); fails if absent."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "describe", tpu.name, *tpu.flags(),
          "--format=value(acceleratorType,state)"]


def create_command(tpu: Tpu, accelerator_type: str, version: str | None = None,
                   provisioning: str | None = None) -> list[str]:
  """Creates the slice; `provisioning` is None (on demand), "spot", "preemptible" or "reserved"."""
  hosts(accelerator_type)
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", tpu.name, *tpu.flags(),
         f"--accelerator-type={accelerator_type}",
         f"--version={version or default_version(accelerator_type)}"]
  if provisioning not in (None, "spot", "preemptible", "reserved"):
    raise LaunchError(f"provisioning {provisioning!r}; expected spot, preemptible or reserved")
  return cmd + ([f"--{provisioning}"] if provisioning else [])


def ssh_command(tpu: Tpu, worker: str, script: str) -> list[str]:
  """Runs the shell `script` on `worker` ("all", or an index); on all of them at once."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, *tpu.flags(),
          f"--worker={worker}", f"--command={script}"]


def scp_command(tpu: Tpu, local: str, remote: str) -> list[str]:
  """Copies the file `local` to `remote` (relative to the home directory) on every worker."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{tpu.name}:{remote}",
          *tpu.flags(), "--worker=all"]


def delete_command(tpu: Tpu, yes: bool = False) -> list[str]:
  """Deletes the slice (gcloud asks first unless `yes`)."""
  return (["gcloud", "compute", "tpus", "tpu-vm", "delete", tpu.name, *tpu.flags()]
          + (["--quiet"] if yes else []))


def install_script(source: str, code_dir: str, venv: str, *, extras: str = "tpu",
                   python: str = PYTHON, git_url: str | None = None, git_ref: str | None = None,
                   wheel: str | None = None) -> str:
  """The shell script that installs the package on a worker.

  It replaces `code_dir` with the code (`source`: "local", the archive that install copied to
  ~; "git", a clone of `git_url` at `git_ref`; "wheel", only a link to the wheel's configs),
  makes the virtual environment `venv` with `python` (uv fetches it: the images have 3.10) and
  installs the package with its `extras` (tpu: jax[tpu], the pinned ranges of setup.py).
  """
  code, py = remote_path(code_dir), remote_path(f"{venv}/bin/python")
  lines = ["set -e", 'export PATH="$HOME/.local/bin:$PATH"',
           "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh",
           f"rm -rf {code}"]
  if source == "local":
    lines += [f"mkdir -p {code}", f'tar -xzf "$HOME"/{ARCHIVE} -C {code}',
              f'rm -f "$HOME"/{ARCHIVE}']
    package = "-e " + remote_path(f"{code_dir}[{extras}]")
  elif source == "git":
    if not git_url:
      raise LaunchError("--source=git needs --git_url")
    lines.append(f"git clone {shlex.quote(git_url)} {code}")
    if git_ref:
      lines.append(f"git -C {code} checkout {shlex.quote(git_ref)}")
    package = "-e " + remote_path(f"{code_dir}[{extras}]")
  elif source == "wheel":
    if not wheel:
      raise LaunchError("--source=wheel needs --wheel")
    # A PEP 508 direct reference: the only spelling that puts extras on a wheel file.
    package = f'"reasonjax[{extras}] @ file://$HOME/"{shlex.quote(os.path.basename(wheel))}'
  else:
    raise LaunchError(f"--source={source}; expected local, git or wheel")
  lines += [f"[ -x {py} ] || uv venv --python {shlex.quote(python)} {remote_path(venv)}",
            f"uv pip install --python {py} {package}"]
  if source == "wheel":
    # `--config=configs/x.py` is read relative to the run's directory: point it at the wheel's.
    find = "import configs, os; print(os.path.dirname(configs.__file__))"
    lines += [f"mkdir -p {code}", f"ln -sfn \"$({py} -c {shlex.quote(find)})\" {code}/configs"]
  show = ('import socket, jax, reasonjax; '
          'print(socket.gethostname() + ": installed reasonjax, jax " + jax.__version__)')
  return "\n".join(lines + [f"{py} -c {shlex.quote(show)}"])


def _alive(pid_file: str) -> str:
  """A shell test: the pid in `pid_file` is a live reasonjax.main (not a reused pid, a zombie)."""
  return f'grep -qa reasonjax.main /proc/"$(cat {pid_file} 2>/dev/null)"/cmdline 2>/dev/null'


def run_script(config: str, workdir: str, main_args: list[str], *, code_dir: str, venv: str,
               log_dir: str, env: dict[str, str] | None = None) -> str:
  """The shell script that starts `python -m reasonjax.main` on a worker and returns at once.

  The run goes on after the ssh session (nohup), its output in `log_dir`/main.log (the previous
  run's in main.log.prev), its pid in `log_dir`/main.pid; it refuses to start over a live run.
  """
  log, pid = remote_path(f"{log_dir}/main.log"), remote_path(f"{log_dir}/main.pid")
  # --distributed=on: JAX asks the VM's metadata server for the slice's workers.
  command = [remote_path(f"{venv}/bin/python"), "-m", "reasonjax.main", "--distributed=on",
             "--config=" + remote_path(config), "--workdir=" + remote_path(workdir),
             *map(shlex.quote, main_args)]
  lines = ["set -e", f"mkdir -p {remote_path(log_dir)}",
           f"if {_alive(pid)}; then",
           f'  echo "$(hostname): a run is going on (pid $(cat {pid})): stop it first" >&2',
           "  exit 1", "fi",
           f"cd {remote_path(code_dir)}",
           # print() output reaches the log as it happens, not in 8 KB blocks.
           "export PYTHONUNBUFFERED=1"]
  lines += [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
  lines += [f"if [ -f {log} ]; then mv -f {log} {log}.prev; fi",
            f"nohup {' '.join(command)} > {log} 2>&1 < /dev/null &",
            f"echo $! > {pid}",
            f'echo "$(hostname): started reasonjax.main, pid $!, log {log_dir}/main.log"']
  return "\n".join(lines)


def stop_script(log_dir: str, timeout_s: int) -> str:
  """The shell script that stops a worker's run: SIGTERM (main saves a checkpoint and exits),
  then SIGKILL if it is still running after `timeout_s` seconds."""
  pid = remote_path(f"{log_dir}/main.pid")
  return "\n".join([
      f"if ! {_alive(pid)}; then",
      '  echo "$(hostname): no run going on"', f"  rm -f {pid}", "  exit 0", "fi",
      f"p=$(cat {pid})", 'kill -TERM "$p"',
      f'echo "$(hostname): SIGTERM to pid $p, waiting up to {timeout_s} s for its checkpoint"',
      "i=0",
      f"while {_alive(pid)}; do",
      f'  if [ "$i" -ge {int(timeout_s)} ]; then',
      f'    echo "$(hostname): still running after {timeout_s} s: SIGKILL" >&2',
      '    kill -KILL "$p"', "    break", "  fi",
      "  sleep 1", "  i=$((i + 1))", "done",
      f"rm -f {pid}", 'echo "$(hostname): stopped"'])


def tail_script(log_dir: str, lines: str = "+1") -> str:
  """The shell script that prints a worker's log from `lines` (tail -n) and follows it until its
  run ends."""
  log, pid = remote_path(f"{log_dir}/main.log"), remote_path(f"{log_dir}/main.pid")
  n = shlex.quote(lines)
  return "\n".join([f"if [ -f {pid} ]; then",
                    f'  exec tail -n {n} -F --pid="$(cat {pid})" {log}',
                    "fi", f"exec tail -n {n} {log}"])


def pack_tree(repo: str, path: str) -> int:
  """Writes `repo`'s files as git sees them (tracked ones, and untracked ones that are not
  ignored: no runs/, no caches) to the .tar.gz `path`; returns how many files it holds."""
  out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, check=True)
  names = sorted({n for n in out.stdout.decode().split("\0")
                  if n and os.path.isfile(os.path.join(repo, n))})  # Not files deleted here.
  with tarfile.open(path, "w:gz") as tar:
    for name in names:
      tar.add(os.path.join(repo, name), arcname=name, recursive=False)
  return len(names)


def parse_env(pairs: list[str]) -> dict[str, str]:
  """["KEY=VALUE", ...] -> {KEY: VALUE}."""
  env = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env={pair}: expected KEY=VALUE")
    env[key] = value
  return env


class Shell:
  """Runs commands, or with `dry_run` prints them (shlex-quoted, one per line, notes as #)."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def run(self, cmd: list[str]) -> None:
    if self.dry_run:
      print(shlex.join(cmd), flush=True)
    else:
      subprocess.run(cmd, check=True)

  def note(self, text: str) -> None:
    print(f"# {text}", file=sys.stdout if self.dry_run else sys.stderr, flush=True)


def _create(args, tpu: Tpu, shell: Shell) -> None:
  describe = describe_command(tpu)
  create = create_command(tpu, args.accelerator_type, args.version, args.provisioning)
  if shell.dry_run:
    shell.run(describe)
    shell.note(f"only if the describe finds no TPU named {tpu.name}:")
    shell.run(create)
    return
  found = subprocess.run(describe, capture_output=True, text=True)
  if found.returncode != 0:  # Absent (or gcloud can't see it: create then says why).
    shell.run(create)
    return
  accelerator_type, state = (found.stdout.split() + ["", ""])[:2]
  if accelerator_type != args.accelerator_type:
    raise LaunchError(f"TPU {tpu.name} exists in {tpu.zone} as {accelerator_type or '?'}, not "
                      f"{args.accelerator_type}: pick another --name, or delete it first")
  if state != "READY":
    raise LaunchError(f"TPU {tpu.name} exists but is {state or '?'} (a preempted spot or "
                      "preemptible slice does not restart): delete it, then create it again")
  shell.note(f"reusing TPU {tpu.name} ({accelerator_type}, READY)")


def _install(args, tpu: Tpu, shell: Shell) -> None:
  _check_remote_dir("code_dir", args.code_dir)
  _check_remote_dir("venv", args.venv)
  script = install_script(args.source, args.code_dir, args.venv, extras=args.extras,
                          python=args.python, git_url=args.git_url, git_ref=args.git_ref,
                          wheel=args.wheel)
  if args.source == "local":
    archive = os.path.join(tempfile.gettempdir(), ARCHIVE)
    if shell.dry_run:
      shell.note(f"pack {REPO} (git ls-files --cached --others --exclude-standard) into {archive}")
    else:
      shell.note(f"packed {pack_tree(REPO, archive)} files of {REPO} into {archive}")
    shell.run(scp_command(tpu, archive, ARCHIVE))
  elif args.source == "wheel":
    if not shell.dry_run and not os.path.isfile(args.wheel):
      raise LaunchError(f"--wheel={args.wheel}: no such file")
    shell.run(scp_command(tpu, args.wheel, os.path.basename(args.wheel)))
  shell.run(ssh_command(tpu, "all", script))


def _run(args, tpu: Tpu, shell: Shell, main_args: list[str]) -> None:
  check_workdir(args.workdir, args.accelerator_type, args.shared_workdir)
  for flag in ("code_dir", "venv", "log_dir"):
    _check_remote_dir(flag, getattr(args, flag))
  script = run_script(args.config, args.workdir, main_args, code_dir=args.code_dir,
                      venv=args.venv, log_dir=args.log_dir, env=parse_env(args.env))
  shell.run(ssh_command(tpu, "all", script))
  if not args.detach:
    _stream(tpu, shell, tail_script(args.log_dir, "+1"), "0")


def _stream(tpu: Tpu, shell: Shell, script: str, worker: str) -> None:
  shell.note(f"worker {worker}'s log (worker 0 is process 0); Ctrl-C ends the stream, not the run")
  try:
    shell.run(ssh_command(tpu, worker, script))
  except KeyboardInterrupt:
    shell.note("stream ended; the run goes on (`stop` stops it)")


def _parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument("--name", required=True, help="the TPU VM (slice) name")
  common.add_argument("--zone", required=True, help="e.g. us-west4-a (where the quota is)")
  common.add_argument("--project", help="default: gcloud's core/project")
  common.add_argument("--dry_run", action="store_true",
                      help="print the gcloud commands instead of running them")
  paths = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  paths.add_argument("--code_dir", default="~/reasonjax",
                     help="the code on each worker, replaced by install; runs start in it")
  paths.add_argument("--venv", default="~/.venvs/reasonjax", help="virtual env on each worker")
  logs = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  logs.add_argument("--log_dir", default="~/reasonjax-logs",
                    help="each worker's main.log and main.pid")

  parser = argparse.ArgumentParser(prog="python -m launch.tpu", allow_abbrev=False,
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="action", required=True)
  p = sub.add_parser("create", parents=[common], allow_abbrev=False,
                     help="create the slice, or reuse a READY one of the same type")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16, v5p-64, v6e-8")
  p.add_argument("--version", help="TPU runtime; default: the one Google gives for JAX")
  kind = p.add_mutually_exclusive_group()
  for name in ("spot", "preemptible", "reserved"):
    kind.add_argument(f"--{name}", dest="provisioning", action="store_const", const=name)

  p = sub.add_parser("install", parents=[common, paths], allow_abbrev=False,
                     help="install the package (with jax[tpu]) on every worker")
  p.add_argument("--source", choices=("local", "git", "wheel"), default="local",
                 help="local: this checkout's files (tracked and untracked, not ignored); git: "
                      "a clone of --git_url; wheel: --wheel, a built wheel")
  p.add_argument("--git_url")
  p.add_argument("--git_ref", help="branch, tag or commit to check out (default: the clone's)")
  p.add_argument("--wheel", help="path of a reasonjax wheel (python -m build --wheel)")
  p.add_argument("--extras", default="tpu", help="setup.py extras to install")
  p.add_argument("--python", default=PYTHON, help="the venv's Python version (uv installs it)")

  text = ("start `python -m reasonjax.main` on every worker, follow worker 0's log; "
          "--config.KEY=VALUE flags and anything after -- go to reasonjax.main")
  p = sub.add_parser("run", parents=[common, paths, logs], allow_abbrev=False, help=text,
                     description=text)
  p.add_argument("--accelerator_type", required=True,
                 help="the slice's type (how many workers share the workdir)")
  p.add_argument("--config", required=True, help="FILE[:ARG], relative to --code_dir")
  p.add_argument("--workdir", required=True,
                 help="gs://BUCKET/runs/NAME: every worker reads and writes it (checkpoints, "
                      "metrics); a local path only on a single-worker slice")
  p.add_argument("--shared_workdir", action="store_true",
                 help="--workdir is an absolute path that every worker mounts (NFS, gcsfuse)")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the run (repeatable)")
  p.add_argument("--detach", action="store_true", help="start the run, don't follow its log")

  p = sub.add_parser("logs", parents=[common, logs], allow_abbrev=False,
                     help="follow a worker's log until its run ends")
  p.add_argument("--worker", type=int, default=0)
  p.add_argument("--lines", type=int, default=100, help="lines to print before following")

  p = sub.add_parser("stop", parents=[common, logs], allow_abbrev=False,
                     help="SIGTERM the run on every worker (it saves a checkpoint), wait for it")
  p.add_argument("--timeout_s", type=int, default=600, help="then SIGKILL")

  p = sub.add_parser("delete", parents=[common], allow_abbrev=False,
                     help="delete the slice (`stop` first keeps the last steps)")
  p.add_argument("--yes", action="store_true", help="don't ask")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args, unknown, passthrough = launch.parse(parser, argv)
  # main's own config overrides pass through as they are; anything else is a typo.
  bad = [a for a in unknown if not (args.action == "run" and a.startswith("--config."))]
  if bad or (passthrough and args.action != "run"):
    parser.error(f"unrecognized arguments: {' '.join(bad or passthrough)}")
  tpu = Tpu(args.name, args.zone, args.project)
  shell = Shell(args.dry_run)
  try:
    if args.action == "create":
      _create(args, tpu, shell)
    elif args.action == "install":
      _install(args, tpu, shell)
    elif args.action == "run":
      _run(args, tpu, shell, [*unknown, *passthrough])
    elif args.action == "logs":
      _check_remote_dir("log_dir", args.log_dir)
      _stream(tpu, shell, tail_script(args.log_dir, str(args.lines)), str(args.worker))
    elif args.action == "stop":
      _check_remote_dir("log_dir", args.log_dir)
      shell.run(ssh_command(tpu, "all", stop_script(args.log_dir, args.timeout_s)))
    elif args.action == "delete":
      shell.run(delete_command(tpu, args.yes))
  except LaunchError as e:
    sys.exit(f"error: {e}")
  except subprocess.CalledProcessError as e:
    sys.exit(f"error: exit code {e.returncode} from: {shlex.join(e.cmd)[:300]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
