"""Generated tokens/s of reasonjax's compiled sampler vs `transformers.generate` (torch, CPU).

Both run the same weights (a random Qwen2 model saved by transformers, loaded by
`models.load_hf`), the same batch and the same decoding settings, in float32:

    python benchmarks/sampling.py                     # tiny and small, greedy and sampled
    python benchmarks/sampling.py --shapes=tiny --runs=5

Reports the median of `--runs` timed runs after one warm-up run (reasonjax's warm-up includes
compilation, reported separately), the ratio, and for decode the bound set by reading every
weight once per step at the memory bandwidth measured in the same run. Prints a table and writes
JSON (default benchmarks/results/sampling.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from reasonjax import models, sampling

SHAPES = {
    "tiny": dict(model=dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=688, vocab_size=1024),
                 batch=32, prompt_len=32, new_tokens=128),
    "small": dict(model=dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                             num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
                  batch=8, prompt_len=64, new_tokens=64),
}
MODES = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=1.0)}


def median_time(fn, runs: int) -> tuple[float, float]:
  """(first call seconds, median of `runs` later calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def memory_bandwidth_gbs() -> float:
  """Bytes/s of a compiled reduction over a 512 MB float32 array (reads it once)."""
  x = jnp.ones((128 * 2**20,), jnp.float32)
  total = jax.jit(jnp.sum)
  _, seconds = median_time(lambda: total(x).block_until_ready(), 5)
  return x.nbytes / seconds / 1e9


def run_shape(name: str, spec: dict, runs: int, bandwidth: float) -> list[dict]:
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen2Config(**spec["model"], tie_word_embeddings=True,
                                    max_position_embeddings=4096, initializer_range=0.2)
  torch_model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as path:
    torch_model.save_pretrained(path)
    cfg, params = models.load_hf(path)
  model = models.Model(cfg)
  batch, prompt_len, new = spec["batch"], spec["prompt_len"], spec["new_tokens"]
  prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len), np.int32)
  lengths = np.full((batch,), prompt_len, np.int32)
  weight_bytes = 4 * (models.param_count(cfg))  # the tied table is read once, as the LM head
  bound = batch / (weight_bytes / (bandwidth * 1e9))
  rows = []
  for mode, settings in MODES.items():
    config = sampling.SamplingConfig(max_new_tokens=new, **settings)
    keys = iter(jax.random.split(jax.random.key(0), runs + 1))

    def ours():
      out = sampling.sample(model, params, prompts, lengths, next(keys), config)
      assert int(out.lengths.min()) == new
      out.tokens.block_until_ready()

    first, ours_s = median_time(ours, runs)
    input_ids = torch.tensor(prompts, dtype=torch.long)

    def theirs():
      with torch.no_grad():
        out = torch_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                   max_new_tokens=new, min_new_tokens=new,
                                   do_sample=settings["temperature"] > 0,
                                   temperature=settings["temperature"] or None, top_k=0,
                                   top_p=1.0, eos_token_id=None, pad_token_id=0)
      assert out.shape[1] == prompt_len + new

    _, theirs_s = median_time(theirs, runs)
    tokens = batch * new
    rows.append({
        "shape": name, "mode": mode, "batch": batch, "prompt_len": prompt_len,
        "new_tokens": new, "reasonjax_tok_s": round(tokens / ours_s, 1),
        "transformers_tok_s": round(tokens / theirs_s, 1),
        "speedup": round(theirs_s / ours_s, 2), "reasonjax_compile_s": round(first - ours_s, 2),
        "weight_read_bound_tok_s": round(bound, 1),
        "fraction_of_bound": round(tokens / ours_s / bound, 3),
    })
    print(f"  {name} {mode}: {rows[-1]}", flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="tiny,small")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "sampling.json"))
  args = parser.parse_args()
  bandwidth = memory_bandwidth_gbs()
  print(f"memory bandwidth (jax reduction): {bandwidth:.1f} GB/s; torch threads: "
        f"{torch.get_num_threads()}", flush=True)
  rows = [r for name in args.shapes.split(",") for r in run_shape(name, SHAPES[name], args.runs,
                                                                   bandwidth)]
  header = ("shape", "mode", "reasonjax_tok_s", "transformers_tok_s", "speedup",
            "reasonjax_compile_s", "weight_read_bound_tok_s", "fraction_of_bound")
  print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for r in rows:
    print("| " + " | ".join(str(r[h]) for h in header) + " |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "memory_bandwidth_gb_s": round(bandwidth, 2),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "jax": jax.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__}}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
