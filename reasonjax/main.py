"""Entry point for every experiment.

    python -m reasonjax.main --config=configs/model_report.py:runlocal --workdir=/tmp/run \
        --config.model.dtype=bfloat16

`config.trainer` names the program to run (see `reasonjax.trainers.TRAINERS`). The config is
locked: an override of a key that does not exist fails before anything runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reasonjax import host_memory, trainers
from reasonjax.trainers import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].",
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _RETAIN.value:
    host_memory.retain_freed_memory()  # Before JAX's backend starts its threads.
  if not flags.FLAGS["verbosity"].present:
    # Libraries (orbax above all) log every save at INFO; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  cache = _CACHE.value
  if cache is None:
    cache = jax.config.jax_compilation_cache_dir or os.path.join("~", ".cache", "reasonjax", "xla")
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache) if cache else None)
  config = _CONFIG.value
  run = trainers.get(config.trainer)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  if os.path.isfile(path):
    with open(path) as f:
      changes = config_changes(json.load(f), json.loads(text))
    if changes:
      # A resumed run with another config continues its checkpoint under the new settings
      # (or fails to restore, if shapes changed): say so before it happens.
      print(f"warning: {path} holds an earlier run's config; this run changes "
            + ", ".join(changes), file=sys.stderr, flush=True)
  with open(path, "w") as f:
    f.write(text)
  logging.info("config:\n%s", config)
  print(f"{config.trainer}: workdir {workdir}", flush=True)
  try:
    run(config, workdir)
  except loop.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
  """'key: old -> new' for every leaf that differs between two nested config dicts."""
  changes = []
  for key in sorted(set(old) | set(new), key=str):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      changes += config_changes(a, b, f"{prefix}{key}.")
    elif a != b:
      changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return changes


def check_overrides(argv: list[str]) -> None:
  """Exits with the valid key names if a `--config.a.b=v` names a key the config lacks.

  ml_collections would fail too, but with a traceback and at best one suggestion.
  """
  overrides = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  files = [a[len("--config="):] for a in argv if a.startswith("--config=")]
  if not overrides or not files:
    return
  path, _, arg = files[-1].partition(":")
  spec = importlib.util.spec_from_file_location("_reasonjax_config", path)
  if spec is None or not os.path.exists(path):
    sys.exit(f"error: --config={files[-1]}: no config file at {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for override in overrides:
    node, walked = config, "config"
    for key in override.split("."):
      keys = node.keys() if hasattr(node, "keys") else []
      if key not in keys:
        sys.exit(f"error: --config.{override}: {walked} has no key {key!r}; valid keys: "
                 f"{sorted(keys) or '(none: ' + walked + ' is a value)'}")
      node, walked = node[key], f"{walked}.{key}"


if __name__ == "__main__":
  check_overrides(sys.argv[1:])
  app.run(main)
