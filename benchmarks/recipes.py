"""The recipes of the README's table against plain SFT on more data and plain GRPO, from one SFT
start per task, at the same number of train steps; writes docs/results/recipes.md and its JSON.

    python benchmarks/recipes.py --workdir=runs/recipes --out=docs/results/recipes.md

For each task (arithmetic chains, Countdown) the starting policy is the recipes' SFT start
(`configs/hrm_arith.py:policy_sft`), trained once. Every method then runs from it for each seed
with the same budget of optimizer steps (`--steps`) and the same held-out evaluation (greedy
accuracy on `--eval_problems` test problems of the seed): the expert-iteration recipes split
the steps over their rounds, the GRPO recipes take one step per iteration, and "SFT on more data"
fine-tunes the start on that many fresh gold solutions. Generated tokens are measured, not
matched: the table gives them next to the accuracy, with the ratio to plain GRPO's. Every run is
a stage in `--workdir` (a rerun skips the finished ones). `--quick` is a minute-scale run for
the test of this script.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import (b_star_arith, cosc_arith, dapo_arith, dpo_arith, grpo_arith,  # noqa: E402
                     guide_grpo_arith, rest_em_arith, restart_grpo_arith, scl_arith, sft_arith,
                     star_arith, step_dpo_arith, structured_arith, thinklite_arith,
                     thinktuning_arith, ttrl_arith)
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
# Not run by default: its MCTS pass over the pool (256 simulations per problem) takes longer on
# 2 CPU cores than every other run together; `--methods` adds it.
SLOW = ("ThinkLite selection",)


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
    # ThinkLite selects from a pool four times larger.
    config.task.num_train = args.eval_problems if config.train_split == "test" else \
        args.problems * (4 if config.data_selection.simulations else 1)
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
  if kind == "dpo":  # the pairs' tokens: what sampling them generated at least
    with open(os.path.join(workdir, "pairs.jsonl")) as f:
      pairs = [json.loads(line) for line in f]
    return {"accuracy": results["accuracy"], "start_accuracy": None, "steps": results["steps"],
            "generated_tokens": None, "pairs": len(pairs)}
  return {"accuracy": results["accuracy"], "start_accuracy": None, "steps": results["steps"],
          "generated_tokens": 0}


def run(args) -> dict:
  rows = []
  for task in args.tasks:
    base = os.path.join(args.workdir, task)
    os.makedirs(base, exist_ok=True)
    begin = time.perf_counter()
    start = stages.policy(start_config(task), base)
    print(f"{task}: SFT start {start} ({time.perf_counter() - begin:.0f} s)", flush=True)
    for seed in args.seeds:
      for name in args.methods:
        workdir = os.path.join(base, f"seed_{seed}", name.replace(" ", "_"))
        row = {"task": task, "seed": seed, "method": name}
        failed = os.path.join(workdir, "failed.txt")
        if not os.path.exists(os.path.join(workdir, "results.json")) and not os.path.exists(
            failed):
          begin = time.perf_counter()
          config = method_config(name, task, start, seed, args)
          programs.check_config(config)
          os.makedirs(workdir, exist_ok=True)
          try:
            programs.get(config.trainer)(config, workdir)
          except ValueError as e:  # e.g. no right sample to learn from: the row says so
            with open(failed, "w") as f:
              f.write(str(e))
          print(f"{task} seed {seed} {name}: {time.perf_counter() - begin:.0f} s", flush=True)
        if os.path.exists(failed):
          with open(failed) as f:
            rows.append(row | {"error": f.read()})
        else:
          rows.append(row | outcome(name, workdir))
  return {"rows": rows, "seeds": list(args.seeds), "steps": args.steps,
          "eval_problems": args.eval_problems, "problems": args.problems,
          "rounds": args.rounds}


def _spread(values: list[float], digits: int = 3) -> str:
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def page(results: dict, command: str) -> str:
  """The results page: per task, each method's accuracy (mean ± std over seeds), steps and
  generated tokens, and whether it beats both baselines in every seed."""
  rows = results["rows"]
  lines = ["# Recipes against SFT on more data and GRPO, from one SFT start", "",
           "Written by", "", f"    {command}", "",
           f"Seeds {results['seeds']}; mean ± standard deviation over seeds. Every method: "
           f"{results['steps']} optimizer steps from the task's SFT start, greedy accuracy on "
           f"{results['eval_problems']} held-out problems of the seed (the same for every "
           "method of a seed). Generated tokens are measured, not matched; the ratio is to "
           "plain GRPO's. Recipes that answer in a format of their own (code, COAT, ReFIne) "
           "spend half the steps fine-tuning the start on the format's seed traces. A tiny "
           "model on synthetic tasks: the differences here are of the size of the spread "
           "between seeds unless the table says otherwise.", ""]
  for task in dict.fromkeys(r["task"] for r in rows):
    mine = [r for r in rows if r["task"] == task]
    start = [r["start_accuracy"] for r in mine if r.get("start_accuracy") is not None]
    lines += [f"## {task}", "", f"SFT start: accuracy {_spread(sorted(set(start)))}." if start
              else "SFT start: not evaluated by these runs.", ""]
    if start and max(start) == 0:
      lines += ["The SFT start solves none of these held-out problems, and so none of the "
                "methods has right samples to learn from: this table says nothing about the "
                "recipes at this scale.", ""]
    lines += ["| method | held-out accuracy | train steps | generated tokens | tokens / GRPO's "
              "| beats both baselines in every seed |", "|---|---|---|---|---|---|"]
    by = lambda name: [r for r in mine if r["method"] == name]  # noqa: E731
    grpo_tokens = statistics.fmean(r["generated_tokens"] for r in by("GRPO")) if by("GRPO") \
        else 0
    winners = []
    for name in dict.fromkeys(r["method"] for r in mine):
      runs = by(name)
      errors = [r["error"] for r in runs if "error" in r]
      if errors:
        lines.append(f"| {name} | did not train ({len(errors)} of {len(runs)} seeds): "
                     f"{errors[0].split(':')[0]} | | | | no |")
        continue
      if any(r["generated_tokens"] is None for r in runs):  # DPO does not count its sampling
        tokens, ratio = "not counted", ""
      else:
        count = statistics.fmean(r["generated_tokens"] for r in runs)
        tokens, ratio = f"{count:.0f}", f"{count / grpo_tokens:.2f}" if grpo_tokens else ""
      if name in BASELINES:
        verdict = "(baseline)"
      else:
        best = {r["seed"]: max((b.get("accuracy", 0.0) for b in mine
                                if b["method"] in BASELINES and b["seed"] == r["seed"]),
                               default=None) for r in runs}
        if None in best.values():
          verdict = "(no baseline run)"
        else:
          verdict = "yes" if all(r["accuracy"] > best[r["seed"]] for r in runs) else "no"
      lines.append(f"| {name} | {_spread([r['accuracy'] for r in runs])} | "
                   f"{_spread([r['steps'] for r in runs], 0)} | {tokens} | {ratio} | "
                   f"{verdict} |")
      winners += [name] if verdict == "yes" else []
    below = [n for n in dict.fromkeys(r["method"] for r in mine)
             if start and all("accuracy" in r for r in by(n))
             and statistics.fmean(r["accuracy"] for r in by(n)) < statistics.fmean(start)]
    lines += ["", f"Beat both baselines in every seed: {', '.join(winners)}." if winners else
              "No recipe beats both baselines in every seed at this scale.",
              f"Below the SFT start on average: {', '.join(below) or 'none'}.", ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/recipes")
  parser.add_argument("--out", default="docs/results/recipes.md")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default=",".join(m for m in METHODS if m not in SLOW))
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--problems", type=int, default=128)
  parser.add_argument("--eval_problems", type=int, default=64)
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
