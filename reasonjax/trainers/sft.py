"""Supervised fine-tuning on a task's gold solutions (from scratch or from a checkpoint).

    python -m reasonjax.main --config=configs/sft_arith.py --workdir=runs/sft

Packs prompt + solution sequences (loss on the solution and EOS), trains with the shared loop,
evaluates greedy accuracy and pass@k on the test split, and exports `workdir/hf` and
`workdir/results.json`.
"""

from __future__ import annotations

import functools

import jax
from absl import logging

from reasonjax import models
from reasonjax.data import batching
from reasonjax.trainers import experiment, loop, step as step_lib


def run(config, workdir: str) -> dict:
  """Trains; returns the final evaluation metrics (also in `workdir/results.json`)."""
  task, tokenizer = experiment.task_and_tokenizer(config)
  cfg = experiment.model_config(config.model, tokenizer)
  params = None
  if config.model.get("hf_path"):
    cfg, params = models.load(config.model, jax.random.key(config.seed))
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  examples = [batching.sft_example(tokenizer, task.prompt(p), p.solution) for p in problems]
  batches = batching.batches(
      examples, batch_size=config.batch_size // jax.process_count(), seq_len=config.seq_len,
      pack=config.pack, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  logging.info("SFT: %s, %d training problems, %s parameters", task, len(problems),
               f"{models.param_count(cfg):,}")
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg),
                              label_smoothing=config.label_smoothing, z_loss=config.z_loss)
  state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                            params=params,
                            evaluate=experiment.evaluator(config, cfg, task, tokenizer))
  experiment.export(workdir, cfg, state.params, {"steps": int(state.step), **final})
  return final
