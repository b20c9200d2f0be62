"""LoRA against full training: one SFT step's memory and time on the same model and batch.

    python benchmarks/lora.py                   # tiny (16 x 256) and small (8 x 256); ranks 8, 64
    python benchmarks/lora.py --shapes=tiny --ranks=8 --runs=5 --out=/tmp/lora.json

Every variant runs the training loop's path on a packed batch of arithmetic SFT examples: full
training is `step.jit_train_step` on `step.sft_loss`; LoRA is the same step on the loss
`loop._adapted` makes, the base a frozen argument and the state the adapters of every
projection (`loop._lora_start`, alpha = 2 rank). Per variant: the trained parameters, the
state's bytes (parameters and optimizer moments, the frozen base included), the compiled step's
bytes (`memory.compiled_bytes`: XLA's arguments + outputs - donated + temporaries), the memory
planner's estimate of it, the compilation seconds, and the median seconds of a step over
`--runs` after a warm-up. The variants' steps are taken in turns, so that the machine's drift
falls on all alike; a variant's time ratio to full training is the median over rounds of the
ratio within a round, with its quartiles. The first step's loss is the same in every variant
(b = 0: LoRA starts at the base model), which the script checks. Seeds: 0 for the weights, the
adapters and the problems. Prints a markdown table (progress goes to stderr); writes JSON
(--out).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

from configs import common
from reasonjax import models, sharding
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.models import lora
from reasonjax.training import loop, memory, optim, state as state_lib, step as step_lib

SHAPES = {"tiny": dict(preset="tiny", batch=16, seq_len=256, runs=15),
          "small": dict(preset="small", batch=8, seq_len=256, runs=5)}
QUICK = dict(preset="tiny", batch=2, seq_len=64, runs=2)
OPTIMIZER = {"learning_rate": 1e-4, "warmup_steps": 10, "total_steps": 1000}
HEADER = ("shape", "variant", "trained", "state MiB", "compiled MiB", "planned MiB",
          "compile s", "step s", "time vs full [q1, q3]")


def sft_batch(vocab_size: int, batch: int, seq_len: int) -> dict[str, np.ndarray]:
  """One packed batch [batch, seq_len] of arithmetic problems and their gold solutions."""
  task, tokenizer = tasks.get_task("arithmetic"), tokenizers.load("synthetic")
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"the synthetic tokenizer's {tokenizer.vocab_size} tokens exceed the "
                     f"model's vocab_size={vocab_size}")
  examples = [batching.sft_example(tokenizer, task.prompt(p), p.solution)
              for p in task.generate(batch * seq_len // 32, seed=0)]
  return next(batching.batches(examples, batch_size=batch, seq_len=seq_len, pack=True, seed=0))


def build(cfg: models.ModelConfig, host_batch: dict, rank: int) -> dict:
  """Compiles one variant (rank 0: full training); returns its numbers and a `step()` thunk
  that runs one step, waits for it and returns the loss."""
  mesh, rules = sharding.make_mesh(data=-1, fsdp=1, tensor=1), common.AXIS_RULES
  tx = optim.make_optimizer(OPTIMIZER)
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  params = models.init_params(cfg, jax.random.key(0))
  init_params, frozen, frozen_shardings, section = state_lib.init_boxed_params, (), None, None
  if rank:
    section = ml_collections.ConfigDict({"rank": rank, "alpha": 2.0 * rank,
                                         "targets": lora.TARGETS, "modules_to_save": ()})
    loss_fn, tree = loop._adapted(loss_fn, params, None, scale=2.0)
    init_params, params = loop._lora_start(
        ml_collections.ConfigDict({"lora": section, "seed": 0}), cfg, params)
    frozen_shardings = {"base": state_lib.state_shardings(cfg, tx, mesh, rules).params}
    frozen = (jax.device_put(tree, frozen_shardings),)
  state, shardings = state_lib.init_state(cfg, tx, jax.random.key(0), mesh=mesh, rules=rules,
                                          params=params, init_params=init_params)
  del params
  batch_shardings = sharding.batch_shardings(host_batch, mesh, rules)
  batch = jax.device_put(host_batch, batch_shardings)
  train_step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings,
                                       frozen_shardings)
  with sharding.axis_rules(mesh, rules):
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, *frozen).compile()
    compile_s = time.perf_counter() - start
  leaves = jax.tree.leaves((state.params, state.opt_state, frozen))
  rows, seq_len = host_batch["inputs"].shape
  plan = memory.plan(cfg, mesh_shape=mesh.shape, rules=rules, batch_size=rows, seq_len=seq_len,
                     lora_section=section)
  holder = {"state": state}

  def step() -> float:
    holder["state"], metrics = compiled(holder["state"], batch, *frozen)
    jax.block_until_ready(metrics)
    return float(metrics["loss"])

  return {"trained": sum(x.size for x in jax.tree.leaves(state.params)),
          "state_bytes": sum(x.nbytes for x in leaves),
          "compiled_bytes": memory.compiled_bytes(compiled.memory_analysis()),
          "planned_bytes": plan.total, "compile_s": compile_s, "step": step}


def run_shape(name: str, shape: dict, ranks: list[int], runs: int) -> list[dict]:
  """The rows of one shape: full training, then each rank."""
  cfg = models.preset(shape["preset"])
  host_batch = sft_batch(cfg.vocab_size, shape["batch"], shape["seq_len"])
  variants = {"full": build(cfg, host_batch, 0)}
  variants |= {f"lora r={r}": build(cfg, host_batch, r) for r in ranks}
  first = {v: built["step"]() for v, built in variants.items()}  # warm-up
  if not np.allclose(list(first.values()), first["full"], rtol=1e-5):
    raise AssertionError(f"{name}: the first losses differ: {first}")
  seconds = {v: [] for v in variants}
  for _ in range(runs):
    for v, built in variants.items():
      start = time.perf_counter()
      built["step"]()
      seconds[v].append(time.perf_counter() - start)
  rows = []
  for v, built in variants.items():
    ratios = [s / f for s, f in zip(seconds[v], seconds["full"])]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    rows.append({"shape": name, "variant": v, "trained": built["trained"],
                 "state_bytes": built["state_bytes"], "compiled_bytes": built["compiled_bytes"],
                 "planned_bytes": built["planned_bytes"], "compile_s": built["compile_s"],
                 "step_s": statistics.median(seconds[v]),
                 "time_ratio": statistics.median(ratios), "time_ratio_quartiles": [q1, q3],
                 "first_loss": first[v],
                 "batch": list(host_batch["inputs"].shape), "runs": runs})
  return rows


def markdown(rows: list[dict]) -> str:
  mib = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
  lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  for r in rows:
    lines.append("| " + " | ".join([
        f"{r['shape']} ({r['batch'][0]} x {r['batch'][1]})", r["variant"], f"{r['trained']:,}",
        mib(r["state_bytes"]), mib(r["compiled_bytes"]), mib(r["planned_bytes"]),
        f"{r['compile_s']:.1f}", f"{r['step_s']:.3f}",
        f"{r['time_ratio']:.2f} [{r['time_ratio_quartiles'][0]:.2f}, "
        f"{r['time_ratio_quartiles'][1]:.2f}]"]) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default=",".join(SHAPES), help=f"from {list(SHAPES)}")
  parser.add_argument("--ranks", default="8,64", help="comma-separated LoRA ranks")
  parser.add_argument("--runs", type=int, default=0, help="timed steps (0: the shape's own)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny at 2 x 64 tokens, rank 4, two timed steps (for tests)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "lora.json"))
  args = parser.parse_args(argv)
  names = [s for s in args.shapes.split(",") if s]
  unknown = sorted(set(names) - set(SHAPES))
  if unknown:
    parser.error(f"unknown shapes {unknown}; valid: {list(SHAPES)}")
  ranks = [int(r) for r in args.ranks.split(",") if r]
  if not ranks or min(ranks) < 1:
    parser.error(f"--ranks={args.ranks!r}: expected positive integers")
  shapes = {"tiny": QUICK} if args.quick else {n: SHAPES[n] for n in names}
  rows = []
  for name, shape in shapes.items():
    print(f"{name} ...", file=sys.stderr, flush=True)
    rows += run_shape(name, shape, [4] if args.quick else ranks, args.runs or shape["runs"])
  machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
             "backend": jax.default_backend(), "devices": len(jax.devices())}
  print(f"One SFT step, float32, on {machine['cpus']} CPUs ({machine['backend']}, jax "
        f"{machine['jax']}); seeds 0; step times are medians, ratios within rounds.\n")
  print(markdown(rows))
  results = {"rows": rows, "quick": args.quick, "machine": machine}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
