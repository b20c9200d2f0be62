"""benchmarks/accelerator.py: the quick run on CPU, and its FLOP and byte counts from the shapes."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import accelerator
from reasonjax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_unit_interval(value) -> bool:
  return value is not None and 0 < value <= 1


def test_quick_run_on_cpu(tmp_path):
  """The script as a user runs it, on 2 CPU devices: every section, the fields the tables show."""
  out, md = tmp_path / "accelerator.json", tmp_path / "accelerator.md"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = os.environ | {"XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count=2"])}
  run = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--quick", f"--out={out}",
                        f"--md={md}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  report = json.loads(out.read_text())
  device = report["device"]
  assert device["backend"] == "cpu" and device["device_count"] == 2
  assert device["device_kind"] and device["jax"] == jax.__version__
  # On CPU both the peak and the bandwidth are measured, so the fractions are known.
  assert device["peak_flops_per_device"] > 0 and device["bandwidth_per_device"] > 0
  row, = report["train"]
  assert row["preset"] == "tiny" and row["dtype"] == "bfloat16" and row["mesh"]["fsdp"] == 2
  assert row["flops_per_token"] == models.flops_per_token(models.preset("tiny"), row["seq_len"])
  assert row["tokens_per_s"] > 0 and math.isfinite(row["loss"])
  assert in_unit_interval(row["mfu"]), row
  row, = report["decode"]
  assert row["decode_tok_s"] > 0 and row["bound_step_ms"] > 0
  assert in_unit_interval(row["fraction_of_bound"]), row
  row, = report["grpo"]
  assert row["config"] == "grpo_arith:runlocal" and row["iteration_s"] > 0
  assert 0 < row["sample_s"] + row["score_s"] < row["iteration_s"]
  table = md.read_text()
  for title in ("| preset | params |", "| preset | batch |", "| config |"):
    assert title in table
  assert table.count("| tiny |") == 2 and "| grpo_arith:runlocal |" in table
  assert "error" not in table and "unknown" not in table


def test_device_tables(monkeypatch):
  """A known accelerator gets its data-sheet numbers; an unknown one "unknown" and no MFU."""
  class Device:
    def __init__(self, kind):
      self.device_kind = kind

  args = accelerator.parse_args(["--quick"])
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda: [Device("NVIDIA H200")])
  info = accelerator.device_info(args)
  assert info["peak_flops_per_device"] == 989e12 and info["bandwidth_per_device"] == 4.8e12
  monkeypatch.setattr(jax, "devices", lambda: [Device("NVIDIA H100 PCIe")] * 2)
  info = accelerator.device_info(args)
  assert info["peak_flops_per_device"] is None and info["bandwidth_per_device"] is None
  assert info["peak_source"] == info["bandwidth_source"] == "unknown"
  report = {"device": info, "dtype": "bfloat16",
            "train": [{"preset": "tiny", "params": 3e6, "mfu": None}]}
  table = accelerator.markdown(report)
  assert "peak per device unknown" in table and "bandwidth per device unknown" in table
  assert "| tiny | 3.0M |" in table and "| unknown |" in table
  # The flags stand in for the tables.
  args = accelerator.parse_args(["--quick", "--peak_tflops=100", "--bandwidth_gbs=2000"])
  info = accelerator.device_info(args)
  assert info["peak_flops_per_device"] == 100e12 and info["bandwidth_per_device"] == 2000e9


def _leaves(cfg):
  """(path "a/b/c", shape) of every parameter, from `models.param_shapes` (nothing allocated)."""
  return [("/".join(k.key for k in path), x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(models.param_shapes(cfg))]


# An untied LM head (a kernel of its own) besides the tied presets.
SHAPES = [("tiny", {}), ("tiny", {"tie_word_embeddings": False}), ("qwen2.5-0.5b", {})]
SHAPE_IDS = ["tiny", "tiny-untied", "qwen2.5-0.5b"]


@pytest.mark.parametrize("name,overrides", SHAPES, ids=SHAPE_IDS)
def test_flops_per_token_against_the_parameter_shapes(name, overrides):
  """6 N + attention, N summed over the shapes of the weights used in matmuls: every kernel,
  and the embedding table where it is the tied LM head; the attention term from q_proj's
  heads: QK^T and AV are 2 T H hd FLOPs each per token forward, times 3 with the backward."""
  cfg, seq_len = models.preset(name, **overrides), 2048
  leaves = _leaves(cfg)
  n = sum(math.prod(shape) for path, shape in leaves if path.endswith("kernel"))
  if cfg.tie_word_embeddings:
    n += math.prod(dict(leaves)["embed_tokens/embedding"])
  heads_x_dims = [math.prod(shape[1:]) for path, shape in leaves
                  if path.endswith("q_proj/kernel")]
  assert len(heads_x_dims) == cfg.num_layers
  attention = sum(3 * 2 * (2 * seq_len * hd) for hd in heads_x_dims)
  assert models.flops_per_token(cfg, seq_len) == 6 * n + attention


@pytest.mark.parametrize("name,overrides", SHAPES, ids=SHAPE_IDS)
def test_decode_bytes_against_the_shapes(name, overrides):
  """A decode step reads every parameter but the input embedding table, unless it is the tied
  LM head; the cache holds a key and a value per layer, KV head and head dim for each token."""
  cfg = models.preset(name, dtype="bfloat16", param_dtype="bfloat16", **overrides)
  leaves = _leaves(cfg)
  count = sum(math.prod(shape) for path, shape in leaves)
  if not cfg.tie_word_embeddings:
    count -= math.prod(dict(leaves)["embed_tokens/embedding"])
  assert accelerator.decode_weight_bytes(cfg) == 2 * count
  cache = jax.eval_shape(lambda: models.init_cache(cfg, 1, 1))
  kv = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((cache.k, cache.v)))
  assert accelerator.kv_bytes_per_token(cfg) == kv
  # Step t reads the weights and P + t tokens of its device's rows (a tensor split divides both).
  rows, prompt, new, bandwidth = 8, 16, 4, 1e9
  for row_ways, tensor in ((1, 1), (2, 1), (2, 2)):
    expected = sum((2 * count + kv * rows / row_ways * (prompt + t)) / tensor
                   for t in range(1, new))
    bound = accelerator.decode_bound_s(cfg, rows, prompt, new, bandwidth, row_ways=row_ways,
                                       tensor=tensor)
    assert bound == pytest.approx(expected / bandwidth)
