"""The command line: `python -m reasonjax.main --config=... --workdir=...`."""

import json
import os

import pytest

from tests.conftest import REPO, run_main

CONFIG = os.path.join(REPO, "configs", "model_report.py")


def test_runlocal_runs_end_to_end(tmp_path):
  cache = tmp_path / "xla_cache"  # JAX's own variable is the default of --compilation_cache.
  out = run_main(f"--config={CONFIG}:runlocal", "--config.model.dtype=bfloat16",
                 workdir=tmp_path, env=os.environ | {"JAX_COMPILATION_CACHE_DIR": str(cache)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "model report (tiny" in out.stdout
  assert any(name.endswith("-cache") for name in os.listdir(cache))  # Compiled programs kept.
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["dtype"] == "bfloat16"
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["params"] > 0


@pytest.mark.parametrize("override, message", [
    ("--config.model.presett=tiny", "config.model has no key 'presett'; valid keys: ['attention_impl'"),
    ("--config.model.dtype=float16", "model.dtype='float16' is not valid; expected one of"),
    ("--config.trainer=ppo", "config.trainer='ppo' is unknown; valid trainers: ['dpo', 'grpo', 'model_report'"),
    ("--config.mesh.data=3", "mesh data=3 x fsdp=1 x tensor=1 = 3 devices"),
    ("--config.model.preset=gpt5", "unknown model preset 'gpt5'; valid presets"),
])
def test_bad_config_fails_at_start_with_valid_names(tmp_path, override, message):
  out = run_main(f"--config={CONFIG}:runlocal", override, workdir=tmp_path)
  assert out.returncode != 0
  assert message in out.stderr
  assert not (tmp_path / "report.json").exists()


def test_unknown_config_arg_lists_valid_ones(tmp_path):
  out = run_main(f"--config={CONFIG}:runlocl", workdir=tmp_path)
  assert out.returncode != 0
  assert "config arg 'runlocl' is unknown; valid: ['preset', 'runlocal']" in out.stderr


def test_config_changes_lists_every_changed_leaf():
  from reasonjax.main import config_changes
  old = {"steps": 100, "model": {"dtype": "float32", "num_layers": 4}, "task": {"n": 1}}
  new = {"steps": 200, "model": {"dtype": "float32", "num_layers": 2}, "seed": 0}
  assert config_changes(old, new) == [
      "model.num_layers: 4 -> 2", "seed: '<absent>' -> 0", "steps: 100 -> 200",
      "task: {'n': 1} -> '<absent>'"]
  assert config_changes(old, old) == []
