"""Knowledge distillation of a policy into a smaller student (GKD: Agarwal et al. 2024, "On-Policy
Distillation of Language Models").

    python -m reasonjax.main --config=configs/distill_arith.py --workdir=runs/distill

The teacher is the policy of `config.init_from` (or the nested SFT run's export); the student a
new model of `config.student`'s shape with the teacher's tokenizer. Each step takes
`batch_size` problems of the training pool; with probability `distill.on_policy_fraction` (GKD's
lambda) the student samples their completions with its current parameters, otherwise they come
from `distill.source`: the task's gold solutions ("gold", supervised KD on a fixed dataset) or
the teacher's samples ("teacher", sequence-level KD). The loss is the token mean of
`losses.distill.generalized_jsd` between the two models' next-token distributions on the
completion tokens (beta 0: forward KL, 1: reverse KL). A step's draws depend only on the seed
and the step, so a resumed run repeats them. Evaluates the student (and once the teacher) on the
test split; exports the student to `workdir/hf`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reasonjax import models
from reasonjax.data import batching
from reasonjax.losses import distill, tokens
from reasonjax.programs import stages
from reasonjax.sampling import generate_texts, sampling_config
from reasonjax.training import experiment, loop

SOURCES = ("gold", "teacher")


def distill_loss(params, batch, rng, frozen, *, student, teacher, beta: float,
                 temperature: float):
  """Token mean of JSD_beta(teacher || student) on `loss_mask` (batch as `data.batching`'s SFT
  batches, [B, T]); the teacher's parameters are `frozen`. Weight: the distilled tokens."""
  del rng
  kwargs = {"positions": batch["positions"], "segment_ids": batch["segment_ids"]}
  logits = student.apply({"params": params}, batch["inputs"], **kwargs)
  teacher_logits = teacher.apply({"params": frozen}, batch["inputs"], **kwargs)
  mask = batch["loss_mask"]
  per_token = distill.generalized_jsd(logits, teacher_logits, mask, beta=beta,
                                      temperature=temperature)
  loss = tokens.reduce(per_token, mask, "token_mean")
  count = jnp.sum(mask)
  agree = jnp.sum((jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)) * mask)
  return loss, (count, {"loss": loss, "tokens": count,
                        "teacher_agreement": agree / jnp.maximum(count, 1.0),
                        "on_policy": jnp.mean(batch["on_policy"])})


class Sequences:
  """The batch source of `run`: `next_batch(params)` draws step i's problems and completions
  (module docstring) from a generator seeded by (seed, i); `get_state`/`set_state` hold i."""

  def __init__(self, config, task, tokenizer, student, teacher, teacher_params):
    self.config, self.task, self.tokenizer = config, task, tokenizer
    self.student, self.teacher, self.teacher_params = student, teacher, teacher_params
    self.pool = task.generate(config.task.num_train, seed=config.seed, split="train")
    self.rows = config.batch_size // jax.process_count()
    self.step = 0
    self.sampling = sampling_config(dict(config.distill) | {"num_samples": 1}, tokenizer)

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])

  def next_batch(self, params) -> dict[str, np.ndarray]:
    d, i = self.config.distill, self.step
    self.step += 1
    rng = np.random.default_rng([self.config.seed, i])
    picked = rng.choice(len(self.pool), self.config.batch_size, replace=False)
    problems = [self.pool[j] for j in picked]
    prompts = [self.task.prompt(p) for p in problems]
    on_policy = rng.random() < d.on_policy_fraction
    if on_policy or d.source == "teacher":
      model, weights = (self.student, params) if on_policy else (
          self.teacher, self.teacher_params)
      key = jax.random.fold_in(jax.random.key(self.config.seed + 7), i)
      # Every process samples the whole batch (the work spread over the global mesh's
      # devices), so that the draws do not depend on the process count.
      completions = [row[0] for row in generate_texts(model, weights, self.tokenizer, prompts,
                                                      key, self.sampling,
                                                      batch_size=self.config.batch_size)]
    else:
      completions = [p.solution for p in problems]
    start = jax.process_index() * self.rows  # The loop places process i's rows i-th.
    prompts, completions = (x[start:start + self.rows] for x in (prompts, completions))
    examples = [batching.pad_example(batching.sft_example(self.tokenizer, prompt, text),
                                     self.config.seq_len)
                for prompt, text in zip(prompts, completions)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["on_policy"] = np.full(self.rows, float(on_policy), np.float32)
    return batch


def check_config(config) -> None:
  """Raises ValueError naming a bad field of `config.distill` or `config.student`."""
  stages.check_policy_source(config)
  d = config.distill
  if not 0.0 <= d.beta <= 1.0:
    raise ValueError(f"config.distill.beta={d.beta}: expected 0 <= beta <= 1 (0: forward KL, "
                     "1: reverse KL)")
  if not d.loss_temperature > 0:
    raise ValueError(f"config.distill.loss_temperature={d.loss_temperature}: expected > 0")
  if not 0.0 <= d.on_policy_fraction <= 1.0:
    raise ValueError(f"config.distill.on_policy_fraction={d.on_policy_fraction}: expected a "
                     "probability in [0, 1]")
  if not 0 < d.max_new_tokens < config.seq_len:
    raise ValueError(f"config.distill.max_new_tokens={d.max_new_tokens}: expected in (0, "
                     f"seq_len={config.seq_len}), so that prompt + completion fit a row")
  if d.source not in SOURCES:
    raise ValueError(f"config.distill.source={d.source!r}: expected one of {list(SOURCES)}")
  if config.batch_size > config.task.num_train:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds config.task.num_train="
                     f"{config.task.num_train}: a step draws distinct problems of the pool")
  if config.batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={config.batch_size}: expected a multiple of the "
                     f"{jax.process_count()} processes")


def run(config, workdir: str) -> dict:
  """Distils the policy into the student; returns the results (also `workdir/results.json`)."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  _, teacher_cfg, teacher_params = stages.load_policy(config, workdir)
  student_cfg = experiment.model_config(config.student, tokenizer)
  if student_cfg.vocab_size != teacher_cfg.vocab_size:
    raise ValueError(f"config.student.vocab_size={student_cfg.vocab_size}: the teacher's "
                     f"distributions are over {teacher_cfg.vocab_size} tokens; set it equal")
  teacher, student = models.Model(teacher_cfg), models.Model(student_cfg)
  evaluate = experiment.evaluator(config, student_cfg, task, tokenizer)
  teacher_eval = {}
  if evaluate is not None:
    # The same problems and draws as the student's evaluations.
    teacher_eval = stages.json_file(
        os.path.join(workdir, "teacher_eval.json"),
        lambda: experiment.evaluator(config, teacher_cfg, task, tokenizer)(
            teacher_params, jax.random.key(config.seed + 1)))
  logging.info("distilling %s parameters into %s", f"{models.param_count(teacher_cfg):,}",
               f"{models.param_count(student_cfg):,}")
  d = config.distill
  loss_fn = functools.partial(distill_loss, student=student, teacher=teacher, beta=d.beta,
                              temperature=d.loss_temperature)
  source = Sequences(config, task, tokenizer, student, teacher, teacher_params)
  state, final = loop.train(config, workdir, cfg=student_cfg, loss_fn=loss_fn, batches=source,
                            frozen=teacher_params, frozen_cfg=teacher_cfg, evaluate=evaluate)
  results = {"steps": int(state.step), "teacher": teacher_eval, "student": final,
             "teacher_parameters": models.param_count(teacher_cfg),
             "student_parameters": models.param_count(student_cfg)}
  experiment.export(workdir, student_cfg, state.params, results, tokenizer=tokenizer)
  return results
