"""Train-step MFU, decode against the memory-bandwidth bound, and a GRPO iteration, on any backend.

    python benchmarks/accelerator.py                  # GPU/TPU: qwen2.5-0.5b and -1.5b; CPU: tiny
    python benchmarks/accelerator.py --quick          # smallest shapes, a few timed runs (tests)
    python benchmarks/accelerator.py --presets=qwen2.5-0.5b --sections=train --batch=16

Whatever backend JAX finds (`jax.default_backend()`, the first device's `device_kind`), with
random weights in `--dtype` (bfloat16 by default) and one mesh over all devices:

- train: one SFT step of the package (`training.step.jit_train_step` with `step.sft_loss`,
  AdamW and clipping as in benchmarks/train_step.py), the state donated, on a (data, fsdp,
  tensor) mesh (`--mesh`, default FSDP over every device); bf16 compute, float32 parameters
  and optimizer. Median of `--steps` timed steps after `--warmup`. Model FLOPs per token are
  `models.flops_per_token(cfg, T)` = 6 N + 12 L H hd T: N counts the weights used in matmuls
  (the layers' projections and the LM head, tied or not; not the embedding lookup), the second
  term QK^T and AV over the full T x T square, forward and backward (the PaLM paper's MFU
  convention). MFU = FLOPs per token x tokens per second / (peak per device x devices).
- decode: `sampling.sample` (prefill, then a `lax.while_loop` over the KV cache), greedy, no
  EOS, so every row generates exactly `--new_tokens`; weights in the compute dtype, replicated
  on a data-parallel mesh (`--decode_mesh`). The decode time is a full call's minus that of a
  call generating one token (the prefill and first token; medians of `--runs`), over new - 1
  steps. Bound: each step, every device reads every weight once (the tied embedding table as
  the LM head) and the keys and values of its rows' P + t cached tokens (t = 1 .. new - 1), at
  the device's memory bandwidth; the fraction is bound time / measured time. The sampler
  attends over its whole cache (bucket(P) + new slots), so that waste counts against it.
- grpo: one iteration of `configs/grpo_arith.py` (its `runlocal` variant with --quick) with the
  package's own pieces, as `programs.grpo.run` composes them: `grpo.Rollouts` samples and
  grades the arithmetic task's prompts (compiled sampler, `rewards.scoring.Scorer`), then the
  jitted `grpo_loss` step(s), against the frozen starting policy; the model in `--dtype`.
  Median seconds per iteration after one warm-up iteration, split into sampling, scoring and
  training.

Peak FLOP/s per device: the data-sheet bf16 dense value of `metrics.DEVICE_PEAKS`; HBM bandwidth:
`HBM_BANDWIDTH` below. On CPU both are measured in the same run (`metrics.matmul_peak_flops` in
`--dtype` and benchmarks/sampling.py's streaming reduction, each the larger of a measurement
at the start and one after the section that uses it). An unknown device kind prints "unknown"
and its MFU or fraction is left out (null); `--peak_tflops` / `--bandwidth_gbs` give them per
device.

Prints a markdown table per section and writes them (`--md`, default
benchmarks/results/accelerator.md) and JSON (`--out`, default benchmarks/results/accelerator.json)
with the backend, device kind and count and the jax version. A case that fails (e.g. out of
memory) is reported in its row and the others still run; the exit code is then 1.
Goals on accelerators: train MFU >= 0.40, decode >= 0.50 of the bandwidth bound.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # `benchmarks.*` from the repository root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import train_step as train_step_bench  # noqa: E402
from configs import grpo_arith  # noqa: E402
from configs.common import AXIS_RULES  # noqa: E402
from reasonjax import host_memory, metrics, models, sampling, sharding  # noqa: E402
from reasonjax.programs import grpo  # noqa: E402
from reasonjax.training import experiment, optim  # noqa: E402
from reasonjax.training import state as state_lib  # noqa: E402
from reasonjax.training import step as step_lib  # noqa: E402

# HBM bandwidth per chip (bytes/s) from the vendors' data sheets: NVIDIA A100 (SXM4 40 GB:
# 1,555 GB/s; 80 GB: 2,039 GB/s), H100 SXM (3.35 TB/s), H200 SXM (4.8 TB/s); Google Cloud's TPU
# system-architecture pages: v4 1,200 GB/s, v5e 819 GB/s, v5p 2,765 GB/s, v6e 1,640 GB/s. Keys
# are `device_kind` strings as in `metrics.DEVICE_PEAKS`; a v5p TPU VM reports "TPU v5".
HBM_BANDWIDTH = {
    "TPU v4": 1200e9,
    "TPU v5 lite": 819e9,
    "TPU v5e": 819e9,
    "TPU v5": 2765e9,
    "TPU v5p": 2765e9,
    "TPU v6 lite": 1640e9,
    "TPU v6e": 1640e9,
    "NVIDIA A100-SXM4-40GB": 1555e9,
    "NVIDIA A100-SXM4-80GB": 2039e9,
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H200": 4.8e12,
}
GOALS = {"train_mfu": 0.40, "decode_fraction": 0.50}
SECTIONS = ("train", "decode", "grpo")

# Defaults per kind of run: accelerators (GPU/TPU), CPU, and --quick. `batch` is train rows
# per device, `decode_batch` decode rows in all.
# attention_block 512 on accelerators: the blockwise attention unrolls T / block blocks per layer,
# and 64 (the CPU-tuned default) makes 32 of them at T = 2048 (long compiles, small kernels).
DEFAULTS = {
    "accelerator": dict(presets="qwen2.5-0.5b,qwen2.5-1.5b", batch=8, seq_len=2048, steps=10,
                        warmup=2, attention_block=512, decode_batch=64, prompt_len=512,
                        new_tokens=256, runs=5, grpo_iterations=5, grpo_variant="", peak_size=1024),
    "cpu": dict(presets="tiny", batch=8, seq_len=256, steps=5, warmup=1, attention_block=64,
                decode_batch=32, prompt_len=64, new_tokens=64, runs=3, grpo_iterations=3,
                grpo_variant="", peak_size=1024),
    "quick": dict(presets="tiny", batch=2, seq_len=64, steps=2, warmup=1, attention_block=64,
                  decode_batch=4, prompt_len=16, new_tokens=16, runs=2, grpo_iterations=1,
                  grpo_variant="runlocal", peak_size=1024),
}


# ----------------------------------------------------------------------------- the device


def device_info(args) -> dict:
  """Backend, device kind and count, and the per-device peak and bandwidth with their sources
  (None where unknown). On CPU the peak is measured here (again after the train section)."""
  devices = jax.devices()
  kind, backend = devices[0].device_kind, jax.default_backend()
  info = {"backend": backend, "device_kind": kind, "device_count": len(devices),
          "process_count": jax.process_count(), "jax": jax.__version__,
          "python": platform.python_version(), "platform": platform.platform(),
          "cpus": os.cpu_count()}
  if args.peak_tflops:
    peak, peak_source = args.peak_tflops * 1e12, "--peak_tflops"
  elif kind in metrics.DEVICE_PEAKS:
    peak, peak_source = metrics.DEVICE_PEAKS[kind], "data sheet (bf16 dense)"
  elif backend == "cpu":
    peak = cpu_peak(args.dtype, args.peak_size)
    peak_source = f"measured ({args.dtype} {args.peak_size}^3 matmul)"
  else:
    peak, peak_source = None, "unknown"
  if args.bandwidth_gbs:
    bandwidth, bandwidth_source = args.bandwidth_gbs * 1e9, "--bandwidth_gbs"
  elif kind in HBM_BANDWIDTH:
    bandwidth, bandwidth_source = HBM_BANDWIDTH[kind], "data sheet"
  elif backend == "cpu":
    bandwidth, bandwidth_source = cpu_bandwidth(), "measured (streaming reduction)"
  else:
    bandwidth, bandwidth_source = None, "unknown"
  return info | {"peak_flops_per_device": peak, "peak_source": peak_source,
                 "bandwidth_per_device": bandwidth, "bandwidth_source": bandwidth_source}


def cpu_peak(dtype: str, size: int) -> float:
  """FLOP/s per device of a `size`^3 matmul on all local devices at once (fake CPU devices share
  the cores: each one's share of the machine)."""
  return metrics.matmul_peak_flops(dtype, size=size) / jax.local_device_count()


def cpu_bandwidth() -> float:
  """Bytes/s per device of benchmarks/sampling.py's compiled reduction over 512 MB (the fake CPU
  devices share the machine's memory). Imported here: that module imports torch."""
  from benchmarks import sampling as sampling_bench
  return sampling_bench.memory_bandwidth_gbs() * 1e9 / jax.local_device_count()


def mesh_from(spec: str):
  """A mesh from "data,fsdp,tensor" sizes (one may be -1) over all devices."""
  data, fsdp, tensor = (int(s) for s in spec.split(","))
  return sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)


def fraction(value: float | None) -> float | None:
  """An MFU or a fraction of the bound for the JSON; None (unknown peak) stays None."""
  return None if value is None else round(value, 4)


# ----------------------------------------------------------------------------- train


def train(name: str, args, info: dict) -> dict:
  """One preset's SFT step: median seconds, tokens/s, model TFLOP/s and MFU."""
  cfg = models.preset(name, dtype=args.dtype, attention_block=args.attention_block,
                      attention_impl=args.attention_impl, remat=args.remat,
                      scan_layers=args.scan_layers)
  mesh = mesh_from(args.mesh)
  rows, length = args.batch * jax.device_count(), args.seq_len
  batch_np = train_step_bench.make_batch(cfg.vocab_size, rows, length)
  sharding.check_batch(rows, mesh, AXIS_RULES)
  tx = optim.make_optimizer(train_step_bench.OPTIMIZER)
  with sharding.axis_rules(mesh, AXIS_RULES):
    state, shardings = state_lib.init_state(cfg, tx, jax.random.key(0), mesh=mesh,
                                            rules=AXIS_RULES)
    batch_shardings = sharding.batch_shardings(batch_np, mesh, AXIS_RULES)
    batch = sharding.put_batch(batch_np, batch_shardings)
    loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
    step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings)
    start = time.perf_counter()  # Compiled ahead of time: compilation is reported apart.
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.warmup + args.steps):
      start = time.perf_counter()
      state, step_metrics = compiled(state, batch)  # The state is donated.
      jax.block_until_ready((state, step_metrics))
      times.append(time.perf_counter() - start)
  loss = float(step_metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(f"{name}: the train step's loss is {loss}")
  del state, batch
  step_s = statistics.median(times[args.warmup:])
  flops_per_token = models.flops_per_token(cfg, length)
  achieved = flops_per_token * rows * length / step_s
  peak = info["peak_flops_per_device"]
  if info["backend"] == "cpu" and info["peak_source"].startswith("measured"):
    # Other processes' load moves the measured peak within a run: the faster one counts (a peak
    # taken in a slow moment gave MFUs above 1 in benchmarks/train_step.py).
    peak = info["peak_flops_per_device"] = max(peak, cpu_peak(args.dtype, args.peak_size))
  return {
      "preset": name, "params": models.param_count(cfg), "dtype": cfg.dtype,
      "param_dtype": cfg.param_dtype, "attention_impl": cfg.attention_impl,
      "attention_block": cfg.attention_block, "remat": cfg.remat,
      "scan_layers": cfg.scan_layers,
      "mesh": dict(mesh.shape), "batch": rows, "seq_len": length,
      "step_s": round(step_s, 4), "steps_s": [round(t, 4) for t in times],
      "warmup": args.warmup, "tokens_per_s": round(rows * length / step_s, 1),
      "flops_per_token": flops_per_token, "model_tflop_s": round(achieved / 1e12, 3),
      "mfu": fraction(achieved / (peak * jax.device_count()) if peak else None),
      "compile_s": round(compile_s, 2), "loss": round(loss, 4),
  }


# ----------------------------------------------------------------------------- decode


def decode_weight_bytes(cfg: models.ModelConfig) -> int:
  """Weight bytes one decode step reads: every parameter but the input embedding table (a
  lookup of B rows), which a tied LM head reads whole, in the compute dtype (the sampler casts
  the weights once per call)."""
  count = models.param_count(cfg, embedding=False)
  count += cfg.vocab_size * cfg.hidden_size * (cfg.lm_head and cfg.tie_word_embeddings)
  return count * jnp.dtype(cfg.dtype).itemsize


def kv_bytes_per_token(cfg: models.ModelConfig) -> int:
  """Key and value bytes of one cached token over all layers (`models.init_cache`'s layout)."""
  return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def decode_bound_s(cfg: models.ModelConfig, rows: int, prompt_len: int, new_tokens: int,
                   bandwidth: float, *, row_ways: int = 1, tensor: int = 1) -> float:
  """Seconds of the new - 1 decode steps at `bandwidth` bytes/s per device: step t reads the
  weights and the P + t cached tokens of each row. Rows split `row_ways` ways (the mesh's data x
  fsdp), weights and heads `tensor` ways (an ideal split: a lower bound on bytes per device)."""
  cached = sum(prompt_len + t for t in range(1, new_tokens))  # token-steps per row
  per_device = (decode_weight_bytes(cfg) * (new_tokens - 1)
                + kv_bytes_per_token(cfg) * rows / row_ways * cached) / tensor
  return per_device / bandwidth


def decode(name: str, args, info: dict) -> dict:
  """One preset's decode: tokens/s, ms per step and the fraction of the bandwidth bound."""
  dtype = args.dtype
  mesh = mesh_from(args.decode_mesh)
  rows, prompt_len, new = args.decode_batch, args.prompt_len, args.new_tokens
  sharding.check_batch(rows, mesh, AXIS_RULES)
  if new < 2:
    raise ValueError(f"--new_tokens={new}: at least 2 (one decode step)")
  full = sampling.SamplingConfig(max_new_tokens=new, temperature=0.0, eos_token_id=None)
  configs = {"full": full, "prefill": full.replace(max_new_tokens=1)}
  with sharding.axis_rules(mesh, AXIS_RULES):
    # Weights stored in the compute dtype, as for serving: the sampler's cast is then a no-op.
    cfg, params = models.load({"preset": name, "dtype": dtype, "param_dtype": dtype},
                              jax.random.key(0), mesh=mesh, rules=AXIS_RULES)
    model = models.Model(cfg)
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (rows, prompt_len), np.int32)
    lengths = np.full((rows,), prompt_len, np.int32)

    def run(which: str):
      out = sampling.sample(model, params, prompts, lengths, jax.random.key(1), configs[which])
      jax.block_until_ready(out.tokens)
      return out

    first = {}
    for which in configs:  # The first call compiles.
      start = time.perf_counter()
      run(which)
      first[which] = time.perf_counter() - start
    times = {which: [] for which in configs}
    for _ in range(args.runs):  # In turns, so that load from other processes falls on both.
      for which in configs:
        start = time.perf_counter()
        out = run(which)
        times[which].append(time.perf_counter() - start)
        if which == "full" and int(np.asarray(out.lengths).min()) != new:
          raise ValueError(f"{name}: rows ended before {new} tokens: {out.lengths}")
  seconds = {which: statistics.median(t) for which, t in times.items()}
  decode_s = seconds["full"] - seconds["prefill"]
  steps = new - 1
  bandwidth = info["bandwidth_per_device"]
  if info["backend"] == "cpu" and info["bandwidth_source"].startswith("measured"):
    # As for the peak: measured again, the faster one counts.
    bandwidth = info["bandwidth_per_device"] = max(bandwidth, cpu_bandwidth())
  bound_s = (decode_bound_s(cfg, rows, prompt_len, new, bandwidth,
                            row_ways=mesh.shape["data"] * mesh.shape["fsdp"],
                            tensor=mesh.shape["tensor"]) if bandwidth else None)
  return {
      "preset": name, "params": models.param_count(cfg), "dtype": dtype,
      "mesh": dict(mesh.shape), "batch": rows, "prompt_len": prompt_len,
      "prompt_bucket": sampling.bucket_length(prompt_len), "new_tokens": new,
      "decode_tok_s": round(rows * steps / decode_s, 1),
      "call_tok_s": round(rows * new / seconds["full"], 1),
      "step_ms": round(decode_s / steps * 1e3, 3), "prefill_s": round(seconds["prefill"], 4),
      "weight_bytes": decode_weight_bytes(cfg), "kv_bytes_per_token": kv_bytes_per_token(cfg),
      "bound_step_ms": round(bound_s / steps * 1e3, 4) if bound_s else None,
      "bound_tok_s": round(rows * steps / bound_s, 1) if bound_s else None,
      "fraction_of_bound": fraction(bound_s / decode_s if bound_s else None),
      "compile_s": round(first["full"] - seconds["full"] + first["prefill"]
                         - seconds["prefill"], 2),
      "seconds": {which: [round(t, 4) for t in ts] for which, ts in times.items()},
  }


# ----------------------------------------------------------------------------- grpo


def grpo_iteration(name: str, args, info: dict) -> dict:
  """Seconds per GRPO iteration of configs/grpo_arith.py (`name`) from random weights."""
  del name, info
  config = grpo_arith.get_config(args.grpo_variant or None)
  task, tokenizer = experiment.task_and_tokenizer(config)
  # The policy the nested SFT run would train, with the runtime fields of `config.model`.
  section = dict(config.sft.model) | dict(config.model) | {"dtype": args.dtype}
  cfg = experiment.model_config(section, tokenizer)
  model = models.Model(cfg)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  scorer = grpo.make_scorer(config, task, tokenizer)
  loss_kwargs = dict(config.policy_loss)
  loss_kwargs["dual_clip"] = loss_kwargs["dual_clip"] or None  # as grpo.run: 0 is off
  loss_fn = functools.partial(grpo.grpo_loss, model=model,
                              temperature=config.rollouts.temperature,
                              aggregation=config.aggregation,
                              max_len=config.rollouts.max_new_tokens, loss_kwargs=loss_kwargs,
                              share_prompt=config.share_prompt)
  tx = optim.make_optimizer(optim.FIELDS | {"total_steps": config.steps}
                            | dict(config.optimizer))
  mesh = sharding.make_mesh(**config.mesh)
  rules = tuple(config.axis_rules)
  steps_per_iteration = config.epochs * config.minibatches
  try:
    with sharding.axis_rules(mesh, rules):
      rollouts = grpo.Rollouts(config, model, task, tokenizer, problems, scorer)
      _, params = models.load(section, jax.random.key(config.seed), mesh=mesh, rules=rules)
      # As loop.train does: the state made in its shardings, the starting policy placed like it
      # as the frozen reference (grpo.run passes it when beta > 0).
      state, shardings = state_lib.init_state(cfg, tx, jax.random.key(config.seed), mesh=mesh,
                                              rules=rules, params=params)
      frozen = jax.device_put(params, shardings.params)
      del params
      train_step, batch_shardings = None, None
      iterations = []
      for _ in range(1 + args.grpo_iterations):  # The first one compiles.
        start = time.perf_counter()
        for _ in range(steps_per_iteration):
          host_batch = rollouts.next_batch(state.params)
          if train_step is None:  # Built on the first batch, whose shapes all later ones have.
            batch_shardings = sharding.batch_shardings(host_batch, mesh, rules)
            train_step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings,
                                                 shardings.params)
          state, step_metrics = train_step(
              state, sharding.put_batch(host_batch, batch_shardings), frozen)
          jax.block_until_ready((state, step_metrics))
        # Each iteration's batches carry its rollout timings (per-sample constants).
        parts = {"sample_s": float(host_batch["rollout_sample_seconds"][0]),
                 "score_s": float(host_batch["rollout_score_seconds"][0]),
                 "sample_tok_s": float(host_batch["rollout_sample_tokens_per_s"][0])}
        iterations.append({"seconds": time.perf_counter() - start, **parts})
  finally:
    scorer.close()
  loss = float(step_metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(f"GRPO loss {loss}")
  timed = iterations[1:]
  median = lambda key: statistics.median(it[key] for it in timed)  # noqa: E731
  seconds = [it["seconds"] for it in timed]
  quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else seconds * 3
  return {
      "config": f"grpo_arith{':' + args.grpo_variant if args.grpo_variant else ''}",
      "task": config.task.name, "params": models.param_count(cfg), "dtype": cfg.dtype,
      "prompts": config.rollouts.prompts, "samples": config.rollouts.num_samples,
      "max_new_tokens": config.rollouts.max_new_tokens, "steps": steps_per_iteration,
      "iteration_s": round(statistics.median(seconds), 4),
      "iteration_q1_q3_s": [round(quartiles[0], 4), round(quartiles[2], 4)],
      "sample_s": round(median("sample_s"), 4), "score_s": round(median("score_s"), 4),
      "train_s": round(statistics.median(it["seconds"] - it["sample_s"] - it["score_s"]
                                         for it in timed), 4),
      "sample_tok_s": round(median("sample_tok_s"), 1),
      "warmup_s": round(iterations[0]["seconds"], 2),
      "iterations_s": [round(t, 4) for t in seconds], "loss": round(loss, 4),
  }


# ----------------------------------------------------------------------------- tables

# (JSON key, column title) per section.
HEADERS = {
    "train": [("preset", "preset"), ("params", "params"), ("batch", "batch"),
              ("seq_len", "seq len"), ("step_s", "step s"), ("tokens_per_s", "tokens/s"),
              ("model_tflop_s", "model TFLOP/s"), ("mfu", "MFU"),
              ("compile_s", "compile s")],
    "decode": [("preset", "preset"), ("batch", "batch"), ("prompt_len", "prompt"),
               ("new_tokens", "new"), ("decode_tok_s", "decode tok/s"),
               ("step_ms", "ms/step"), ("bound_step_ms", "bound ms/step"),
               ("fraction_of_bound", "fraction of bound"), ("prefill_s", "prefill s"),
               ("compile_s", "compile s")],
    "grpo": [("config", "config"), ("params", "params"),
             ("prompts", "prompts"), ("samples", "samples"), ("max_new_tokens", "new tokens"),
             ("iteration_s", "s/iteration"), ("sample_s", "sample s"), ("score_s", "score s"),
             ("train_s", "train s"), ("sample_tok_s", "sample tok/s")],
}


def cell(key: str, value) -> str:
  """A table cell: None is "unknown" (no peak or bandwidth for the device); counts in M or B."""
  if value is None:
    return "unknown"
  if key == "params":
    return f"{value / 1e6:.1f}M" if value < 1e9 else f"{value / 1e9:.2f}B"
  return str(value)


def markdown(report: dict) -> str:
  """The report as markdown: a line on the machine, then a table per section."""
  d = report["device"]
  peak = d["peak_flops_per_device"]
  bandwidth = d["bandwidth_per_device"]
  lines = [f"{d['backend']}: {d['device_count']} x {d['device_kind']}, jax {d['jax']}, "
           f"{report['dtype']}; peak per device "
           + (f"{peak / 1e12:.3g} TFLOP/s ({d['peak_source']})" if peak else "unknown")
           + ", memory bandwidth per device "
           + (f"{bandwidth / 1e9:.4g} GB/s ({d['bandwidth_source']})" if bandwidth
              else "unknown")
           + f". Goals: train MFU >= {GOALS['train_mfu']}, decode >= "
           f"{GOALS['decode_fraction']} of the bandwidth bound."]
  for section in SECTIONS:
    rows = report.get(section)
    if not rows:
      continue
    header = HEADERS[section]
    lines += ["", f"**{section}**", "", "| " + " | ".join(t for _, t in header) + " |",
              "|" + "---|" * len(header)]
    for row in rows:
      if "error" in row:
        first = header[0][0]
        lines.append(f"| {row.get(first, '-')} | error: {row['error']} |"
                     + " |" * (len(header) - 2))
      else:
        lines.append("| " + " | ".join(cell(k, row.get(k)) for k, _ in header) + " |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated, from {list(SECTIONS)}")
  parser.add_argument("--presets", help="model presets for train and decode (default: "
                      f"{DEFAULTS['accelerator']['presets']} on accelerators, tiny on CPU)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny preset, smallest shapes, one or two timed runs")
  parser.add_argument("--dtype", default="bfloat16", choices=models.config.DTYPES,
                      help="compute dtype (train keeps float32 parameters)")
  parser.add_argument("--mesh", default="1,-1,1", help="train mesh: data,fsdp,tensor sizes")
  parser.add_argument("--decode_mesh", default="-1,1,1", help="decode mesh: data,fsdp,tensor")
  parser.add_argument("--batch", type=int, help="train rows per device")
  parser.add_argument("--seq_len", type=int)
  parser.add_argument("--steps", type=int, help="timed train steps")
  parser.add_argument("--warmup", type=int, help="train steps before the timed ones")
  parser.add_argument("--attention_impl", default="blockwise",
                      choices=models.config.ATTENTION_IMPLS)
  parser.add_argument("--attention_block", type=int)
  parser.add_argument("--remat", default="none", choices=models.config.REMAT_POLICIES)
  parser.add_argument("--scan_layers", action="store_true",
                      help="train with stacked layers under nn.scan: compile time flat in depth")
  parser.add_argument("--decode_batch", type=int, help="decode rows in all")
  parser.add_argument("--prompt_len", type=int)
  parser.add_argument("--new_tokens", type=int)
  parser.add_argument("--runs", type=int, help="timed decode calls of each kind")
  parser.add_argument("--grpo_iterations", type=int, help="timed, after one warm-up")
  parser.add_argument("--grpo_variant", help="arg of configs/grpo_arith.py ('' or runlocal)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak TFLOP/s per device, for a device kind not in the tables")
  parser.add_argument("--bandwidth_gbs", type=float, default=0.0,
                      help="memory GB/s per device, for a device kind not in the tables")
  parser.add_argument("--peak_size", type=int, help="matmul size of the CPU peak measurement")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "accelerator.json"))
  parser.add_argument("--md", default=os.path.join(HERE, "results", "accelerator.md"))
  args = parser.parse_args(argv)
  kind = ("quick" if args.quick else "cpu" if jax.default_backend() == "cpu"
          else "accelerator")
  for key, value in DEFAULTS[kind].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  sections = [s for s in args.sections.split(",") if s]
  if unknown := sorted(set(sections) - set(SECTIONS)):
    parser.error(f"unknown sections {unknown}; valid: {list(SECTIONS)}")
  if unknown := sorted(set(args.presets.split(",")) - set(models.PRESETS)):
    parser.error(f"unknown presets {unknown}; valid: {sorted(models.PRESETS)}")
  args.sections = sections
  return args


def main(argv=None) -> dict:
  # As reasonjax.main does, before JAX starts its backend (XLA:CPU's per-step buffers; README).
  host_memory.retain_freed_memory()
  args = parse_args(argv)
  info = device_info(args)
  print(f"{info['backend']}: {info['device_count']} x {info['device_kind']}, jax {info['jax']}; "
        f"peak/device {info['peak_flops_per_device']} ({info['peak_source']}), bandwidth/device "
        f"{info['bandwidth_per_device']} ({info['bandwidth_source']})", flush=True)
  report = {"device": info, "dtype": args.dtype, "quick": args.quick, "goals": GOALS,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "md")},
            "load_avg_1m": [round(os.getloadavg()[0], 2)]}
  cases = {"train": [(train, p) for p in args.presets.split(",")],
           "decode": [(decode, p) for p in args.presets.split(",")],
           "grpo": [(grpo_iteration, "grpo_arith")]}
  failed = False
  for section in args.sections:
    report[section] = []
    for fn, name in cases[section]:
      print(f"{section} {name} ...", flush=True)
      try:
        row = fn(name, args, info)
      except Exception as e:  # One case's failure (out of memory, say) does not stop the rest.
        traceback.print_exc()
        failed = True
        key = HEADERS[section][0][0]
        message = (str(e).splitlines() or [""])[0][:200]
        row = {key: name, "error": f"{type(e).__name__}: {message}"}
      report[section].append(row)
      print(f"  {json.dumps(row)}", flush=True)
  report["load_avg_1m"].append(round(os.getloadavg()[0], 2))
  table = markdown(report)
  print("\n" + table)
  for path, text in ((args.out, json.dumps(report, indent=2)), (args.md, table)):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)
  print(f"wrote {args.out} and {args.md}")
  report["failed"] = failed
  return report


if __name__ == "__main__":
  sys.exit(1 if main()["failed"] else 0)
