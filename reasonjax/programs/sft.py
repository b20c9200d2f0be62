"""Supervised fine-tuning on a task's gold solutions (from scratch or from a checkpoint).

    python -m reasonjax.main --config=configs/sft_arith.py --workdir=runs/sft
    python -m reasonjax.main --config=configs/sft_gsm8k.py --workdir=runs/sft_gsm8k \
        --config.init_from=path/to/Qwen2.5-0.5B-Instruct ...

The model is the Hugging Face checkpoint `config.init_from` when set (its architecture; only the
runtime and head fields of `config.model` apply), else a new one of `config.model`'s shape.
`config.model.hf_path` is a deprecated alias of `init_from`.

Packs prompt + solution sequences (loss on the solution and EOS), trains with the shared loop,
evaluates greedy accuracy and pass@k on the test split, and exports `workdir/hf` (parameters and
tokenizer) and `workdir/results.json`.
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
from absl import logging

from reasonjax import models
from reasonjax.data import batching
from reasonjax.models import registry
from reasonjax.training import experiment, loop, step as step_lib


def start_checkpoint(config) -> str:
  """`config.init_from`, or the deprecated `config.model.hf_path` (with a warning); "" for a new
  model."""
  old = config.model.get("hf_path", "")
  if old:
    warnings.warn("config.model.hf_path is deprecated: set config.init_from (a Hugging Face "
                  "folder to start from) instead", FutureWarning, stacklevel=2)
    if config.init_from and config.init_from != old:
      raise ValueError(f"config.init_from={config.init_from!r} and its deprecated alias "
                       f"config.model.hf_path={old!r} disagree; set init_from only")
  return config.init_from or old


def check_config(config) -> None:
  """Raises ValueError unless the run has a model: a Hugging Face folder in `init_from` (or its
  deprecated alias) or a preset shape in `config.model`."""
  init_from = start_checkpoint(config)
  if init_from and not os.path.isfile(os.path.join(init_from, "config.json")):
    raise ValueError(f"config.init_from={init_from!r}: no config.json there; expected a Hugging "
                     "Face checkpoint folder")
  if not init_from and not config.model.get("preset"):
    raise ValueError("config.init_from is empty and config.model names no preset: set "
                     "--config.init_from to a Hugging Face checkpoint folder")


def run(config, workdir: str) -> dict:
  """Trains on the task's gold solutions; returns the final evaluation metrics (also in
  `workdir/results.json`)."""
  check_config(config)
  task = experiment.task_and_tokenizer(config)[0]
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  return train_on(config, workdir, [(p, p.solution) for p in problems])


def train_on(config, workdir: str, solutions) -> dict:
  """Trains on `solutions`, [(problem, solution text)] (e.g. a reward model's choices), from
  `init_from` or a new model; with `config.kl_weight` > 0 the loss adds
  kl_weight * log(1 + KL(start || policy)), the start being the `init_from` checkpoint.
  Evaluates, exports `workdir/hf`; returns the final evaluation metrics."""
  check_config(config)
  init_from = start_checkpoint(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  params = None
  if init_from:
    # The checkpoint fixes the architecture: config.model's shape fields (sft_arith's preset
    # for training from scratch) do not apply to it.
    kept = registry.RUNTIME_FIELDS + registry.HEAD_FIELDS
    section = {k: v for k, v in config.model.items() if k in kept} | {"hf_path": init_from}
    cfg = experiment.model_config(section, tokenizer)
    cfg, params = models.load(section, jax.random.key(config.seed))
  else:
    cfg = experiment.model_config(config.model, tokenizer)
  kl_weight = config.get("kl_weight", 0.0)
  if kl_weight and params is None:
    raise ValueError(f"config.kl_weight={kl_weight}: a KL term needs a starting policy to stay "
                     "near; set config.init_from")
  examples = [batching.sft_example(tokenizer, task.prompt(p), text) for p, text in solutions]
  batches = batching.batches(
      examples, batch_size=config.batch_size // jax.process_count(), seq_len=config.seq_len,
      pack=config.pack, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  logging.info("SFT: %s, %d training solutions, %s parameters", task, len(examples),
               f"{models.param_count(cfg):,}")
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg),
                              label_smoothing=config.label_smoothing, z_loss=config.z_loss,
                              kl_weight=kl_weight)
  state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                            params=params, frozen=params if kl_weight else None,
                            evaluate=experiment.evaluator(config, cfg, task, tokenizer))
  experiment.export(workdir, cfg, state.params, {"steps": int(state.step), **final},
                    tokenizer=tokenizer)
  return final
