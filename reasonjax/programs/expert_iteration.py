"""Expert iteration on rewarded samples: ReST-EM, STaR, B-STaR and CoSC's self-enhancement.
Each round the latest policy samples solutions to the training problems, a reward (the task's
checker, or a reward model) selects some, and a policy is fine-tuned on them; the next round
samples from it.

    python -m reasonjax.main --config=configs/rest_em_arith.py --workdir=runs/rest_em
    python -m reasonjax.main --config=configs/star_arith.py --workdir=runs/star
    python -m reasonjax.main --config=configs/b_star_arith.py --workdir=runs/b_star
    python -m reasonjax.main --config=configs/cosc_arith.py --workdir=runs/cosc

Stages, each stored in the workdir and skipped when present:

    expert_iteration_settings.json   the settings the stages were made with
    sft/hf                           the starting policy (`init_from`, or the nested SFT run)
    start.json                       its held-out evaluation
    round_<i>/samples.json           the round's kept solutions, counts and monitoring
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
  threshold         a sample is selected when its reward >= threshold: the reward model's score
                    (`config.reward_model.path`), else the checker's 0/1
  verified_only     also require the checker's approval (False: the reward model alone decides)
  balance           B-STaR: each round first samples `probe_problems` training problems at every
                    temperature of `temperatures`, and keeps the temperature and threshold (of
                    `thresholds`; none: `threshold`) with the highest mean balance score
                    (`balance_scores`, target n* = `target`); empty temperatures: off
Every round also logs B-STaR's monitoring of its samples: exploration (pass@k, distinct right
solutions per problem) and exploitation (the selection's precision, the reward model's best-of-k
accuracy). The samples come from `config.rollouts` (num_samples per problem, temperature, ...),
running programs when the task has a tool (the code format, `config.task.code`: CoSC); the
fine-tuning from `config.train` (an SFT loop section). In a multi-process job each process
samples and scores its share of the problems; the fine-tuning runs on the global mesh.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from reasonjax import distributed, models
from reasonjax.programs import sft, stages
from reasonjax.rewards import reward_model as rm_reward
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
  rm_reward.check_section(config.reward_model)
  if not (e.verified_only or config.reward_model.path):
    raise ValueError("config.expert_iteration.verified_only=False selects by a reward model "
                     "alone: set config.reward_model.path")
  b = e.balance
  if any(t <= 0 for t in b.temperatures):
    raise ValueError(f"config.expert_iteration.balance.temperatures={tuple(b.temperatures)}: "
                     "expected positive temperatures (greedy samples are all the same)")
  if b.target < 1 or b.probe_problems < 1:
    raise ValueError("config.expert_iteration.balance.target and probe_problems must be >= 1, "
                     f"got {b.target} and {b.probe_problems}")
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


def first_occurrences(texts: list[list[str]]) -> np.ndarray:
  """bool [N, k]: sample j of problem i is the first in its row with its text."""
  return np.asarray([[text not in row[:j] for j, text in enumerate(row)] for row in texts])


def select(right: np.ndarray, rewards: np.ndarray, threshold: float,
           verified_only: bool) -> np.ndarray:
  """bool [N, k]: the samples to train on, reward >= threshold (and right if verified_only)."""
  return (rewards >= threshold) & (right | (not verified_only))


def balance_scores(right: np.ndarray, first: np.ndarray, selected: np.ndarray,
                   target: int) -> np.ndarray:
  """B-STaR's balance score per problem, float64 [N]: min(n' / n*, 1) * n' / n, with n the
  selected samples, n' the distinct right ones among them and n* = `target`; 0 when none is
  selected. The first factor rewards exploration (enough distinct right solutions), the second
  exploitation (a selection that is right and not repeated). Inputs: bool [N, k]."""
  n = selected.sum(-1)
  distinct = (selected & right & first).sum(-1)
  return np.minimum(distinct / target, 1.0) * distinct / np.maximum(n, 1)


def monitor(right: np.ndarray, first: np.ndarray, selected: np.ndarray,
            rewards: np.ndarray | None) -> dict[str, float]:
  """B-STaR's monitoring of a round's samples (bool [N, k]): exploration, `pass_at_k` (problems
  with a right sample) and `distinct_right` (distinct right samples per problem); exploitation,
  `selected_precision` (right among the selected) and, with a reward model's `rewards`,
  `reward_best_of_k` (problems whose highest-reward sample is right)."""
  out = {"pass_at_k": float(right.any(-1).mean()),
         "distinct_right": float((right & first).sum(-1).mean()),
         "selected_precision": float((selected & right).sum() / max(selected.sum(), 1))}
  if rewards is not None:
    best = np.argmax(rewards, -1)
    out["reward_best_of_k"] = float(right[np.arange(len(right)), best].mean())
  return out


def collect(config, policy: str, task, tokenizer, problems, rng: jax.Array,
            reward=None) -> dict:
  """The round's training solutions from the policy at `policy`: {"kept": [[problem index,
  text, rationalised]], "solved": problems with a selected sample, "rationalised": problems
  solved only with the hint, "samples", "tokens": generated (probes included), "temperature" and
  "threshold" used, "probe": B-STaR's grid of mean balance scores, "monitor": `monitor` of the
  samples, and with a task's tool `programs_per_sample`, the programs run per sample}.
  `reward`: a `rewards.reward_model.RewardModelReward` or None (the checker's 0/1).
  Collective in a multi-process job."""
  e = config.expert_iteration
  cfg, params = models.load(experiment.model_section(config, policy), jax.random.key(0))
  model = models.Model(cfg)
  # The probe problems are the same in every process; the samples differ.
  probe_rng = np.random.default_rng(np.asarray(jax.random.key_data(rng)))
  rng = distributed.process_rng(rng)
  batch = max(1, config.rollouts.batch_size // config.rollouts.num_samples)

  def sample(part, key, temperature: float, hint=None) -> list[dict]:
    """Per problem: its samples, which are right, their rewards and generated tokens."""
    sampling = sampling_config(config.rollouts, tokenizer, temperature=temperature)
    prompts = [task.prompt(p.hinted(hint) if hint else p) for p in part]
    texts, lengths = generate_texts(model, params, tokenizer, prompts, key, sampling,
                                    batch_size=batch, return_lengths=True, tool=task.tool)
    scores = None
    if reward is not None:
      k = config.rollouts.num_samples
      flat = reward.scores([p for p in part for _ in range(k)], [t for row in texts for t in row])
      scores = flat.reshape(len(part), k).tolist()
    return [{"texts": row, "right": [bool(task.check_answer(p, t)) for t in row],
             "rewards": scores[i] if scores else None, "tokens": int(np.sum(length)),
             "programs": sum(task.tool.calls(t) for t in row) if task.tool else 0}
            for i, (p, row, length) in enumerate(zip(part, texts, lengths))]

  def arrays(rows):
    right = np.asarray([r["right"] for r in rows])
    rewards = None if reward is None else np.asarray([r["rewards"] for r in rows])
    return right, first_occurrences([r["texts"] for r in rows]), rewards

  def selection(rows, threshold):
    right, first, rewards = arrays(rows)
    return select(right, right.astype(float) if rewards is None else rewards, threshold,
                  e.verified_only), right, first, rewards

  temperature, threshold, probe, tokens = config.rollouts.temperature, e.threshold, [], 0
  if e.balance.temperatures:
    count = min(e.balance.probe_problems, len(problems))
    chosen = probe_rng.choice(len(problems), count, replace=False)
    subset = [problems[i] for i in sorted(chosen)]
    for index, t in enumerate(e.balance.temperatures):
      rows = distributed.map_shared(
          lambda part, t=t, i=index: sample(part, jax.random.fold_in(rng, 10 + i), t), subset)
      tokens += sum(r["tokens"] for r in rows)
      # The checker's rewards are 0/1: a threshold grid would only repeat the same selection.
      for tau in (e.balance.thresholds if reward is not None else ()) or [e.threshold]:
        selected, right, first, _ = selection(rows, tau)
        probe.append({"temperature": t, "threshold": tau, "balance": float(
            balance_scores(right, first, selected, e.balance.target).mean())})
    best = max(probe, key=lambda p: p["balance"])  # the first of equals
    temperature, threshold = best["temperature"], best["threshold"]
    logging.info("B-STaR: temperature %g, threshold %g (balance %.3f)", temperature, threshold,
                 best["balance"])

  def keep(rows, indices, rationalised):
    selected, _, first, _ = selection(rows, threshold)
    out = []
    for i, row, chosen, new in zip(indices, rows, selected, first):
      texts = [t for t, c, f in zip(row["texts"], chosen, new) if c and f]
      out += [[i, t, rationalised] for t in texts[:e.max_per_problem or None]]
    return out

  first_rows = distributed.map_shared(lambda part: sample(part, rng, temperature), problems)
  kept = keep(first_rows, range(len(problems)), False)
  solved = {i for i, _, _ in kept}
  unsolved = [i for i in range(len(problems)) if i not in solved]
  tokens += sum(r["tokens"] for r in first_rows)
  second = []
  if e.rationalize and unsolved:
    second = distributed.map_shared(
        lambda part: sample(part, jax.random.fold_in(rng, 1), temperature, e.hint),
        [problems[i] for i in unsolved])
    kept += keep(second, unsolved, True)
    tokens += sum(r["tokens"] for r in second)
  selected, right, first, rewards = selection(first_rows, threshold)
  return {"kept": kept, "solved": len(solved),
          "rationalised": len({i for i, _, hint in kept if hint}),
          "samples": (len(problems) + len(second)) * config.rollouts.num_samples,
          "tokens": tokens, "temperature": temperature, "threshold": threshold, "probe": probe,
          "monitor": monitor(right, first, selected, rewards) | ({"programs_per_sample": sum(
              r["programs"] for r in first_rows) / right.size} if task.tool else {})}


def run(config, workdir: str) -> dict:
  """Every round in order; returns {"start": evaluation, "rounds": [...]} (results.json)."""
  check_config(config)
  settings = json.loads(config.to_json_best_effort())
  stages.check_settings(os.path.join(workdir, "expert_iteration_settings.json"), settings)
  task, tokenizer = experiment.task_and_tokenizer(config)
  base = stages.policy(config, workdir)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  reward = rm_reward.RewardModelReward.from_section(config.reward_model, task, tokenizer)
  start = stages.json_file(os.path.join(workdir, "start.json"),
                           lambda: _evaluate(config, base, task, tokenizer))
  policy, rounds = base, []
  for index in range(config.expert_iteration.rounds):
    directory = os.path.join(workdir, f"round_{index}")
    data = stages.json_file(
        os.path.join(directory, "samples.json"),
        lambda p=policy, i=index: collect(config, p, task, tokenizer, problems,
                                          jax.random.key(config.seed + 100 + i), reward))
    section = round_config(config, index,
                           base if config.expert_iteration.restart == "base" else policy)
    row = {"round": index, "problems": len(problems), "solved": data["solved"],
           "rationalised": data["rationalised"], "kept": len(data["kept"]),
           "samples": data["samples"], "generated_tokens": data["tokens"],
           "train_steps": section.steps, "started_from": section.init_from,
           "temperature": data["temperature"], "threshold": data["threshold"],
           "probe": data["probe"]} | data["monitor"]
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
  lines = ["| round | temperature | threshold | solved (train) | rationalised | kept | pass@k | "
           "distinct right | selected precision | generated tokens | train steps | "
           "held-out accuracy |", "|---" * 12 + "|"]
  accuracy = lambda ev: f"{ev['accuracy']:.3f}" if "accuracy" in ev else ""  # noqa: E731
  lines.append(f"| start |{' |' * 10} {accuracy(results['start'])} |")
  for r in results["rounds"]:
    lines.append(f"| {r['round']} | {r['temperature']:g} | {r['threshold']:g} | "
                 f"{r['solved']}/{r['problems']} | {r['rationalised']} | {r['kept']} | "
                 f"{r['pass_at_k']:.3f} | {r['distinct_right']:.2f} | "
                 f"{r['selected_precision']:.3f} | {r['generated_tokens']} | "
                 f"{r['train_steps']} | {accuracy(r['evaluation'])} |")
  return "\n".join(lines) + "\n"
