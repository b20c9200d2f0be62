"""Expert iteration on verified samples: ReST-EM and STaR. Each round the latest policy samples
solutions to the training problems, the task's checker keeps the right ones, and a policy is
fine-tuned on them; the next round samples from it.

    python -m reasonjax.main --config=configs/rest_em_arith.py --workdir=runs/rest_em
    python -m reasonjax.main --config=configs/star_arith.py --workdir=runs/star

Stages, each stored in the workdir and skipped when present:

    expert_iteration_settings.json   the settings the stages were made with
    sft/hf                           the starting policy (`init_from`, or the nested SFT run)
    start.json                       its held-out evaluation
    round_<i>/samples.json           the round's kept solutions and counts
    round_<i>/hf                     the round's policy (a nested SFT run, `programs.sft`)
    results.json, results.md         per round: solve rate, kept solutions, tokens, accuracy

Knobs (`config.expert_iteration`):
  rounds            sample -> verify -> fine-tune rounds
  restart           "base": each round fine-tunes the starting policy on the round's solutions
                    (ReST-EM, STaR: no drift from training on the model's own outputs twice);
                    "continue": the last round's policy
  max_per_problem   distinct right solutions kept per problem (ReST-EM caps them so that easy
                    problems do not dominate); 0 keeps all
  rationalize       STaR: a problem no sample solved is sampled again with its answer as a hint
                    (`hint`, with {answer}); right solutions are kept and trained on without it
  steps_growth      round i trains config.train.steps * (1 + steps_growth)^i steps (STaR: 0.2)
The samples come from `config.rollouts` (num_samples per problem, temperature, ...); the
fine-tuning from `config.train` (an SFT loop section). In a multi-process job each process
samples its share of the problems; the fine-tuning runs on the global mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from absl import logging

from reasonjax import distributed, models
from reasonjax.programs import sft, stages
from reasonjax.sampling import generate_texts, sampling_config
from reasonjax.training import experiment, loop
from reasonjax.training.experiment import HF_DIR

RESTARTS = ("base", "continue")


def check_config(config) -> None:
  """Raises ValueError naming a bad field of `config.expert_iteration` or the nested runs."""
  stages.check_policy_source(config)
  e = config.expert_iteration
  if e.rounds < 1:
    raise ValueError(f"config.expert_iteration.rounds={e.rounds}: expected >= 1")
  if e.restart not in RESTARTS:
    raise ValueError(f"config.expert_iteration.restart={e.restart!r}; expected one of "
                     f"{RESTARTS}")
  if e.max_per_problem < 0 or e.steps_growth < 0:
    raise ValueError("config.expert_iteration.max_per_problem and steps_growth must be >= 0, "
                     f"got {e.max_per_problem} and {e.steps_growth}")
  if e.rationalize and "{answer}" not in e.hint:
    raise ValueError(f"config.expert_iteration.hint={e.hint!r} has no {{answer}} to fill in")
  if config.rollouts.num_samples < 1:
    raise ValueError(f"config.rollouts.num_samples={config.rollouts.num_samples}: expected >= 1")
  try:
    section = round_config(config, 0, "")
    loop.check_config(section)
  except ValueError as e:
    raise ValueError(f"config.train (the nested fine-tuning): {e}") from None


def round_config(config, index: int, policy: str):
  """The nested SFT run of round `index` from `policy` (a Hugging Face folder)."""
  section = stages.nested_config(config, "train", policy)
  with section.unlocked():
    section.steps = max(1, round(config.train.steps
                                 * (1 + config.expert_iteration.steps_growth) ** index))
  return section


def hinted(problem, hint: str):
  """The problem with its answer given in the question (STaR's rationalisation)."""
  return dataclasses.replace(problem, question=problem.question + hint.format(
      answer=problem.answer))


def collect(config, policy: str, task, tokenizer, problems, rng: jax.Array) -> dict:
  """The round's training solutions from the policy at `policy`: {"kept": [[problem index,
  text, rationalised]], "solved": problems with a right sample, "rationalised": problems solved
  only with the hint, "samples", "tokens": generated}. Collective in a multi-process job."""
  e = config.expert_iteration
  cfg, params = models.load(experiment.model_section(config, policy), jax.random.key(0))
  model, sampling = models.Model(cfg), sampling_config(config.rollouts, tokenizer)
  rng = distributed.process_rng(rng)
  batch = max(1, config.rollouts.batch_size // config.rollouts.num_samples)

  def sample(part, key, hint=None) -> list[dict]:
    """Per problem: its distinct right solutions (at most max_per_problem) and tokens."""
    prompts = [task.prompt(hinted(p, hint) if hint else p) for p in part]
    texts, lengths = generate_texts(model, params, tokenizer, prompts, key, sampling,
                                    batch_size=batch, return_lengths=True)
    out = []
    for problem, row, length in zip(part, texts, lengths):
      right = list(dict.fromkeys(t for t in row if task.check_answer(problem, t)))
      out.append({"right": right[:e.max_per_problem or None], "tokens": int(np.sum(length))})
    return out

  first = distributed.map_shared(lambda part: sample(part, rng), problems)
  kept = [[i, text, False] for i, row in enumerate(first) for text in row["right"]]
  unsolved = [i for i, row in enumerate(first) if not row["right"]]
  tokens = sum(row["tokens"] for row in first)
  second = []
  if e.rationalize and unsolved:
    second = distributed.map_shared(
        lambda part: sample(part, jax.random.fold_in(rng, 1), e.hint),
        [problems[i] for i in unsolved])
    kept += [[i, text, True] for i, row in zip(unsolved, second) for text in row["right"]]
    tokens += sum(row["tokens"] for row in second)
  return {"kept": kept, "solved": len(problems) - len(unsolved),
          "rationalised": sum(bool(row["right"]) for row in second),
          "samples": (len(problems) + len(second)) * config.rollouts.num_samples,
          "tokens": tokens}


def run(config, workdir: str) -> dict:
  """Every round in order; returns {"start": evaluation, "rounds": [...]} (results.json)."""
  check_config(config)
  settings = json.loads(config.to_json_best_effort())
  stages.check_settings(os.path.join(workdir, "expert_iteration_settings.json"), settings)
  task, tokenizer = experiment.task_and_tokenizer(config)
  base = stages.policy(config, workdir)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  start = stages.json_file(os.path.join(workdir, "start.json"),
                           lambda: _evaluate(config, base, task, tokenizer))
  policy, rounds = base, []
  for index in range(config.expert_iteration.rounds):
    directory = os.path.join(workdir, f"round_{index}")
    data = stages.json_file(
        os.path.join(directory, "samples.json"),
        lambda p=policy, i=index: collect(config, p, task, tokenizer, problems,
                                          jax.random.key(config.seed + 100 + i)))
    section = round_config(config, index,
                           base if config.expert_iteration.restart == "base" else policy)
    row = {"round": index, "problems": len(problems), "solved": data["solved"],
           "rationalised": data["rationalised"], "kept": len(data["kept"]),
           "samples": data["samples"], "generated_tokens": data["tokens"],
           "train_steps": section.steps, "started_from": section.init_from}
    if not data["kept"]:
      logging.warning("round %d: no right solution to train on; the policy stays", index)
      rounds.append(row | {"evaluation": rounds[-1]["evaluation"] if rounds else start})
      continue
    examples = [(problems[i], text) for i, text, _ in data["kept"]]
    stages.nested(lambda c, d, ex=examples: sft.train_on(c, d, ex), section, directory)
    policy = os.path.join(directory, HF_DIR)
    with open(os.path.join(directory, "results.json")) as f:
      rounds.append(row | {"evaluation": json.load(f)})
  results = {"start": start, "rounds": rounds, "seed": config.seed}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    text = table(results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(text)
    print(text, flush=True)
  return results


def _evaluate(config, policy: str, task, tokenizer) -> dict:
  """The held-out evaluation (`config.train.eval`) of the policy at `policy`."""
  section = stages.nested_config(config, "train", policy)
  cfg, params = models.load(experiment.model_section(config, policy), jax.random.key(0))
  evaluate = experiment.evaluator(section, cfg, task, tokenizer)
  return evaluate(params, jax.random.key(config.seed + 1)) if evaluate else {}


def table(results: dict) -> str:
  """Markdown: one line per round, after the start."""
  lines = ["| round | solved (train) | rationalised | kept | generated tokens | train steps | "
           "held-out accuracy |", "|---|---|---|---|---|---|---|"]
  accuracy = lambda ev: f"{ev['accuracy']:.3f}" if "accuracy" in ev else ""  # noqa: E731
  lines.append(f"| start | | | | | | {accuracy(results['start'])} |")
  for r in results["rounds"]:
    lines.append(f"| {r['round']} | {r['solved']}/{r['problems']} | {r['rationalised']} | "
                 f"{r['kept']} | {r['generated_tokens']} | {r['train_steps']} | "
                 f"{accuracy(r['evaluation'])} |")
  return "\n".join(lines) + "\n"
