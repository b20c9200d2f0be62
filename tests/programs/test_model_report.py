"""The model_report program on a sharded mesh."""

import json

import jax
import numpy as np

from configs import model_report as report_config
from reasonjax import models
from reasonjax.programs import model_report


def test_report_on_sharded_mesh(tmp_path):
  config = report_config.get_config("runlocal")
  config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
  report = model_report.run(config, str(tmp_path))
  with open(tmp_path / "report.json") as f:
    assert json.load(f) == report
  cfg = models.config_from(config.model)
  total_bytes = 4 * sum(x.size for x in jax.tree.leaves(models.param_shapes(cfg)))
  # fsdp x tensor = 4 ways for the big matrices; norms and biases are replicated.
  assert total_bytes / 4 <= report["param_bytes_per_device"] < total_bytes / 3
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report["forward_tokens_per_s"] > 0 and np.isfinite(report["forward_tflops_per_s"])
