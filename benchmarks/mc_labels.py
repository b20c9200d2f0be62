"""Monte-Carlo step labels on arithmetic chains: how well the first step of MC value 0 finds the
first wrong step, from the full sweep (Math-Shepherd) and from binary search (OmegaPRM).

    python benchmarks/mc_labels.py                          # trains sft_arith:runlocal, 600 steps
    python benchmarks/mc_labels.py --policy=runs/sft_arith/hf --problems=128 --k=16
    python benchmarks/mc_labels.py --quick                  # a smoke run

The policy samples `--samples` solutions per test problem at `--temperature` (1.0: some go wrong);
each solution's steps are valued with `--k` rollouts per step prefix, by the sweep over every
prefix and by binary search. Both predict a first error (the first step of value 0), scored
against `task.check_steps` with `search.mc_labels.first_error_agreement` (precision, recall and
detection accuracy; definitions there). Also reported: rollouts and completer calls used, wall
time (after a warm-up run that compiles the sampler), and for the sweep the agreement of its hard
labels with the per-step ground truth "every step so far is right". Prints a table and writes
JSON (default benchmarks/results/mc_labels.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from reasonjax import models, sampling
from reasonjax.data import tasks, tokenizers
from reasonjax.search import mc_labels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The problems configs/sft_arith.py:runlocal trains on.
RUNLOCAL_KNOBS = {"min_steps": 1, "max_steps": 2, "max_operand": 9, "max_value": 30, "ops": "+-"}


def train_policy(workdir: str, steps: int | None) -> str:
  """Runs `reasonjax.main` on configs/sft_arith.py:runlocal; returns its export folder."""
  flags = [f"--config.steps={steps}"] if steps else []
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, "-m", "reasonjax.main", "--config=configs/sft_arith.py:runlocal",
             f"--workdir={workdir}", *flags]
  print("training the policy:", " ".join(command[1:]), flush=True)
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"training the policy failed:\n{out.stderr[-3000:]}")
  return os.path.join(workdir, "hf")


def step_label_accuracy(task, problems, solutions, values) -> float:
  """Fraction of steps whose hard MC label equals "steps 0..i all right" per check_steps."""
  hits = []
  for problem, steps, label in zip(problems, solutions, mc_labels.hard_labels(values)):
    truth = np.cumprod(task.check_steps(problem, steps).correct).astype(bool)
    hits += list(label == truth)
  return float(np.mean(hits)) if hits else float("nan")


def run(args, policy: str) -> dict:
  tok = tokenizers.load(policy)
  cfg, params = models.load_hf(policy)
  model = models.Model(cfg)
  knobs = RUNLOCAL_KNOBS | {"max_steps": args.max_steps}
  knobs["min_steps"] = min(knobs["min_steps"], knobs["max_steps"])
  task = tasks.ArithmeticChains(**knobs)
  config = sampling.sampling_config(
      {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": 1.0,
       "num_samples": args.samples}, tok)
  rng = jax.random.key(args.seed)
  problems = task.generate(args.problems, seed=args.seed, split="test")
  texts = sampling.generate_texts(model, params, tok, [task.prompt(p) for p in problems],
                                  jax.random.fold_in(rng, 0), config,
                                  batch_size=max(1, args.batch_size // args.samples),
                                  progress="sampling solutions")
  # Solutions without a step have nothing to label.
  pairs = [(p, task.parse_steps(t), task.check_answer(p, t))
           for p, group in zip(problems, texts) for t in group]
  solved = [ok for _, _, ok in pairs]
  pairs = [(p, s) for p, s, _ in pairs if s]
  sols_problems, solutions = [p for p, _ in pairs], [s for _, s in pairs]
  truth = [task.check_steps(p, s).first_error for p, s in pairs]
  lengths = [len(s) for s in solutions]
  data = {"sampled": len(solved), "labelled": len(solutions),
          "answer_accuracy": float(np.mean(solved)), "steps": int(sum(lengths)),
          "steps_per_solution": dict(sorted(collections.Counter(lengths).items())),
          "true_first_error": {str(k): v for k, v in sorted(
              collections.Counter(truth).items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}}
  print(f"{data['labelled']} of {data['sampled']} sampled solutions have steps; answer "
        f"accuracy {data['answer_accuracy']:.3f}; steps per solution "
        f"{data['steps_per_solution']}; true first error {data['true_first_error']}", flush=True)

  def timed(method, fold: int, progress: str):
    """(result, completer, seconds): `method(completer)` once to compile the sampler for its
    shapes (other rollouts, same prefixes), then timed with a fresh completer."""
    def completer(key):
      return mc_labels.CountingCompleter(mc_labels.policy_completer(
          model, params, tok, config, key, batch_size=args.batch_size, progress=progress))
    method(completer(jax.random.fold_in(rng, 100 + fold)))
    complete = completer(jax.random.fold_in(rng, fold))
    start = time.perf_counter()
    result = method(complete)
    return result, complete, time.perf_counter() - start

  values, complete, seconds = timed(lambda c: mc_labels.mc_step_values(
      task, sols_problems, solutions, c, k=args.k), 1, "sweep rollouts")
  sweep_pred = [mc_labels.first_error_from_values(v) for v in values]
  rows = [{"method": "sweep", **mc_labels.first_error_agreement(
               task, sols_problems, solutions, sweep_pred),
           "rollouts": complete.rollouts, "completer_calls": complete.calls,
           "wall_s": round(seconds, 2),
           "step_label_accuracy": step_label_accuracy(task, sols_problems, solutions, values)}]
  search, complete, seconds = timed(lambda c: mc_labels.first_error_binary_search(
      task, sols_problems, solutions, c, k=args.k), 2, "binary search rollouts")
  assert (search.rollouts, search.rounds) == (complete.rollouts, complete.calls)
  rows.append({"method": "binary_search", **mc_labels.first_error_agreement(
                   task, sols_problems, solutions, search.first_errors),
               "rollouts": search.rollouts, "completer_calls": search.rounds,
               "wall_s": round(seconds, 2), "step_label_accuracy": float("nan")})
  data["methods_agree"] = float(np.mean([a == b for a, b in zip(sweep_pred,
                                                                   search.first_errors)]))
  data["mean_sweep_value"] = float(np.mean(np.concatenate(values))) if values else float("nan")
  return {"rows": rows, "data": data, "task_knobs": knobs}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--policy", default="", help="a Hugging Face folder (with its tokenizer); "
                      "empty: train configs/sft_arith.py:runlocal first")
  # runlocal's own 120 steps make a policy whose every sample goes wrong at step 0: nothing to
  # tell apart. 600 steps (about 2 CPU minutes) get about 40% of the answers right.
  parser.add_argument("--sft_steps", type=int, default=600,
                      help="training steps of that policy (0: the runlocal config's own 120)")
  parser.add_argument("--problems", type=int, default=64)
  parser.add_argument("--samples", type=int, default=4, help="solutions per problem")
  parser.add_argument("--k", type=int, default=8, help="rollouts per step prefix")
  parser.add_argument("--max_steps", type=int, default=RUNLOCAL_KNOBS["max_steps"],
                      help="operations per problem, at most (the runlocal policy saw 1-2)")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--max_new_tokens", type=int, default=48)
  parser.add_argument("--batch_size", type=int, default=256, help="rows per sampler call")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="a smoke run: 8 problems, k=4")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "mc_labels.json"))
  args = parser.parse_args(argv)
  if args.quick:
    args.problems, args.samples, args.k, args.sft_steps = 8, 2, 4, 0
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    policy = args.policy or train_policy(os.path.join(tmp, "sft"), args.sft_steps or None)
    train_s = time.perf_counter() - start
    result = run(args, policy)
  header = ("method", "precision", "recall", "detection_accuracy", "exact_accuracy",
            "step_label_accuracy", "rollouts", "completer_calls", "wall_s")
  print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for r in result["rows"]:
    print("| " + " | ".join(f"{r[h]:.3f}" if isinstance(r[h], float) and h != "wall_s"
                            else str(r[h]) for h in header) + " |")
  print(f"\nsolutions {result['data']['labelled']} (true errors "
        f"{result['rows'][0]['true_errors']}); the two methods' first errors agree on "
        f"{result['data']['methods_agree']:.3f}; seed {args.seed}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({**result, "args": vars(args), "seeds": {"problems": args.seed,
                                                       "jax_key": args.seed},
               "policy": args.policy or f"sft_arith:runlocal (steps "
                                        f"{args.sft_steps or 'default'}), trained "
                                        f"in {train_s:.0f} s",
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "jax": jax.__version__, "backend": jax.default_backend()}},
              f, indent=2, allow_nan=True)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
