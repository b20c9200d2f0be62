"""What the method trainers share: the task, tokenizer and model of a config, the policy to
start from, evaluation on the held-out split, and the exported result.

Config fields read here: tokenizer, task {name, knobs, num_train}, model, eval {num_problems,
max_new_tokens, num_samples, k, temperature, batch_size}, init_from, sft (a nested SFT config),
batch_size, seed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from reasonjax import models
from reasonjax.data import tasks, tokenizers
from reasonjax.models import ModelConfig
from reasonjax.sampling import generate_texts, sampling_config
from reasonjax.trainers import evaluate as evaluate_lib, loop

HF_DIR = "hf"  # Where a finished run exports its parameters (a Hugging Face folder).


def task_and_tokenizer(config) -> tuple[tasks.Task, tokenizers.Tokenizer]:
  """The task named in `config.task` with its knobs, and `config.tokenizer`."""
  task = tasks.get_task(config.task.name, **config.task.knobs)
  return task, tokenizers.load(config.tokenizer)


def model_config(model_section, tokenizer: tokenizers.Tokenizer) -> ModelConfig:
  """`config.model` as a ModelConfig whose vocabulary covers the tokenizer's."""
  cfg = models.config_from(model_section)
  if cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"config.model: vocab_size={cfg.vocab_size} is smaller than the "
                     f"tokenizer's {tokenizer.vocab_size}; set model.vocab_size")
  return cfg


def evaluator(config, cfg: ModelConfig, task: tasks.Task, tokenizer: tokenizers.Tokenizer):
  """`evaluate(params, rng) -> metrics` on `config.eval.num_problems` test problems; None when
  that is 0."""
  if not config.eval.num_problems:
    return None
  problems = task.generate(config.eval.num_problems, seed=config.seed, split="test")
  model = models.Model(cfg)

  def evaluate(params, rng: jax.Array) -> dict[str, float]:
    return evaluate_lib.task_accuracy(
        model, params, tokenizer, task, problems, rng,
        max_new_tokens=config.eval.max_new_tokens, num_samples=config.eval.num_samples,
        k=config.eval.k, temperature=config.eval.temperature,
        batch_size=config.eval.batch_size).metrics

  return evaluate


def export(workdir: str, cfg: ModelConfig, params, results: dict[str, Any],
           tokenizer: tokenizers.Tokenizer | None = None) -> str:
  """Writes the parameters (and the tokenizer's files) as a Hugging Face folder `workdir/hf`,
  and `workdir/results.json`.

  Raises:
    loop.NonFiniteError: a parameter holds a NaN or Inf; nothing is written.
  """
  path = os.path.join(workdir, HF_DIR)
  finite = jax.device_get(_all_finite(params))  # One transfer of a bool per array.
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(finite)
         if not v]
  if bad:
    raise loop.NonFiniteError(
        f"refusing to export {path}: {len(bad)} parameter array(s) hold NaN or Inf "
        f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the run diverged. Its "
        "checkpoints in workdir/checkpoints hold only finite steps.")
  if jax.process_index() == 0:
    models.save_hf(cfg, jax.device_get(params), path)
    if tokenizer is not None:
      tokenizer.save(path)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return path


@jax.jit
def _all_finite(params):
  """bool [] per leaf: every element is finite (on the devices: sharded leaves stay put)."""
  return jax.tree.map(lambda x: jax.numpy.all(jax.numpy.isfinite(x)), params)


def model_section(config, hf_path: str) -> dict[str, Any]:
  """`config.model` (runtime and head fields) on top of the checkpoint at `hf_path`."""
  return dict(config.model) | {"hf_path": hf_path}


def rollouts(section, model, params, task: tasks.Task, tokenizer: tokenizers.Tokenizer,
             problems, rng: jax.Array, *, progress: str | None = None) -> list[list[str]]:
  """`section.num_samples` solutions per problem (a config section with the fields of
  `sampling.sampling_config` and batch_size, e.g. `configs.common.rollouts`)."""
  config = sampling_config(section, tokenizer)
  return generate_texts(model, params, tokenizer, [task.prompt(p) for p in problems], rng,
                        config, batch_size=max(1, section.batch_size // section.num_samples),
                        progress=progress)


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


def policy_path(config, workdir: str) -> str:
  """The policy a method starts from: `config.init_from` (a Hugging Face folder), or else the
  export of the nested `config.sft` run in `workdir/sft`, trained first if it is not there."""
  check_policy_source(config)
  if config.init_from:
    return config.init_from
  sft_dir = os.path.join(workdir, "sft")
  path = os.path.join(sft_dir, HF_DIR)
  if not os.path.isfile(os.path.join(path, "config.json")):
    from reasonjax.trainers import sft  # A nested run of the SFT trainer.
    os.makedirs(sft_dir, exist_ok=True)
    sft.run(config.sft, sft_dir)
  return path
