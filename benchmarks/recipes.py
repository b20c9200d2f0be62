"""The recipes of the README's table against plain SFT on more data and plain GRPO, from one SFT
start per task, at the same number of train steps; writes docs/results/recipes.md and its JSON.

    python benchmarks/recipes.py --workdir=runs/recipes --out=docs/results/recipes.md

For each task (arithmetic chains, Countdown) the starting policy is the recipes' SFT start
(`configs/hrm_arith.py:policy_sft`), trained once. Every method then runs from it for each seed
with the same budget of optimizer steps (`--steps`) and the same held-out evaluation (greedy
accuracy on `--eval_problems` test problems of the seed): the expert-iteration recipes split
the steps over their rounds, the GRPO recipes take one step per iteration, and "SFT on more data"
fine-tunes the start on that many fresh gold solutions. Generated tokens are measured; a recipe
that generates k times GRPO's (k >= 1.5) is also compared with plain GRPO run with about k times
the samples per prompt at the same steps (`--match_tokens`). Then the test-time methods (Self-PRM
reranking and budget forcing, against majority vote, at N = `--test_time_n`) with each seed's
GRPO policy, and SPIRAL's self-play from the arithmetic start (`--game_episodes`). Every run is
a stage in `--workdir` (a rerun skips the finished ones). `--quick` is a minute-scale run for
the test of this script.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import (b_star_arith, budget_forcing_arith, cosc_arith, dapo_arith,  # noqa: E402
                     dpo_arith, grpo_arith, guide_grpo_arith, rest_em_arith, restart_grpo_arith,
                     scl_arith, self_prm_arith, sft_arith, spiral_games, star_arith,
                     step_dpo_arith, structured_arith, thinklite_arith, thinktuning_arith,
                     ttrl_arith)
from reasonjax import programs  # noqa: E402
from reasonjax.metrics import read_jsonl  # noqa: E402
from reasonjax.programs import stages  # noqa: E402

TASKS = ("arithmetic", "countdown")
# name -> (config module, its arg, kind): "expert" splits the steps over rounds, "grpo" takes a
# step per iteration, "dpo" trains on pairs sampled (or grown as trees) once, "sft" on gold
# solutions.
METHODS = {
    "SFT on more data": (sft_arith, None, "sft"),
    "GRPO": (grpo_arith, None, "grpo"),
    "ReST-EM": (rest_em_arith, None, "expert"),
    "STaR": (star_arith, None, "expert"),
    "B-STaR": (b_star_arith, None, "expert"),
    "DPO": (dpo_arith, None, "dpo"),
    "Step-DPO": (step_dpo_arith, None, "dpo"),
    "Self-correction DPO": (scl_arith, None, "dpo"),
    "DAPO": (dapo_arith, None, "grpo"),
    "DAPO + length reward": (dapo_arith, "efficiency", "grpo"),
    "Guide-GRPO": (guide_grpo_arith, None, "grpo"),
    "ThinkTuning": (thinktuning_arith, None, "grpo"),
    "Restart and explore": (restart_grpo_arith, None, "grpo"),
    "COAT": (structured_arith, None, "grpo"),
    "ReFIne": (structured_arith, "refine", "grpo"),
    "CoSC": (cosc_arith, None, "expert"),
    "ThinkLite selection": (thinklite_arith, None, "grpo"),
    "TTRL": (ttrl_arith, None, "grpo"),
    "EMPO": (ttrl_arith, "empo", "grpo"),
}
BASELINES = ("SFT on more data", "GRPO")
# Task fields of the recipes that answer in a format of their own (programs/stages: a nested SFT
# on the format's seed traces first).
FORMATS = ("code", "format")
# What a reader of a task's table must know (the page's words).
TASK_NOTES = {
    "countdown": "Countdown with three numbers up to 10 and targets up to 50 has only about "
                 "1,150 distinct training problems, and the SFT start was trained on 1,100 of "
                 "them: the recipes train on problems the start has already seen (ThinkLite's "
                 "search solves nearly all of its pool in under 32 simulations, so its "
                 "hard-but-solvable slice is empty), and \"SFT on more data\" is more epochs "
                 "on them. Only the held-out accuracy measures anything here.",
}
# The equal-tokens baseline: GRPO with up to this many times its samples per prompt.
MATCH_MAX = 32
# The search program's method names -> the test-time section's rows.
TEST_TIME = {"majority_vote": "Majority vote", "best_of_n": "Self-PRM (best of N)",
             "budget_forcing": "Budget forcing"}


def start_config(task: str):
  """A recipe config whose nested SFT run (`config.sft`) is the task's SFT start."""
  return rest_em_arith.get_config("countdown" if task == "countdown" else None)


def evaluation(config, num_problems: int) -> None:
  config.update({"num_problems": num_problems, "max_new_tokens": 64, "num_samples": 0, "k": 1,
                 "batch_size": 64})


def method_config(name: str, task: str, start: str, seed: int, args):
  """The method's config from the start policy, on the start's task, with the shared budget."""
  module, arg, kind = METHODS[name]
  start_cfg = start_config(task)
  config = module.get_config(arg)
  # A format of its own (code, structured) stays on the start's task.
  formats = {k: config.task[k] for k in FORMATS if config.task.get(k) is not None}
  config.task = start_cfg.task
  config.tokenizer = start_cfg.tokenizer
  config.init_from, config.seed = start, seed
  steps = args.steps
  if formats:
    # Stage 1 fine-tunes the start on the format's seed traces for half the steps; the recipe
    # has the other half.
    with config.task.unlocked():
      config.task.update(formats)
    sft = config.sft
    sft.task = copy.deepcopy(config.task)
    sft.tokenizer, sft.init_from, sft.seed = config.tokenizer, start, seed
    format_steps = steps // 2
    sft.update({"steps": format_steps, "checkpoint_every": format_steps, "eval_every": 0})
    sft.optimizer.warmup_steps = min(sft.optimizer.warmup_steps, max(1, format_steps // 10))
    sft.task.num_train = format_steps * sft.batch_size
    config.init_from, steps = "", steps - format_steps
  if kind == "expert":
    e = config.expert_iteration
    e.rounds = args.rounds
    config.task.num_train = args.problems
    config.rollouts.batch_size = 64
    # The rounds' steps add up to the budget (STaR's growing rounds included).
    growth = sum((1 + e.steps_growth) ** i for i in range(e.rounds))
    config.train.steps = max(1, round(steps / growth))
    config.train.update({"checkpoint_every": config.train.steps, "log_every": 5,
                         "eval_every": 0})
    if e.balance.temperatures:
      e.balance.probe_problems = min(e.balance.probe_problems, args.problems // 4)
    evaluation(config.train.eval, args.eval_problems)
  elif kind == "grpo":
    config.steps, config.checkpoint_every, config.eval_every = steps, steps, 0
    config.rollouts.update({"prompts": 8, "num_samples": 4})
    if config.feedback.fraction:  # ThinkTuning's schedule: the first third of the budget
      config.feedback.decay_iterations = max(1, steps // 3)
    if config.data_controls.overlong_cache:
      config.data_controls.overlong_cache = max(1, config.rollouts.max_new_tokens // 5)
    # TTRL/EMPO train on the evaluation's own problems; the others on the training split;
    # ThinkLite selects from a pool twice as large.
    config.task.num_train = args.eval_problems if config.train_split == "test" else \
        args.problems * (2 if config.data_selection.simulations else 1)
    if config.data_selection.simulations:
      # A quarter of the paper-scale search per problem. A solved tree has 20 or more nodes
      # here (expansions add 4 children, two leaves a round), so "hard" is half the budget.
      config.data_selection.update({"simulations": 64, "min_simulations": 32})
    evaluation(config.eval, args.eval_problems)
  elif kind == "dpo":
    config.update({"steps": steps, "checkpoint_every": steps, "eval_every": 0,
                   "eval_at_start": False})
    # A full step tree per problem costs num_samples ** max_depth leaves: fewer problems.
    config.task.num_train = args.problems // 4 if config.pairs.source == "trees" else \
        args.problems
    evaluation(config.eval, args.eval_problems)
  else:  # more gold solutions than the start saw: fresh problems of the training split
    config.update({"steps": steps, "checkpoint_every": steps, "eval_every": 0})
    config.optimizer.update({"learning_rate": start_cfg.sft.optimizer.learning_rate / 10,
                             "warmup_steps": 1})
    config.task.num_train = steps * config.batch_size
    evaluation(config.eval, args.eval_problems)
  return config


def outcome(name: str, workdir: str) -> dict:
  """{accuracy, start_accuracy, steps, generated_tokens} of a finished run."""
  out = _outcome(METHODS[name][2], workdir)
  stage1 = os.path.join(workdir, "sft", "results.json")
  if os.path.exists(stage1):  # the format-tuning stage's steps count too
    with open(stage1) as f:
      out["steps"] += json.load(f)["steps"]
    # The run evaluated its format-tuned policy, not the shared start.
    out["start_accuracy"] = None
  return out


def _outcome(kind: str, workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  if kind == "expert":
    rounds = results["rounds"]
    return {"accuracy": rounds[-1]["evaluation"]["accuracy"],
            "start_accuracy": results["start"]["accuracy"],
            "steps": sum(r["train_steps"] for r in rounds if r["kept"]),
            "generated_tokens": sum(r["generated_tokens"] for r in rounds)}
  if kind == "grpo":
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "rollout_generated_tokens" in r]
    return {"accuracy": results["grpo_accuracy"], "start_accuracy": results["sft_accuracy"],
            "steps": results["steps"],
            "generated_tokens": int(sum(r["rollout_generated_tokens"] for r in rows))}
  if kind == "dpo":  # the tokens sampling the pairs took (programs/dpo.py)
    with open(os.path.join(workdir, "pairs_tokens.json")) as f:
      tokens = json.load(f)["generated_tokens"]
    return {"accuracy": results["accuracy"], "start_accuracy": None, "steps": results["steps"],
            "generated_tokens": tokens, "pairs": results["pairs"]}
  return {"accuracy": results["accuracy"], "start_accuracy": None, "steps": results["steps"],
          "generated_tokens": 0}


def matched_multiple(tokens: float, grpo_tokens: float) -> int:
  """k in 1, 2, 4, ..., MATCH_MAX: the plain GRPO run with k times its samples per prompt whose
  generated tokens are nearest (in log) to a recipe's `tokens` (1: GRPO itself)."""
  if not grpo_tokens or tokens <= grpo_tokens:
    return 1
  return int(min(MATCH_MAX, 2 ** round(math.log2(tokens / grpo_tokens))))


def matched_name(k: int) -> str:
  return f"GRPO, {k}x samples"


def matched_config(k: int, task: str, start: str, seed: int, args):
  """Plain GRPO with k times the samples per prompt, at the same steps: the equal-tokens
  baseline of the recipes that generate about k times GRPO's tokens."""
  config = method_config("GRPO", task, start, seed, args)
  config.rollouts.num_samples *= k
  return config


def test_time_config(name: str, task: str, policy: str, start: str, seed: int, args):
  """The search program's config for `name` ("self_prm": majority vote and Self-PRM best-of-N;
  "budget_forcing"): `policy` searches the seed's held-out problems at N = args.test_time_n."""
  module = self_prm_arith if name == "self_prm" else budget_forcing_arith
  config = module.get_config()
  start_cfg = start_config(task)
  config.task, config.tokenizer = start_cfg.task, start_cfg.tokenizer
  config.init_from, config.seed = policy, seed
  if name == "self_prm":  # Self-PRM's implicit reward: log pi / pi_ref with the SFT start as ref
    config.reward_model.reference = start
    config.search.methods = ("majority_vote", "best_of_n")
  else:  # its majority vote row is the self_prm run's
    config.search.methods = ("budget_forcing",)
  config.search.update({"n_values": (args.test_time_n,), "num_problems": args.eval_problems,
                        "max_new_tokens": 64, "batch_size": 64})
  return config


def games_config(start: str, seed: int, args):
  """SPIRAL's self-play from the arithmetic start, for `args.steps` steps."""
  config = spiral_games.get_config()
  config.init_from, config.seed = start, seed
  config.tokenizer = start_config("arithmetic").tokenizer
  config.self_play.update({"episodes": 16, "max_new_tokens": 16})
  config.update({"steps": args.steps, "checkpoint_every": args.steps, "eval_every": 0})
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(1, args.steps // 10))
  config.eval.episodes = args.game_episodes
  return config


def _stage(workdir: str, make_config, label: str) -> str | None:
  """Runs make_config()'s program in `workdir` unless a run there finished (or failed: a
  ValueError such as "no right sample to learn from", kept in failed.txt); returns that
  error's text or None."""
  finished, failed = (os.path.join(workdir, f) for f in ("finished", "failed.txt"))
  if not os.path.exists(finished) and not os.path.exists(failed):
    begin = time.perf_counter()
    config = make_config()
    programs.check_config(config)
    os.makedirs(workdir, exist_ok=True)
    try:
      programs.get(config.trainer)(config, workdir)
      open(finished, "w").close()
    except ValueError as e:
      with open(failed, "w") as f:
        f.write(str(e))
    print(f"{label}: {time.perf_counter() - begin:.0f} s", flush=True)
  if os.path.exists(failed):
    with open(failed) as f:
      return f.read()
  return None


def run(args) -> dict:
  rows, test_time, games = [], [], []
  for task in args.tasks:
    base = os.path.join(args.workdir, task)
    os.makedirs(base, exist_ok=True)
    begin = time.perf_counter()
    start = stages.policy(start_config(task), base)
    print(f"{task}: SFT start {start} ({time.perf_counter() - begin:.0f} s)", flush=True)
    for seed in args.seeds:
      here = os.path.join(base, f"seed_{seed}")
      mine = []
      for name in args.methods:
        workdir = os.path.join(here, name.replace(" ", "_"))
        row = {"task": task, "seed": seed, "method": name}
        error = _stage(workdir, lambda: method_config(name, task, start, seed, args),
                       f"{task} seed {seed} {name}")
        mine.append(row | ({"error": error} if error else outcome(name, workdir)))
      grpo = next((r for r in mine if r["method"] == "GRPO" and "error" not in r), None)
      if grpo is not None and args.match_tokens:
        # The equal-tokens baseline of each recipe: GRPO with more samples per prompt.
        for row in mine:
          if "error" not in row and row["method"] not in BASELINES:
            row["matched"] = matched_multiple(row["generated_tokens"], grpo["generated_tokens"])
        for k in sorted({r.get("matched", 1) for r in mine} - {1}):
          workdir = os.path.join(here, f"GRPO_x{k}")
          error = _stage(workdir, lambda: matched_config(k, task, start, seed, args),
                         f"{task} seed {seed} {matched_name(k)}")
          mine.append({"task": task, "seed": seed, "method": matched_name(k)} | (
              {"error": error} if error else outcome("GRPO", workdir)))
      rows += mine
      if grpo is not None and args.test_time_n:
        test_time.append({"task": task, "seed": seed, "method": "GRPO policy, greedy", "n": 1,
                          "accuracy": grpo["accuracy"], "tokens_per_problem": None})
        policy = os.path.join(here, "GRPO", "hf")
        for name in ("self_prm", "budget_forcing"):
          workdir = os.path.join(here, "test_time", name)
          error = _stage(workdir, lambda: test_time_config(name, task, policy, start, seed, args),
                         f"{task} seed {seed} {name}")
          if error is None:
            with open(os.path.join(workdir, "search.json")) as f:
              for r in json.load(f)["rows"]:
                test_time.append({"task": task, "seed": seed, "method": TEST_TIME[r["method"]],
                                  "n": r["n"], "accuracy": r["accuracy"],
                                  "tokens_per_problem": r["tokens_per_problem"]})
    if task == "arithmetic" and args.game_episodes:
      for seed in args.seeds:
        workdir = os.path.join(base, f"seed_{seed}", "SPIRAL")
        error = _stage(workdir, lambda: games_config(start, seed, args), f"SPIRAL seed {seed}")
        if error is None:
          with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
          games.append({"seed": seed, "steps": results["steps"], "start": results["start"],
                        "final": results["final"]})
        else:
          games.append({"seed": seed, "error": error})
  return {"rows": rows, "test_time": test_time, "games": games, "seeds": list(args.seeds),
          "steps": args.steps, "eval_problems": args.eval_problems, "problems": args.problems,
          "rounds": args.rounds, "test_time_n": args.test_time_n}


def _spread(values: list[float], digits: int = 3) -> str:
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def page(results: dict, command: str) -> str:
  """The results page: per task, each method's accuracy (mean ± std over seeds), steps and
  generated tokens, its equal-tokens GRPO baseline, and whether it beats every baseline in
  every seed; then the test-time methods and the self-play games."""
  rows = results["rows"]
  lines = ["# Recipes against SFT on more data and GRPO, from one SFT start", "",
           "Written by", "", f"    {command}", "",
           f"Seeds {results['seeds']}; mean ± standard deviation over seeds. Every method: "
           f"{results['steps']} optimizer steps from the task's SFT start, greedy accuracy on "
           f"{results['eval_problems']} held-out problems of the seed (the same for every "
           "method of a seed). The baselines are SFT on more data and plain GRPO at the same "
           "steps, and, for a recipe that generates more tokens than GRPO, plain GRPO with k "
           "times its samples per prompt (k the power of two nearest the ratio of generated "
           f"tokens, at most {MATCH_MAX}): the same steps at about the same generated tokens "
           "(the DPO recipes' tokens are their sampled texts re-encoded). "
           "Recipes that answer in a format of their own (code, COAT, ReFIne) spend half the "
           "steps fine-tuning the start on the format's seed traces. A tiny model on synthetic "
           "tasks: the differences here are of the size of the spread between seeds unless the "
           "table says otherwise.", ""]
  for task in dict.fromkeys(r["task"] for r in rows):
    lines += _task_table(task, [r for r in rows if r["task"] == task])
  lines += _test_time_table(results.get("test_time", []), results.get("test_time_n"))
  lines += _games_table(results.get("games", []))
  return "\n".join(lines)


def _is_baseline(name: str) -> bool:
  return name in BASELINES or name.startswith("GRPO, ")


def _task_table(task: str, mine: list[dict]) -> list[str]:
  start = [r["start_accuracy"] for r in mine if r.get("start_accuracy") is not None]
  lines = [f"## {task}", "", f"SFT start: accuracy {_spread(sorted(set(start)))}." if start
           else "SFT start: not evaluated by these runs.", ""]
  if task in TASK_NOTES:
    lines += [TASK_NOTES[task], ""]
  if start and max(start) == 0:
    lines += ["The SFT start solves none of these held-out problems, and so none of the "
              "methods has right samples to learn from: this table says nothing about the "
              "recipes at this scale.", ""]
  lines += ["| method | held-out accuracy | train steps | generated tokens | tokens / GRPO's "
            "| GRPO at about these tokens | beats every baseline in every seed |",
            "|---|---|---|---|---|---|---|"]
  by = lambda name: [r for r in mine if r["method"] == name]  # noqa: E731
  grpo_tokens = statistics.fmean(r["generated_tokens"] for r in by("GRPO")) if by("GRPO") \
      else 0
  seed_row = {(r["method"], r["seed"]): r for r in mine if "error" not in r}
  winners = []
  for name in dict.fromkeys(r["method"] for r in mine):
    runs = by(name)
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
      lines.append(f"| {name} | did not train ({len(errors)} of {len(runs)} seeds): "
                   f"{errors[0].split(':')[0]} | | | | | no |")
      continue
    count = statistics.fmean(r["generated_tokens"] for r in runs)
    tokens, ratio = f"{count:.0f}", f"{count / grpo_tokens:.2f}" if grpo_tokens else ""
    matched = ""
    if all(r.get("matched", 1) > 1 for r in runs):
      rivals = [seed_row.get((matched_name(r["matched"]), r["seed"])) for r in runs]
      if None not in rivals:
        ks = "/".join(f"{k}x" for k in sorted({r["matched"] for r in runs}))
        matched = f"{_spread([b['accuracy'] for b in rivals])} ({ks})"
    elif all(r.get("matched") == 1 for r in runs):
      matched = "GRPO's"
    if _is_baseline(name):
      verdict = "(baseline)"
    else:
      best = {}
      for r in runs:
        rivals = [seed_row.get((b, r["seed"])) for b in BASELINES]
        if r.get("matched", 1) > 1:
          rivals.append(seed_row.get((matched_name(r["matched"]), r["seed"])))
        best[r["seed"]] = None if None in rivals else max(b["accuracy"] for b in rivals)
      if None in best.values():
        verdict = "(no baseline run)"
      else:
        verdict = "yes" if all(r["accuracy"] > best[r["seed"]] for r in runs) else "no"
    lines.append(f"| {name} | {_spread([r['accuracy'] for r in runs])} | "
                 f"{_spread([r['steps'] for r in runs], 0)} | {tokens} | {ratio} | {matched} | "
                 f"{verdict} |")
    winners += [name] if verdict == "yes" else []
  below = [n for n in dict.fromkeys(r["method"] for r in mine)
           if start and all("accuracy" in r for r in by(n))
           and statistics.fmean(r["accuracy"] for r in by(n)) < statistics.fmean(start)]
  return lines + ["", f"Beat every baseline in every seed: {'; '.join(winners)}." if winners
                  else "No recipe beats every baseline in every seed at this scale.",
                  f"Below the SFT start on average: {'; '.join(below) or 'none'}.", ""]


def _test_time_table(rows: list[dict], n: int | None) -> list[str]:
  if not rows:
    return []
  lines = ["## Test-time methods", "",
           f"Each seed's GRPO policy (the GRPO row above) on the same held-out problems, at N = "
           f"{n}: majority vote over N samples at temperature 1; Self-PRM, the best of the same kind of N "
           "samples by the policy's implicit process reward against the SFT start (the "
           "paper prompts the policy to judge; see configs/self_prm_arith.py); budget "
           f"forcing, one solution whose answer is held back {n - 1} times with \"Wait,\". "
           "Generated tokens per problem include every sample.", ""]
  for task in dict.fromkeys(r["task"] for r in rows):
    mine = [r for r in rows if r["task"] == task]
    lines += [f"### {task}", "", "| method | N | held-out accuracy | generated tokens per "
              "problem |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["method"] for r in mine):
      runs = [r for r in mine if r["method"] == name]
      tokens = [r["tokens_per_problem"] for r in runs if r["tokens_per_problem"] is not None]
      lines.append(f"| {name} | {runs[0]['n']} | {_spread([r['accuracy'] for r in runs])} | "
                   f"{_spread(tokens, 0) if tokens else ''} |")
    lines.append("")
  return lines


def _games_table(rows: list[dict]) -> list[str]:
  if not rows:
    return []
  lines = ["## SPIRAL self-play", "",
           "One policy from the arithmetic SFT start trained by self-play on TicTacToe and Kuhn "
           "poker (configs/spiral_games.py, 16 episodes of each game per iteration, replies of "
           "up to 16 tokens), evaluated against a uniformly random legal-move opponent in both "
           "seats, before and after the same number of steps as the recipes above. A reply "
           "without a legal move loses.", ""]
  errors = [r for r in rows if "error" in r]
  if errors:
    lines += [f"Did not train ({len(errors)} of {len(rows)} seeds): "
              f"{errors[0]['error'].split(':')[0]}", ""]
  runs = [r for r in rows if "error" not in r]
  if not runs:
    return lines
  lines += ["| game | when | win | draw | loss | invalid replies |", "|---|---|---|---|---|---|"]
  games = sorted({k[:-4] for k in runs[0]["final"] if k.endswith("_win") and "_seat" not in k})
  for game in games:
    for when in ("start", "final"):
      cells = [_spread([r[when][f"{game}_{o}"] for r in runs], 2)
               for o in ("win", "draw", "loss", "invalid")]
      lines.append(f"| {game} | {'SFT start' if when == 'start' else 'after self-play'} | "
                   + " | ".join(cells) + " |")
  invalid = statistics.fmean(r["final"][f"{g}_invalid"] for r in runs for g in games)
  if invalid > 0.9:
    lines += ["", f"After training, {invalid:.0%} of the policy's games end in an invalid reply: "
              "an arithmetic-only start does not learn to play at this scale, and these rows "
              "test the pipeline, not SPIRAL. A real run starts from an instruction model "
              "(configs/spiral_games.py)."]
  return lines + [""]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/recipes")
  parser.add_argument("--out", default="docs/results/recipes.md")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--problems", type=int, default=128)
  parser.add_argument("--eval_problems", type=int, default=64)
  parser.add_argument("--match_tokens", type=int, default=1,
                      help="1: also run GRPO at about each recipe's generated tokens")
  parser.add_argument("--test_time_n", type=int, default=8,
                      help="N of the test-time methods' section (0: none)")
  parser.add_argument("--game_episodes", type=int, default=32,
                      help="SPIRAL evaluation episodes per game and seat (0: no games section)")
  parser.add_argument("--quick", action="store_true",
                      help="a minute-scale run: 4 steps, 16 problems (the script's test)")
  args = parser.parse_args()
  args.tasks = args.tasks.split(",")
  unknown = sorted(set(args.tasks) - set(TASKS))
  if unknown:
    parser.error(f"--tasks: unknown {unknown}; valid: {list(TASKS)}")
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(args.methods) - set(METHODS))
  if unknown:
    parser.error(f"--methods: unknown {unknown}; valid: {list(METHODS)}")
  if args.quick:
    args.steps, args.problems, args.eval_problems = 4, 16, 8
    args.test_time_n, args.game_episodes = min(args.test_time_n, 2), min(args.game_episodes, 2)
  # The runs share most of their programs: compile each once (reasonjax.main's default cache).
  cache = jax.config.jax_compilation_cache_dir or os.path.join("~", ".cache", "reasonjax", "xla")
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
  results = run(args)
  command = "python " + " ".join(sys.argv)
  out = os.path.splitext(args.out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(results | {"command": command}, f, indent=2)
  text = page(results, command)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
