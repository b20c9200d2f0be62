"""Entry point for every experiment.

    python -m reasonjax.main --config=configs/model_report.py:runlocal --workdir=/tmp/run \
        --config.model.dtype=bfloat16

`config.trainer` names the program to run (see `reasonjax.programs.PROGRAMS`). Before anything
runs: the config file must exist (`--help` lists them), it is locked, so an override of a key
that does not exist fails with the valid names, a key renamed in a config module's `RENAMED`
dict still works with a warning, and the trainer checks every name-valued field
(`programs.check_config`). One process at a time trains in a workdir (`reasonjax.workdir`).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reasonjax import (checkpoint, distributed, host_memory, models, programs,
                       workdir as workdir_lib)
from reasonjax.programs import stages
from reasonjax.training import loop

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_catalog(directory: str = CONFIGS_DIR) -> str:
  """One entry per config file in `directory`: its path, first docstring line and variants."""
  lines = []
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    name = os.path.basename(path)
    if name in ("__init__.py", "common.py"):
      continue
    with open(path, encoding="utf-8") as f:
      text = f.read()
    doc = text.split('"""')[1].strip() if text.startswith('"""') else ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    args = next((p for p in paragraphs if p.startswith("Args:")), "")
    lines.append(f"  configs/{name}: {paragraphs[0]}" + (f"\n      {args}" if args else ""))
  return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, path[:arg]. The config files:\n" + config_catalog(),
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Directory of JAX's persistent compilation cache, shared by all runs: a resumed or repeated "
    "run loads the programs it compiled before instead of compiling them again. Empty: off. "
    "Default: JAX's own setting ($JAX_COMPILATION_CACHE_DIR) if any, else "
    "~/.cache/reasonjax/xla.")
_RETAIN = flags.DEFINE_bool(
    "retain_host_memory", True,
    "Keep freed host memory mapped for reuse (`host_memory.retain_freed_memory`). On CPU, XLA "
    "otherwise maps and faults in a fresh temporary buffer every step; resident memory then "
    "stays at its peak.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", distributed.MODES,
    "Join a multi-process job (`reasonjax.distributed`): auto: when the three flags below are "
    "given or a launcher's environment says so (SLURM, Open MPI, a Cloud TPU VM); on: always "
    "(JAX detects what is not given); off: never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _RETAIN.value:
    host_memory.retain_freed_memory()  # Before JAX's backend starts its threads.
  if not flags.FLAGS["verbosity"].present:
    # Libraries (orbax above all) log every save at INFO; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  try:
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if jax.process_index() != 0 and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Process 0 speaks for the job.
  cache = _CACHE.value
  if cache is None:
    cache = jax.config.jax_compilation_cache_dir or os.path.join("~", ".cache", "reasonjax", "xla")
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache) if cache else None)
  config = _CONFIG.value
  try:
    run = programs.get(config.trainer)
    programs.check_config(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    # One process of a multi-process job holds it: on a shared filesystem the others would
    # find it taken.
    with workdir_lib.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
      _run(run, config, workdir)
  except loop.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except USER_ERRORS as e:
    # Each names what went wrong and what to do: a traceback would only bury it.
    sys.exit(f"error: {type(e).__name__}: {e}")


# Errors whose message says all a user needs (the file, the step, what to do).
USER_ERRORS = (workdir_lib.WorkdirLocked, checkpoint.CheckpointError, loop.NonFiniteError,
               models.CheckpointError, stages.SettingsChanged)


def _run(run, config, workdir: str) -> None:
  """Records the config in the workdir (warning about changes) and runs the trainer."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  if jax.process_index() != 0:  # Process 0 records it (the workdir may be shared).
    run(config, workdir)
    return
  if os.path.isfile(path):
    with open(path) as f:
      changes = checkpoint.config_changes(json.load(f), json.loads(text))
    if changes:
      # A resumed run with another config continues its checkpoint under the new settings
      # (or fails to restore, if shapes changed): say so before it happens.
      print(f"warning: {path} holds an earlier run's config; this run changes "
            + ", ".join(changes), file=sys.stderr, flush=True)
  with open(path, "w") as f:
    f.write(text)
  logging.info("config:\n%s", config)
  print(f"{config.trainer}: workdir {workdir}", flush=True)
  run(config, workdir)


def prepare_argv(argv: list[str]) -> list[str]:
  """`argv` with renamed config keys rewritten; exits with a readable message when the config
  file is missing or an override names a key the config lacks.

  ml_collections would fail too, but with a traceback and at best one suggestion. A config
  module may define `RENAMED = {"old.key": "new.key"}`: overrides of an old key (or of a field
  under it) go to the new one, with a warning.
  """
  if any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in argv):
    return argv
  if "--config" in argv[:-1]:  # "--config FILE" -> "--config=FILE"
    i = argv.index("--config")
    argv = argv[:i] + [f"--config={argv[i + 1]}"] + argv[i + 2:]
  files = [a[len("--config="):] for a in argv if a.startswith("--config=")]
  if not files:
    sys.exit("error: --config is required: --config=FILE[:ARG], one of\n" + config_catalog())
  path, _, arg = files[-1].partition(":")
  if not os.path.isfile(path):
    sys.exit(f"error: --config={files[-1]}: no config file at {path!r}; the config files "
             f"are\n{config_catalog()}")
  spec = importlib.util.spec_from_file_location("_reasonjax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  renamed = getattr(module, "RENAMED", {})
  out = []
  for a in argv:
    if a.startswith("--config."):
      key, eq, value = a[len("--config."):].partition("=")
      for old, new in renamed.items():
        if key == old or key.startswith(old + "."):
          print(f"warning: --config.{key} is a renamed key: use --config.{new}{key[len(old):]}",
                file=sys.stderr, flush=True)
          a = f"--config.{new}{key[len(old):]}{eq}{value}"
    out.append(a)
  overrides = [a[len("--config."):].split("=")[0] for a in out if a.startswith("--config.")]
  if not overrides:
    return out
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    sys.exit(f"error: --config={files[-1]}: {e}")
  for override in overrides:
    node, walked = config, "config"
    for key in override.split("."):
      keys = node.keys() if hasattr(node, "keys") else []
      if key not in keys:
        sys.exit(f"error: --config.{override}: {walked} has no key {key!r}; valid keys: "
                 f"{sorted(keys) or '(none: ' + walked + ' is a value)'}")
      node, walked = node[key], f"{walked}.{key}"
  return out


if __name__ == "__main__":
  # ml_collections reads the config overrides from sys.argv itself.
  sys.argv = [sys.argv[0], *prepare_argv(sys.argv[1:])]
  app.run(main)
