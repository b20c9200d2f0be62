"""ProcessBench: how well a PRM or HRM finds the first wrong step of model-written solutions
(human labels), optionally after training it on PRM800K phase 1.

    python -m reasonjax.main --config=configs/processbench.py --workdir=runs/processbench \
        --config.reward_model=runs/hrm_gsm8k/rm_hrm/hf --config.data.dir=path/to/processbench
    python -m reasonjax.main --config=configs/processbench.py --workdir=runs/prm800k_hrm \
        --config.init_from=path/to/Qwen2.5-Math-1.5B-Instruct --config.data.dir=... \
        --config.train.path=path/to/phase1_train_plus.stepwise-critic.jsonl.gz

A solution's prediction is its first step scored below the threshold (-1: none); the metric is
ProcessBench's F1, the harmonic mean of the accuracy on erroneous solutions (exact index) and on
error-free ones, per split, with the threshold chosen on a held-out part of each split
(`search.process_bench.evaluate`). The reward model is a reward_model export (a score head on
the decoder; `config.reward_model`), or trained here first from `init_from` on PRM800K phase 1
(`config.train.path`, the stepwise conversion; granularity prm or hrm). A checkpoint with
another head format must be converted to a score head first.

Stages in the workdir: rm/hf (the trained model), scores_<split>.json (every solution's step
scores), process_bench.json and process_bench.md.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from reasonjax import models
from reasonjax.data import batching, process_labels, step_labels, tokenizers
from reasonjax.losses import reward
from reasonjax.programs import reward_model, stages
from reasonjax.search import process_bench, scorers


def check_config(config) -> None:
  """Raises ValueError naming the field: no reward model source, missing files, bad names."""
  train = config.train
  if train.path:
    if not os.path.isfile(train.path):
      raise ValueError(f"config.train.path={train.path!r}: no such file; expected PRM800K's "
                       "stepwise JSONL(.gz)")
    if not os.path.isfile(os.path.join(config.init_from, "config.json")):
      raise ValueError(f"config.init_from={config.init_from!r}: no config.json there; training "
                       "(config.train.path) starts from a Hugging Face checkpoint")
    if train.granularity not in ("prm", "hrm"):
      raise ValueError(f"config.train.granularity={train.granularity!r}; expected 'prm' or "
                       "'hrm'")
    if train.label_kind not in reward.LABEL_KINDS:
      raise ValueError(f"config.train.label_kind={train.label_kind!r}; expected one of "
                       f"{reward.LABEL_KINDS}")
  elif not os.path.isfile(os.path.join(config.reward_model, "config.json")):
    raise ValueError(f"config.reward_model={config.reward_model!r}: no config.json there; set it "
                     "to a reward_model export (workdir/hf), or set config.train.path and "
                     "config.init_from to train one")
  for split in config.data.splits:
    path = os.path.join(config.data.dir, f"{split}.json")
    if not os.path.isfile(path):
      raise ValueError(f"config.data.splits: no {path!r}; config.data.dir must hold "
                       "ProcessBench's <split>.json files")
  if not 0.0 < config.data.held_out_fraction < 1.0 and config.data.threshold < 0:
    raise ValueError(f"config.data.held_out_fraction={config.data.held_out_fraction}: expected "
                     "a fraction in (0, 1) (or a fixed config.data.threshold >= 0)")


def example(tokenizer, template: str, problem: str, steps) -> batching.Example:
  """A solution as the reward model reads it: the problem in `template`, then each step with
  the tokenizer's step delimiter, a score at each step's last token."""
  return batching.prm_example(tokenizer, template.format(problem=problem), list(steps),
                              [0.0] * len(steps))


def training_examples(config, tokenizer) -> list[batching.Example]:
  """PRM800K phase-1 records as reward-model examples: each solution's steps (prm), or its
  hierarchical units (hrm: single steps and merged consecutive pairs)."""
  t = config.train
  rows = process_labels.iter_prm800k_stepwise(t.path)
  records = process_labels.training_records(process_labels.stepwise_solutions(rows),
                                            neutral=t.neutral)
  if t.max_records:
    records = records[:t.max_records]
  out, dropped = [], 0
  for r in records:
    units = (step_labels.hierarchical_units(r.steps, r.labels) if t.granularity == "hrm"
             else [(list(r.steps), list(r.labels))])
    for steps, labels in units:
      e = batching.prm_example(tokenizer, config.prompt.format(problem=r.problem), steps,
                               labels)
      if len(e["inputs"]) > t.seq_len:
        dropped += 1  # Cut, its later labels would be lost silently.
        continue
      out.append(e)
  logging.info("PRM800K: %d records, %d examples, %d longer than seq_len dropped",
               len(records), len(out), dropped)
  return out


def _reward_model(config, workdir, tokenizer) -> str:
  if not config.train.path:
    return config.reward_model
  section = config.train.copy_and_resolve_references()
  with section.unlocked():
    section.seed, section.model = config.seed, config.model
  return stages.nested(
      lambda c, d: reward_model.train(c, d, config.init_from,
                                      training_examples(config, tokenizer),
                                      tokenizer=tokenizer),
      section, os.path.join(workdir, "rm"))


def table(results: dict) -> str:
  lines = ["| split | F1 | accuracy, erroneous | accuracy, error-free | threshold | solutions "
           "(held out) | skipped |", "|---|---|---|---|---|---|---|"]
  for split, r in results["splits"].items():
    lines.append(f"| {split} | {r['f1']:.3f} | {r['error_accuracy']:.3f} | "
                 f"{r['correct_accuracy']:.3f} | {r['threshold']:.3f} | {r['evaluated']} "
                 f"({r['held_out']}) | {r['skipped']} |")
  lines.append(f"| average | {results['average_f1']:.3f} | | | | | |")
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Trains the reward model if asked, scores every split, evaluates; returns the results."""
  check_config(config)
  tokenizer = tokenizers.load(config.tokenizer or config.init_from or config.reward_model)
  path = _reward_model(config, workdir, tokenizer)
  cfg, params = models.load(dict(config.model) | {"hf_path": path, "lm_head": False,
                                                   "score_head": True},
                            jax.random.key(config.seed))
  score = scorers.score_fn(models.Model(cfg), config.data.batch_size)
  d = config.data
  results = {"reward_model": path, "splits": {}}
  for split in d.splits:
    solutions = process_labels.load_processbench(os.path.join(d.dir, f"{split}.json"))
    if d.max_rows:
      solutions = solutions[:d.max_rows]

    def scored(solutions=solutions):
      examples = [example(tokenizer, config.prompt, s.problem, s.steps) for s in solutions]
      keep = [i for i, e in enumerate(examples) if len(e["inputs"]) <= d.max_len]
      values = scorers.probabilities(score, params, [examples[i] for i in keep],
                                     batch_size=d.batch_size)
      return {"ids": [solutions[i].id for i in keep], "gold": [solutions[i].first_error
                                                               for i in keep],
              "scores": [v.tolist() for v in values], "skipped": len(solutions) - len(keep)}

    s = stages.json_file(os.path.join(workdir, f"scores_{split}.json"), scored)
    metrics = process_bench.evaluate(
        [np.asarray(v) for v in s["scores"]], s["gold"], held_out_fraction=d.held_out_fraction,
        seed=config.seed, threshold=d.threshold if d.threshold >= 0 else None)
    results["splits"][split] = metrics | {"skipped": s["skipped"]}
  results["average_f1"] = float(np.mean([r["f1"] for r in results["splits"].values()]))
  text = table(results)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "process_bench.json"), "w") as f:
      json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "process_bench.md"), "w") as f:
      f.write(f"ProcessBench, reward model {path}, seed {config.seed}\n\n{text}")
  print(text, flush=True)
  return results
