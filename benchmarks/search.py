"""Search workloads on CPU: generated tokens/s and compiled memory, one section per workload.

    python benchmarks/search.py                        # every section, full shapes
    python benchmarks/search.py --sections=expansion --runs=5
    python benchmarks/search.py --quick                # smallest shapes, a few seconds

Sections (each a function `<name>(args) -> rows`, listed in SECTIONS):

- expansion: the compiled sampler with the prompt's KV cache shared by its rows
  (`SamplingConfig.share_prefix=True`, `models.SharedPrefixCache`) vs copied for each row
  (`share_prefix=False`, `KVCache.repeat`), at the shape of expanding search nodes on MATH
  (prefixes of 384 tokens, k = 16 continuations of 48 tokens), at GRPO's rollout shape
  (configs/grpo_arith.py: 16 prompts x 8 samples x 64 tokens, 32-token prompts) and at a small
  shape, for the "tiny" and "small" (~100M) presets with random weights. Greedy, no EOS: both
  generate exactly batch x k x new tokens. Throughput is the median of `--runs` timed runs
  after one warm-up (compilation), the two samplers alternating so that load from other
  processes falls on both alike; memory is XLA's compiled estimate (temp + argument + output
  bytes of `memory_analysis()`; the arguments, mostly weights, are the same for both).
  To see what bounds the ratio, a call is split into its prefill (`prefill_s`, the same in
  both) and new - 1 decode steps (`*_step_ms`, `decode_speedup`), beside the step of the same
  rows after 1-token prompts (`no_prefix_step_ms`: weights, LM head and sampling, a floor for
  both); `kv_ratio` is the ratio of KV-cache slots alone, k (P + new) / (P + k (new - 1)).
- mcts: step-level MCTS as this library runs it (`search.methods.grow_trees`: B trees, W leaves per
  tree per round, one sampler call per round for all of them, jitted tree updates) against a
  host-Python MCTS that expands one node per call of the same jitted sampler (the reference
  code's design, `host_mcts`), on the same problems with the same budget of simulations, k
  and c; simulations/s and generated tokens/s, medians of `--runs` after a warm-up. Beside
  them, the sampler's time per row for one node's k rows and for a round's B * W * k rows: their
  ratio (`sampler_bound`) is what batching can gain where sampling dominates.

Prints a table per section and writes one JSON with a key per section (default
benchmarks/results/search.json); a run of some sections keeps the others' earlier results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from reasonjax import models, sampling
from reasonjax.sampling import sampler

# name -> (prefix tokens, continuations per prefix k, new tokens per continuation, prefixes)
EXPANSION_SHAPES = {
    "math_expand": (384, 16, 48, 4),
    "grpo_rollouts": (32, 8, 64, 16),
    "short": (16, 4, 32, 8),
}
EXPANSION_RUNS = [  # (preset, shape): the quick run keeps the first only.
    ("tiny", "short"), ("tiny", "math_expand"), ("tiny", "grpo_rollouts"),
    ("small", "short"), ("small", "math_expand"), ("small", "grpo_rollouts"),
]


def compile_sample(model, params, tokens, lengths, config):
  """The compiled program `sampling.sample` runs for these inputs, and its inputs."""
  width = sampling.bucket_length(tokens.shape[1])
  inputs = (params, jnp.pad(jnp.asarray(tokens), ((0, 0), (0, width - tokens.shape[1]))),
            jnp.asarray(lengths), jax.random.key(0))
  return sampler._generate.lower(*inputs, model=model, config=config).compile(), inputs


def memory_bytes(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  return {"temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes,
          "output": m.output_size_in_bytes}


def expansion(args) -> list[dict]:
  """Prefix-shared vs copying sampler: tokens/s and memory at each (preset, shape)."""
  runs = EXPANSION_RUNS[:1] if args.quick else EXPANSION_RUNS
  rows = []
  for preset, shape in runs:
    prefix_len, k, new, batch = EXPANSION_SHAPES[shape]
    cfg = models.preset(preset)
    model = models.Model(cfg)
    params = models.init_params(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prefix_len), np.int32)
    lengths = np.full((batch,), prefix_len, np.int32)
    base = sampling.SamplingConfig(max_new_tokens=new, num_samples=k, eos_token_id=None)
    # The call splits into its prefill (max_new_tokens=1 runs no decode step; the copying one
    # also repeats the cache) and new - 1 decode steps. The same rows and steps after 1-token
    # prompts give the step's cost without a prefix to attend to (weights, LM head, sampling):
    # a floor for both.
    programs, compile_s = {}, {}
    for name, config, prompt, prompt_lengths in (
        ("shared", base, tokens, lengths),
        ("copied", base.replace(share_prefix=False), tokens, lengths),
        ("prefill", base.replace(max_new_tokens=1), tokens, lengths),
        ("prefill_copied", base.replace(max_new_tokens=1, share_prefix=False), tokens, lengths),
        ("no_prefix", base.replace(share_prefix=False), tokens[:, :1], np.ones_like(lengths))):
      start = time.perf_counter()
      programs[name] = compile_sample(model, params, prompt, prompt_lengths, config)
      compile_s[name] = round(time.perf_counter() - start, 2)

    def run(name):
      compiled, inputs = programs[name]
      out = compiled(*inputs)
      out.tokens.block_until_ready()
      return out

    outs = {name: run(name) for name in programs}  # Warm-up, and the outputs compared.
    assert (np.asarray(outs["shared"].lengths) == new).all() and new > 1
    same = bool((np.asarray(outs["shared"].tokens) == np.asarray(outs["copied"].tokens)).all())
    times = {name: [] for name in programs}
    for _ in range(1 if args.quick else args.runs):
      for name in programs:
        start = time.perf_counter()
        run(name)
        times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    memory = {name: memory_bytes(programs[name][0]) for name in ("shared", "copied")}
    total = {name: sum(m.values()) for name, m in memory.items()}
    generated, bucket = batch * k * new, sampling.bucket_length(prefix_len)
    step_ms = lambda s: round(s / (new - 1) * 1e3, 2)  # noqa: E731
    rows.append({
        "preset": preset, "shape": shape, "params_m": round(models.param_count(cfg) / 1e6, 1),
        "prefixes": batch, "prefix_len": prefix_len,
        "prefix_bucket": bucket, "k": k, "new_tokens": new,
        "shared_tok_s": round(generated / seconds["shared"], 1),
        "copied_tok_s": round(generated / seconds["copied"], 1),
        "speedup": round(seconds["copied"] / seconds["shared"], 2),
        "prefill_s": round(seconds["prefill"], 3),
        "shared_step_ms": step_ms(seconds["shared"] - seconds["prefill"]),
        "copied_step_ms": step_ms(seconds["copied"] - seconds["prefill_copied"]),
        "no_prefix_step_ms": step_ms(seconds["no_prefix"]),
        "decode_speedup": round((seconds["copied"] - seconds["prefill_copied"])
                                / (seconds["shared"] - seconds["prefill"]), 2),
        "shared_mb": round(total["shared"] / 2**20, 1),
        "copied_mb": round(total["copied"] / 2**20, 1),
        "memory_ratio": round(total["copied"] / total["shared"], 2),
        "temp_ratio": round(memory["copied"]["temp"] / memory["shared"]["temp"], 2),
        # KV-cache slots alone: B*k rows x (P + new) copied; B x P + B*k x (new - 1) shared.
        "kv_ratio": round(batch * k * (bucket + new) / (batch * bucket + batch * k * (new - 1)),
                          2),
        "same_tokens": same,
        "seconds": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
        "memory_bytes": memory, "compile_s": compile_s,
    })
    print(f"  {preset} {shape}: " + str({h: rows[-1][h] for h in EXPANSION_HEADER}), flush=True)
  return rows


EXPANSION_HEADER = ("preset", "shape", "prefixes", "prefix_len", "k", "new_tokens",
                    "shared_tok_s", "copied_tok_s", "speedup", "prefill_s", "shared_step_ms",
                    "copied_step_ms", "no_prefix_step_ms", "decode_speedup", "shared_mb",
                    "copied_mb", "memory_ratio", "temp_ratio", "kv_ratio", "same_tokens")
# ----------------------------------------------------------------------------------- mcts

# (trees, simulations per tree, candidates per expansion k, leaves per round W)
MCTS_SHAPES = {"quick": (4, 8, 4, 2), "full": (16, 32, 4, 4)}


def _mcts_policy(batch_size: int):
  """A policy of configs/sft_arith.py:runlocal's shape with random weights (initializer 0.2, so
  that steps vary), the synthetic tokenizer and arithmetic chains: steps run to their token
  limit or a delimiter, as a trained policy's would."""
  from reasonjax.data import tasks, tokenizers
  from reasonjax.search import StepPolicy
  cfg = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=128,
                      intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=32,
                      initializer_range=0.2)
  task = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99)
  return StepPolicy(models.Model(cfg), models.init_params(cfg, jax.random.key(0)),
                    tokenizers.load("synthetic"), task, temperature=1.0, max_step_tokens=16,
                    max_steps=4, max_new_tokens=64, batch_size=batch_size)


def host_mcts(policy, scorer, problem, rng, *, simulations: int, k: int, c: float
              ) -> tuple[int, int]:
  """The reference code's design: a Python tree, one node expanded per sampler call (batch
  one), PUCT selection with first-play value = the parent's Q, each new child one simulation
  (as `search.mcts`). Returns (simulations, generated tokens)."""
  from reasonjax.search import expand
  from reasonjax.search.language import step_priors
  nodes = [{"parent": -1, "ids": policy.prompt_ids(problem), "steps": [], "children": [],
            "n": 0, "w": 0.0, "p": 1.0, "terminal": False, "depth": 0}]
  sims = tokens = calls = 0

  def backup(i, value):
    while i >= 0:
      nodes[i]["n"] += 1
      nodes[i]["w"] += value
      i = nodes[i]["parent"]

  while sims < simulations:
    i = 0
    while nodes[i]["children"] and not nodes[i]["terminal"]:
      parent = nodes[i]
      q_parent = parent["w"] / max(parent["n"], 1)

      def score(j):
        ch = nodes[j]
        q = ch["w"] / ch["n"] if ch["n"] else q_parent
        return q + c * ch["p"] * np.sqrt(parent["n"]) / (1 + ch["n"])
      i = max(parent["children"], key=score)
    node = nodes[i]
    if node["terminal"] or node["depth"] >= policy.max_steps:
      backup(i, node["w"] / max(node["n"], 1))
      sims += 1
      continue
    cands = expand(policy, [node["ids"]], k, jax.random.fold_in(rng, calls))[0]
    calls += 1
    scores = scorer([problem] * k, [node["steps"] + [c_.text] for c_ in cands])
    for cand, s, p in zip(cands, scores, step_priors(cands)):
      tokens += len(cand.ids)
      nodes.append({"parent": i, "ids": np.concatenate([node["ids"], cand.ids]),
                    "steps": node["steps"] + [cand.text], "children": [], "n": 0, "w": 0.0,
                    "p": float(p), "depth": node["depth"] + 1,
                    "terminal": cand.final or node["depth"] + 1 >= policy.max_steps})
      node["children"].append(len(nodes) - 1)
      backup(len(nodes) - 1, float(s[-1]))
      sims += 1
  return sims, tokens


def mcts(args) -> list[dict]:
  """Batched MCTS (`search.methods.grow_trees`: B trees, W leaves per round, one sampler call per
  round) against `host_mcts` on the same problems with the same budget, k and c."""
  from reasonjax.search import OracleScorer, Search, methods as methods_lib
  trees, sims, k, w = MCTS_SHAPES["quick" if args.quick else "full"]
  batched = _mcts_policy(batch_size=trees * w)
  single = dataclasses.replace(batched, batch_size=1)
  scorer = OracleScorer(batched.task)
  problems = batched.task.generate(trees, seed=0, split="test")
  settings = {"num_children": k, "simulations_per_round": w, "c": 1.0, "evaluation": "reward"}

  def run_batched(seed):
    search = Search(batched, scorer, problems, jax.random.key(seed), mcts=settings)
    _, env, stats = methods_lib.grow_trees(search, sims)
    return int(stats["simulations"].sum()), int(env.tokens.sum())

  def run_host(seed):
    done = [host_mcts(single, scorer, p, jax.random.fold_in(jax.random.key(seed), i),
                      simulations=sims, k=k, c=1.0) for i, p in enumerate(problems)]
    return sum(d[0] for d in done), sum(d[1] for d in done)

  measured = {}
  for name, fn in (("batched", run_batched), ("host", run_host)):
    fn(0)  # Warm-up: compilation of every prefix bucket these trees reach.
    times, counts = [], []
    for r in range(1 if args.quick else args.runs):
      start = time.perf_counter()
      counts.append(fn(r + 1))
      times.append(time.perf_counter() - start)
    measured[name] = (statistics.median(times), counts, times)
  row = {"trees": trees, "simulations": sims, "k": k, "W": w}
  for name, (seconds, counts, times) in measured.items():
    total_sims = statistics.median(c[0] for c in counts)
    total_tokens = statistics.median(c[1] for c in counts)
    row |= {f"{name}_simulations": total_sims, f"{name}_sims_s": round(total_sims / seconds, 1),
            f"{name}_tok_s": round(total_tokens / seconds, 1),
            f"{name}_seconds": [round(t, 3) for t in times]}
  row["speedup"] = round(row["batched_sims_s"] / row["host_sims_s"], 2)
  # The bound on that ratio when the sampler dominates: its time per row for one node's k rows
  # against a full round's B * W * k rows (48-token prefixes, a whole step generated).
  per_row = {}
  for name, prefixes in (("host", 1), ("batched", trees * w)):
    tokens = np.full((prefixes, 48), 7, np.int32)
    config = batched.sampling(max_new_tokens=batched.max_step_tokens, num_samples=k,
                              eos_token_id=None)
    call = lambda: sampling.sample(batched.model, batched.params, tokens,  # noqa: E731
                                   np.full((prefixes,), 48, np.int32), jax.random.key(0),
                                   config).tokens.block_until_ready()
    call()
    times = []
    for _ in range(5):
      start = time.perf_counter()
      call()
      times.append(time.perf_counter() - start)
    per_row[name] = statistics.median(times) / (prefixes * k)
  row["host_row_ms"] = round(per_row["host"] * 1e3, 3)
  row["batched_row_ms"] = round(per_row["batched"] * 1e3, 3)
  row["sampler_bound"] = round(per_row["host"] / per_row["batched"], 2)
  print("  " + str({h: row[h] for h in MCTS_HEADER}), flush=True)
  return [row]


MCTS_HEADER = ("trees", "simulations", "k", "W", "batched_sims_s", "host_sims_s",
               "batched_tok_s", "host_tok_s", "speedup", "host_row_ms", "batched_row_ms",
               "sampler_bound")


# name -> (function, table columns).
SECTIONS = {"expansion": (expansion, EXPANSION_HEADER), "mcts": (mcts, MCTS_HEADER)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated, from {list(SECTIONS)}")
  parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
  parser.add_argument("--quick", action="store_true",
                      help="the smallest shape of each section, one timed run")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "search.json"))
  args = parser.parse_args(argv)
  names = [s for s in args.sections.split(",") if s]
  unknown = sorted(set(names) - set(SECTIONS))
  if unknown:
    parser.error(f"unknown sections {unknown}; valid: {list(SECTIONS)}")
  results = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  for name in names:
    fn, header = SECTIONS[name]
    print(f"{name}:", flush=True)
    rows = fn(args)
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
      print("| " + " | ".join(str(r[h]) for h in header) + " |")
    results[name] = {"rows": rows, "quick": args.quick, "runs": args.runs}
  results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "jax": jax.__version__, "devices": len(jax.devices())}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")
  return results


if __name__ == "__main__":
  main()
