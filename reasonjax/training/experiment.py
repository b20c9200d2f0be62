"""What the programs share: the task, tokenizer and model of a config, evaluation on the
held-out split, sampling a policy's solutions, and the exported result.

Config fields read here: tokenizer, task {name, knobs, num_train}, model, eval {num_problems,
max_new_tokens, num_samples, k, temperature, batch_size}, seed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from reasonjax import distributed, models
from reasonjax.data import tasks, tokenizers
from reasonjax.models import ModelConfig
from reasonjax.sampling import generate_texts, sampling_config
from reasonjax.training import evaluate as evaluate_lib, loop

HF_DIR = "hf"  # Where a finished run exports its parameters (a Hugging Face folder).


def task_and_tokenizer(config) -> tuple[tasks.Task, tokenizers.Tokenizer]:
  """The task named in `config.task` with its knobs (in the code format of `tasks.with_code`
  with the knobs of `config.task.code`, or the structured format of `tasks.with_format` with
  those of `config.task.format`, when there is one), and `config.tokenizer`."""
  task = tasks.get_task(config.task.name, **config.task.knobs)
  if config.task.get("code") is not None:
    task = tasks.with_code(task, **config.task.code)
  if config.task.get("format") is not None:
    task = tasks.with_format(task, **config.task.format)
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
  # The export is there for every process once this returns (a program reads it next).
  distributed.barrier("export")
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
                        progress=progress, tool=task.tool)
