"""Builds the configured model on the mesh and reports size, memory per device and forward speed.

Answers "does this model fit on this mesh, and how fast is its forward pass" before a long run.
Writes `report.json` in the workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reasonjax import models, sharding


def _bytes_per_device(tree) -> int:
  per_device: dict = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values())


def run(config, workdir: str) -> dict:
  """Runs the report; returns the dict it writes to `workdir/report.json`."""
  mesh = sharding.make_mesh(**config.mesh)
  rng = jax.random.key(config.seed)
  start = time.perf_counter()
  cfg, params = models.load(config.model, rng, mesh=mesh, rules=config.axis_rules)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - start
  logging.info("built %s parameters in %.1fs", f"{models.param_count(cfg):,}", init_s)

  batch, length = config.batch_size, config.seq_len
  tokens = np.random.default_rng(config.seed).integers(0, cfg.vocab_size, (batch, length),
                                                       np.int32)
  tokens = jax.device_put(tokens, sharding.batch_shardings(tokens, mesh, config.axis_rules))
  model = models.Model(cfg)
  # The mean keeps the [B, T, V] logits from being copied to the host.
  forward = jax.jit(lambda p, t: jnp.mean(model.apply({"params": p}, t)))
  with sharding.axis_rules(mesh, config.axis_rules):
    start = time.perf_counter()
    compiled = forward.lower(params, tokens).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(config.steps):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, tokens))
      times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  forward_flops = models.flops_per_token(cfg, length) / 3 * batch * length
  report = models.describe(cfg, length) | {
      "mesh": dict(mesh.shape), "devices": jax.device_count(),
      "param_bytes_per_device": _bytes_per_device(params), "init_s": round(init_s, 3),
      "compile_s": round(compile_s, 3), "forward_s": round(step_s, 5),
      "forward_tokens_per_s": round(batch * length / step_s, 1),
      "forward_tflops_per_s": round(forward_flops / step_s / 1e12, 4),
  }
  rows = "\n".join(f"  {k:<24} {v}" for k, v in report.items())
  print(f"model report ({config.model.preset or config.model.hf_path}, batch {batch} x {length}):\n"
        f"{rows}", flush=True)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
