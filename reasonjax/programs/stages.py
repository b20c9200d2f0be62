"""The reusable stages programs are composed of, each storing its output in the workdir and
skipped when that output is present, so an interrupted program continues where it stopped.

    path, cfg, params = stages.load_policy(config, workdir)  # init_from, or a nested SFT run
    trees = stages.json_file(f"{workdir}/trees.json", grow)  # made once, then read back
    hf = stages.nested(reward_model.run, rm_config, f"{workdir}/prm")  # a trained export

A stage's output is either a JSON file (written atomically: a crash leaves none or the whole
file; by process 0 of a multi-process job, whose processes make the same value) or a nested program's export `directory/hf`, which that program writes last; a nested
run interrupted before it resumes from its own checkpoints.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from reasonjax import checkpoint, models
from reasonjax.programs import sft
from reasonjax.training import experiment
from reasonjax.training.experiment import HF_DIR


def json_file(path: str, make: Callable[[], Any]) -> Any:
  """The JSON value stored at `path`, or `make()`'s, written there first when absent."""
  if os.path.isfile(path):
    logging.info("stage output %s present: skipping its stage", path)
    with open(path) as f:
      return json.load(f)
  # What a later stage reads back is the stored form (tuples become lists), also on this run.
  value = json.loads(json.dumps(make()))
  if jax.process_index() == 0:  # In a multi-process job every process made the same value.
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(value, f)
    os.replace(tmp, path)
  return value


class SettingsChanged(ValueError):
  """A rerun's settings differ from those its workdir's stages were made with."""


def check_settings(path: str, settings: dict) -> None:
  """Stores `settings` (JSON-able) at `path` on the first run; raises SettingsChanged naming
  every changed field when a later run's differ, so that no stage is skipped for outputs made
  under other settings."""
  stored = json_file(path, lambda: settings)
  changes = checkpoint.config_changes(stored, json.loads(json.dumps(settings)))
  if changes:
    raise SettingsChanged(f"{os.path.dirname(path)} holds stages made with other settings "
                          f"({'; '.join(changes)}): use a new --workdir, or delete the stages "
                          "to redo")


def done(directory: str) -> bool:
  """Whether a nested program finished in `directory`: its export is there."""
  return os.path.isfile(os.path.join(directory, HF_DIR, "config.json"))


def nested(run: Callable[[Any, str], Any], config, directory: str) -> str:
  """`directory/hf`, the export of program `run` with `config` in `directory`, run first unless
  it finished there before."""
  if not done(directory):
    os.makedirs(directory, exist_ok=True)
    run(config, directory)
  else:
    logging.info("%s holds a finished run: skipping it", directory)
  return os.path.join(directory, HF_DIR)


def check_policy_source(config) -> None:
  """Raises ValueError unless the method has a policy to start from: `config.init_from` names a
  Hugging Face folder, or it is empty and `config.sft` is a nested SFT run to make one."""
  if config.init_from:
    if not os.path.isfile(os.path.join(config.init_from, "config.json")):
      raise ValueError(f"config.init_from={config.init_from!r}: no config.json there; "
                       "expected a Hugging Face folder, e.g. an SFT run's workdir/hf")
  elif config.get("sft") is None:
    raise ValueError("config.init_from is empty and the config has no nested SFT run "
                     "(config.sft) to make a policy: set --config.init_from to a Hugging Face "
                     "checkpoint folder")


def policy(config, workdir: str) -> str:
  """The policy a method starts from: `config.init_from` (a Hugging Face folder), or else the
  export of the nested `config.sft` run in `workdir/sft`, trained first if it is not there."""
  check_policy_source(config)
  if config.init_from:
    return config.init_from
  return nested(sft.run, config.sft, os.path.join(workdir, "sft"))


def load_policy(config, workdir: str):
  """(path, cfg, params) of the starting policy (`policy`), with `config.model`'s runtime
  fields."""
  path = policy(config, workdir)
  cfg, params = models.load(experiment.model_section(config, path), jax.random.key(config.seed))
  return path, cfg, params


# What a program's nested runs (a reward model, a GRPO or SFT run on the policy) take from the
# top-level config.
INHERITED = ("seed", "init_from", "tokenizer", "task", "model")


def nested_config(config, name: str, policy: str | None = None):
  """The config of the nested run `config[name]`, with the top level's INHERITED fields, and
  `policy` (a Hugging Face folder) as its init_from; without one, the top level's policy source
  (init_from or the nested SFT run), as `check_config` sees it before the policy exists."""
  section = copy.deepcopy(config[name])
  with section.unlocked():
    for key in INHERITED:
      value = config[key]
      section[key] = copy.deepcopy(value) if hasattr(value, "keys") else value
    if policy is None:
      section.sft = config.get("sft")
      if not config.init_from and section.sft is not None:
        section.model = copy.deepcopy(section.sft.model)  # The policy-to-be's architecture.
    else:
      section.init_from, section.sft = policy, None
  return section
