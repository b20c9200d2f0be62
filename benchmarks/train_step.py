"""SFT train-step time, tokens/s and MFU of reasonjax's compiled step vs the same step in PyTorch.

Both sides train the same Qwen2-family shape (q/k/v bias, tied embeddings, float32) on the same
[B, T] batch with the same update: token-mean cross-entropy, global-norm clipping at 1.0, AdamW
(b1 0.9, b2 0.95, weight decay 0.1). reasonjax runs the path of the training loop
(`optim.make_optimizer`, `state.init_state`, `step.jit_train_step` with `step.sft_loss`, the state
donated); PyTorch runs `transformers.Qwen2ForCausalLM` (sdpa attention) with `torch.optim.AdamW`.
reasonjax's step also does what its loop needs and costs little next to the model: the learning
rate schedule, the non-finite guard, no decay on norms and biases, and the token accuracy.

    python benchmarks/train_step.py                   # tiny (16 x 256) and small (8 x 256)
    python benchmarks/train_step.py --shapes=tiny --runs=5 --batch=8 --seq_len=512
    python benchmarks/train_step.py --host_memory=both   # torch with reasonjax's allocator too

Each framework runs in a process of its own, as it would in use: no shared thread pools, no
OpenMP threads of one spinning while the other works, and each with its own C-allocator
settings. `--host_memory` picks those: `reasonjax` (default; each as it ships: reasonjax's
`main` calls `host_memory.retain_freed_memory`, plain PyTorch keeps glibc's defaults), `both`
or `neither`.

Reports reasonjax's compilation time and the median of `--runs` timed steps after one warm-up
step (default: 15 for tiny, 5 for small), the two frameworks' steps taken in turns, in alternating
order, so that load from other processes falls on both alike; tokens/s; the speedup, the median
over rounds of torch_s / reasonjax_s (> 1: reasonjax is faster), with its quartiles: a ratio
within a round cancels the machine's slow drifts, which move single steps by 10-25%; and
MFU: `models.flops_per_token(cfg, T) * B * T` per step over the machine's f32 matmul peak,
measured before and after each shape's steps with JAX (`metrics.matmul_peak_flops`) and with
torch; the larger of the two is the denominator for both frameworks. Prints a table and writes
JSON (default benchmarks/results/train_step.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import statistics
import time

import numpy as np

from reasonjax import host_memory, models

# torch is imported, and JAX's backend first used, only inside the functions below: each worker
# process starts the threads and allocator caches of its own framework alone.

# Model dims are those of benchmarks/sampling.py's SHAPES, kept as the presets of the same name.
SHAPES = {
    "tiny": dict(preset="tiny", batch=16, seq_len=256, runs=15),
    "small": dict(preset="small", batch=8, seq_len=256, runs=5),
}
OPTIMIZER = {"learning_rate": 1e-4, "warmup_steps": 10, "total_steps": 1000}
PEAK_SIZE = 2048
# Between two timed steps: lets the last step's OpenMP threads stop spinning (libgomp spins
# for a while after a parallel region) before the other framework starts.
PAUSE_S = 0.5


def make_batch(vocab_size: int, batch: int, length: int) -> dict[str, np.ndarray]:
  """A packed-style SFT batch: one segment per row, every token supervised. All [B, T]."""
  tokens = np.random.default_rng(0).integers(0, vocab_size, (batch, length + 1), np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": np.ones((batch, length), np.float32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
          "segment_ids": np.ones((batch, length), np.int32)}


def reasonjax_step(cfg: models.ModelConfig, batch_np: dict):
  """(thunk, compile seconds, versions): the library's jitted, donated SFT step, compiled; the
  thunk runs one step and waits for it."""
  import jax

  from configs import common
  from reasonjax import sharding
  from reasonjax.training import optim
  from reasonjax.training import state as state_lib
  from reasonjax.training import step as step_lib

  mesh = sharding.make_mesh(data=-1, fsdp=1, tensor=1)
  rules = common.AXIS_RULES
  tx = optim.make_optimizer(OPTIMIZER)
  state, shardings = state_lib.init_state(cfg, tx, jax.random.key(0), mesh=mesh, rules=rules)
  batch_shardings = sharding.batch_shardings(batch_np, mesh, rules)
  batch = jax.device_put(batch_np, batch_shardings)
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  train_step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings)
  with sharding.axis_rules(mesh, rules):  # Compiled ahead of time to report compilation alone.
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
  holder = {"state": state}

  def one_step() -> float:
    new_state, step_metrics = compiled(holder["state"], batch)
    holder["state"] = new_state  # The input state was donated.
    jax.block_until_ready((new_state, step_metrics))
    return float(step_metrics["loss"])

  return one_step, compile_s, {"jax": jax.__version__, "jax_backend": jax.default_backend()}


def torch_step(cfg: models.ModelConfig, batch_np: dict):
  """(thunk, None, versions): the same SFT step in PyTorch (transformers Qwen2, sdpa, AdamW)."""
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen2Config(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
      attn_implementation="sdpa")
  model = transformers.Qwen2ForCausalLM(hf_cfg).float().train()
  assert sum(p.numel() for p in model.parameters()) == models.param_count(cfg)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
  inputs = torch.from_numpy(batch_np["inputs"]).long()
  targets = torch.from_numpy(batch_np["targets"]).long()

  def one_step() -> float:
    logits = model(input_ids=inputs).logits
    # Token mean over the same shifted targets as reasonjax's batch.
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

  return one_step, None, {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "transformers": transformers.__version__}


def jax_matmul_peak() -> float:
  from reasonjax import metrics
  return metrics.matmul_peak_flops("float32", size=PEAK_SIZE)


def torch_matmul_peak(repeats: int = 5) -> float:
  """FLOP/s of a float32 `PEAK_SIZE`^3 torch matmul, median of `repeats` after one warm-up."""
  import torch
  a = torch.ones((PEAK_SIZE, PEAK_SIZE), dtype=torch.float32)
  torch.matmul(a, a)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(a, a)
    times.append(time.perf_counter() - start)
  return 2 * PEAK_SIZE**3 / statistics.median(times)


FRAMEWORKS = {"reasonjax": (reasonjax_step, jax_matmul_peak),
              "torch": (torch_step, torch_matmul_peak)}


def serve(framework: str, cfg: models.ModelConfig, batch_np: dict, retain: bool, conn) -> None:
  """A worker process's body: builds the framework's step, runs one warm-up step, then answers
  "step" (seconds of one step) and "peak" (matmul FLOP/s) until "stop"."""
  if retain:
    host_memory.retain_freed_memory()
  build, peak = FRAMEWORKS[framework]
  one_step, compile_s, versions = build(cfg, batch_np)
  loss = one_step()
  assert np.isfinite(loss), (framework, loss)
  conn.send({"compile_s": compile_s, "first_loss": loss, "retain_host_memory": retain,
             **versions})
  for command in iter(conn.recv, "stop"):
    if command == "step":
      start = time.perf_counter()
      one_step()
      conn.send(time.perf_counter() - start)
    elif command == "peak":
      conn.send(peak())
    else:
      raise ValueError(f"unknown command {command!r}; valid: step, peak, stop")


class Worker:
  """One framework's step in a spawned process; the constructor waits until it is built."""

  def __init__(self, framework: str, cfg: models.ModelConfig, batch_np: dict, retain: bool):
    context = multiprocessing.get_context("spawn")
    self.conn, child = context.Pipe()
    self.process = context.Process(target=serve, args=(framework, cfg, batch_np, retain, child),
                                   daemon=True)
    self.process.start()
    self.info = self.conn.recv()

  def ask(self, command: str) -> float:
    self.conn.send(command)
    return self.conn.recv()

  def close(self) -> None:
    if self.process.is_alive():  # A worker that failed has exited; its error is what counts.
      self.conn.send("stop")
    self.process.join()


def run_shape(name: str, spec: dict, host_memory_mode: str) -> dict:
  cfg = models.preset(spec["preset"])
  batch, length, runs = spec["batch"], spec["seq_len"], spec["runs"]
  batch_np = make_batch(cfg.vocab_size, batch, length)
  step_flops = models.flops_per_token(cfg, length) * batch * length
  load_before = os.getloadavg()[0]
  retain = {"reasonjax": host_memory_mode in ("reasonjax", "both"),
            "torch": host_memory_mode == "both"}
  workers = {}
  try:
    for framework in FRAMEWORKS:  # One at a time, so that compilation is timed alone.
      workers[framework] = Worker(framework, cfg, batch_np, retain[framework])
    # The peak is measured before and after the steps, keeping the faster: the load of other
    # processes changes it within a run, and a peak taken in a slow moment gave MFUs above 1.
    before = {k: w.ask("peak") for k, w in workers.items()}
    times = {k: [] for k in workers}
    for round_ in range(runs):
      # Alternating who goes first: neither framework always runs right after the other.
      for k in list(workers)[::1 if round_ % 2 == 0 else -1]:
        time.sleep(PAUSE_S)
        times[k].append(workers[k].ask("step"))
    peaks = {k: max(w.ask("peak"), before[k]) for k, w in workers.items()}
  finally:
    for w in workers.values():
      w.close()
  peak = max(peaks.values())
  print(f"  f32 {PEAK_SIZE}^3 matmul peak: jax {peaks['reasonjax'] / 1e9:.1f}, torch "
        f"{peaks['torch'] / 1e9:.1f} GFLOP/s", flush=True)
  ours_s, theirs_s = (statistics.median(times[k]) for k in ("reasonjax", "torch"))
  ratios = [theirs / ours for ours, theirs in zip(times["reasonjax"], times["torch"])]
  quartiles = statistics.quantiles(ratios, n=4) if runs > 1 else ratios * 3
  tokens = batch * length
  row = {
      "shape": name, "params": models.param_count(cfg), "batch": batch, "seq_len": length,
      "gflop_per_step": round(step_flops / 1e9, 1), "host_memory": host_memory_mode,
      "reasonjax_step_s": round(ours_s, 4), "torch_step_s": round(theirs_s, 4),
      "speedup": round(statistics.median(ratios), 2),
      "speedup_q1_q3": [round(quartiles[0], 2), round(quartiles[2], 2)],
      "reasonjax_steps_s": [round(t, 3) for t in times["reasonjax"]],
      "torch_steps_s": [round(t, 3) for t in times["torch"]],
      "reasonjax_tok_s": round(tokens / ours_s, 1), "torch_tok_s": round(tokens / theirs_s, 1),
      "reasonjax_gflop_s": round(step_flops / ours_s / 1e9, 1),
      "torch_gflop_s": round(step_flops / theirs_s / 1e9, 1),
      "reasonjax_mfu": round(step_flops / ours_s / peak, 3),
      "torch_mfu": round(step_flops / theirs_s / peak, 3),
      "reasonjax_compile_s": round(workers["reasonjax"].info["compile_s"], 2),
      "jax_matmul_peak_gflop_s": round(peaks["reasonjax"] / 1e9, 1),
      "torch_matmul_peak_gflop_s": round(peaks["torch"] / 1e9, 1),
      # Other processes' load slows both steps (torch's spinning OpenMP threads the more): kept
      # so that runs can be compared.
      "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
      "workers": {k: w.info for k, w in workers.items()},
  }
  print(f"  {name}: {row}", flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="tiny,small")
  parser.add_argument("--runs", type=int, default=None, help="override every shape's runs")
  parser.add_argument("--batch", type=int, default=None, help="override every shape's batch")
  parser.add_argument("--seq_len", type=int, default=None, help="override every shape's T")
  parser.add_argument("--host_memory", choices=("reasonjax", "both", "neither"),
                      default="reasonjax", help="which workers call retain_freed_memory")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "train_step.json"))
  args = parser.parse_args()
  print(f"{os.cpu_count()} CPUs, host memory: {args.host_memory}", flush=True)
  rows = []
  for name in args.shapes.split(","):
    if name not in SHAPES:
      raise ValueError(f"unknown shape {name!r}; valid: {sorted(SHAPES)}")
    spec = SHAPES[name] | {k: v for k in ("batch", "seq_len", "runs")
                           if (v := getattr(args, k)) is not None}
    rows.append(run_shape(name, spec, args.host_memory))
  header = ("shape", "batch", "seq_len", "reasonjax_step_s", "torch_step_s", "speedup",
            "speedup_q1_q3",
            "reasonjax_tok_s", "torch_tok_s", "reasonjax_mfu", "torch_mfu",
            "jax_matmul_peak_gflop_s", "torch_matmul_peak_gflop_s", "reasonjax_compile_s")
  print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for r in rows:
    print("| " + " | ".join(str(r[h]) for h in header) + " |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "matmul_peak_size": PEAK_SIZE,
               "pause_between_steps_s": PAUSE_S,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "processor": platform.processor()}}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
