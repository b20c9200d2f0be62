"""Model size, memory per device and forward speed of a model on a mesh.

    python -m reasonjax.main --config=configs/model_report.py:runlocal --workdir=/tmp/report
    python -m reasonjax.main --config=configs/model_report.py:preset=qwen2.5-0.5b \
        --config.model.dtype=bfloat16 --config.mesh.fsdp=4 --workdir=/tmp/report

Args (comma separated): `runlocal` (tiny shape, a CPU minute), `preset=NAME` (see
reasonjax.models.PRESETS).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, preset="small")
  config = ml_collections.ConfigDict()
  config.trainer = "model_report"
  config.seed = 0
  config.model = ml_collections.ConfigDict({
      "preset": arg.preset, "hf_path": "", "dtype": "float32", "param_dtype": "float32",
      "attention_impl": "xla", "remat": "none"})
  config.mesh = common.mesh()
  config.axis_rules = common.AXIS_RULES
  config.batch_size = 8
  config.seq_len = 512
  config.steps = 5
  if arg.runlocal:
    config.model.preset = "tiny"
    config.batch_size, config.seq_len, config.steps = 8, 32, 2
  return config
