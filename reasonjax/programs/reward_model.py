"""Outcome, process and hierarchical reward models (ORM, PRM, HRM) on the policy's own samples.

    python -m reasonjax.main --config=configs/prm_arith.py --workdir=runs/prm

The reward model is the policy (an SFT export, `config.init_from`, or trained first by the nested
`config.sft`) with its LM head replaced by a freshly initialised score head. The policy samples
`rollouts.num_samples` solutions per problem; the task labels them at `config.granularity`
(one of GRANULARITIES):

  orm: one label per solution, its final answer's correctness, at the solution's last token.
  prm: one label per step, the task's `check_steps` ground truth, at each step's last token; all
       steps of a solution are scored in one forward pass.
  hrm: the PRM labels over single steps and over merged pairs of consecutive steps
       (`data.step_labels.hierarchical_units`).

`config.label_kind` (one of `losses.reward.LABEL_KINDS`) is the pointwise loss on the labels.

Labelled samples are kept in `workdir/samples.jsonl` (train and test), so a resumed run sees the
same data. Evaluation on the test problems' samples reports the classification accuracy and
AUC of the scores, and best-of-n: the accuracy of the highest-scored of each problem's samples
(a solution's score: the last for orm, the minimum over steps for prm/hrm) against the mean
sample accuracy.

With `config.lora.rank` > 0 the policy's projections train as LoRA adapters and the new score
head trains in full beside them (`models.lora.modules`); `workdir/adapter` is a PEFT folder of
task type SEQ_CLS.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reasonjax import models
from reasonjax.data import batching, step_labels
from reasonjax.losses import reward, tokens
from reasonjax.search import scorers
from reasonjax.programs import stages
from reasonjax.training import experiment, loop

# What a label judges: a whole solution, a step, or steps and merged pairs of steps.
GRANULARITIES = scorers.GRANULARITIES


def reward_loss(params, batch, rng, frozen=None, *, model, granularity: str, kind: str):
  """Mean over marked positions of `reward.LOSSES[granularity]` with label loss `kind`; batch
  from `batching.prm_example` (inputs, step_mask, step_labels, positions, segment_ids: [B, T]).
  Weight: marked positions."""
  del rng, frozen
  scores = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"], method=models.Model.score)
  mask, labels = batch["step_mask"], batch["step_labels"]
  per_position = reward.LOSSES[granularity](scores, mask, labels, kind=kind)
  value = tokens.reduce(per_position, mask, "token_mean")
  count = jnp.sum(mask)
  hits = jnp.sum(((scores > 0) == (labels > 0.5)) * mask)
  return value, (count, {"loss": value, "accuracy": hits / jnp.maximum(count, 1.0),
                         "positive_fraction": jnp.sum(labels * mask) / jnp.maximum(count, 1.0),
                         "labels": count})


def units(task, problem, text: str, granularity: str) -> list[tuple[list[str], list[float]]]:
  """The labelled renderings of one solution: [(steps, labels)], each one example.

  orm: the whole text as one unit; prm: its steps; hrm: `step_labels.hierarchical_units` of
  its steps (the steps, then merged pairs of consecutive steps).
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"unknown reward model granularity {granularity!r}; valid: "
                     f"{GRANULARITIES}")
  if granularity == "orm":
    return [([text.strip()], [float(task.check_answer(problem, text))])]
  steps = task.parse_steps(text)
  if not steps:
    return []
  labels = [float(c) for c in task.check_steps(problem, steps).correct]
  if granularity == "hrm":
    return step_labels.hierarchical_units(steps, labels)
  return [(steps, labels)]


def solution_score(scores: np.ndarray, granularity: str) -> float:
  """A solution's score from its unit scores [n]: the last (orm) or the weakest step."""
  return float(scores[-1] if granularity == "orm" else scores.min())


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2."""
  pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
  if not len(pos) or not len(neg):
    return float("nan")
  greater = (pos[:, None] > neg[None]).mean()
  ties = (pos[:, None] == neg[None]).mean()
  return float(greater + 0.5 * ties)


def _samples(config, workdir, task, tokenizer, policy_cfg, policy_params, split: str):
  """Labelled policy samples of `split`: [{"problem": i, "text", "correct"}], kept on disk."""
  path = os.path.join(workdir, f"samples_{split}.jsonl")
  num = config.task.num_train if split == "train" else config.eval.num_problems
  problems = task.generate(num, seed=config.seed, split=split)
  if os.path.exists(path):
    with open(path) as f:
      return problems, [json.loads(line) for line in f]
  texts = experiment.rollouts(config.rollouts, models.Model(policy_cfg), policy_params, task,
                              tokenizer, problems,
                              jax.random.key(config.seed + (3 if split == "train" else 4)),
                              progress=f"sampling {split} solutions")
  rows = [{"problem": i, "text": t, "correct": task.check_answer(problems[i], t)}
          for i, group in enumerate(texts) for t in group]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  os.replace(tmp, path)
  return problems, rows


def check_config(config) -> None:
  """Raises ValueError for an unknown granularity or label kind: checked before sampling the
  data, not first when the loss is traced."""
  stages.check_policy_source(config)
  if config.granularity not in GRANULARITIES:
    raise ValueError(f"config.granularity={config.granularity!r}; expected one of "
                     f"{GRANULARITIES}")
  if config.label_kind not in reward.LABEL_KINDS:
    raise ValueError(f"config.label_kind={config.label_kind!r}; expected one of "
                     f"{reward.LABEL_KINDS}")


def load(config, policy: str):
  """(cfg, params): the policy at `policy` (a Hugging Face folder) with its LM head replaced by
  a freshly initialised score head."""
  return models.load(experiment.model_section(config, policy) |
                     {"lm_head": False, "score_head": True}, jax.random.key(config.seed))


def train(config, workdir: str, policy: str, examples, *, evaluate=None,
          tokenizer=None) -> dict:
  """Trains a reward model started from `policy` on `examples` (`batching.prm_example`s: soft
  or hard labels where step_mask is set) with the loop fields of `config`, exports it to
  `workdir/hf`; returns the final metrics. evaluate: None, or `cfg -> evaluate(params, rng)
  -> metrics` (the loop's evaluation, made once the model's config is known)."""
  if not examples:
    raise ValueError("no labelled training examples for the reward model")
  cfg, params = load(config, policy)
  batches = batching.batches(
      examples, batch_size=config.batch_size // jax.process_count(), seq_len=config.seq_len,
      pack=config.pack, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  loss_fn = functools.partial(reward_loss, model=models.Model(cfg),
                              granularity=config.granularity, kind=config.label_kind)
  state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                            params=params, evaluate=evaluate(cfg) if evaluate else None)
  experiment.export(workdir, cfg, state.params, {"steps": int(state.step), **final},
                    tokenizer=tokenizer)
  return final


def run(config, workdir: str) -> dict:
  """Labels policy samples, trains the reward model, evaluates; returns the final metrics."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  path, policy_cfg, policy_params = stages.load_policy(config, workdir)
  data = {split: _samples(config, workdir, task, tokenizer, policy_cfg, policy_params, split)
          for split in ("train", "test")}
  del policy_params

  problems, rows = data["train"]
  examples = [batching.prm_example(tokenizer, task.prompt(problems[row["problem"]]), steps,
                                   labels)
              for row in rows
              for steps, labels in units(task, problems[row["problem"]], row["text"],
                                         config.granularity)]
  if not examples:
    raise ValueError("no labelled training samples: the policy's solutions had no steps")
  logging.info("%s: %d training examples", config.granularity, len(examples))
  # Evaluation: the first rendering of each test sample (steps, or the whole text for orm).
  problems, rows = data["test"]
  test = [(row, batching.pad_example(batching.prm_example(
              tokenizer, task.prompt(problems[row["problem"]]), *u[0]), config.seq_len))
          for row in rows
          if (u := units(task, problems[row["problem"]], row["text"], config.granularity))]

  def evaluator(cfg):
    score = scorers.score_fn(models.Model(cfg), config.eval.batch_size)

    def evaluate(params, rng):
      del rng
      scores = score(params, [e for _, e in test])
      flat = np.concatenate(scores)
      labels = np.concatenate([e["step_labels"][e["step_mask"] > 0] for _, e in test])
      best: dict[int, tuple[float, bool]] = {}
      for (row, _), s in zip(test, scores):
        value = solution_score(s, config.granularity)
        if row["problem"] not in best or value > best[row["problem"]][0]:
          best[row["problem"]] = (value, row["correct"])
      return {"accuracy": float(np.mean((flat > 0) == (labels > 0.5))), "auc": auc(flat, labels),
              "best_of_n_accuracy": float(np.mean([c for _, c in best.values()])),
              "sample_accuracy": float(np.mean([row["correct"] for row, _ in test]))}

    return evaluate

  return train(config, workdir, path, examples, evaluate=evaluator, tokenizer=tokenizer)
