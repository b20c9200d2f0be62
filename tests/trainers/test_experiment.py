"""Shared trainer plumbing: where a post-training run gets its starting policy."""

import os

import pytest

from configs import dpo_arith
from reasonjax.trainers import experiment


def test_policy_path_trains_the_nested_sft_once(tmp_path):
  config = dpo_arith.get_config("runlocal")
  config.sft.steps = 2
  config.sft.checkpoint_every = 2
  config.sft.eval.num_problems = 0
  path = experiment.policy_path(config, str(tmp_path))
  assert path == os.path.join(tmp_path, "sft", "hf")
  weights = os.path.join(path, "model.safetensors")
  written = os.path.getmtime(weights)
  assert experiment.policy_path(config, str(tmp_path)) == path  # Found, not trained again.
  assert os.path.getmtime(weights) == written


def test_policy_path_uses_init_from_and_checks_it(tmp_path):
  config = dpo_arith.get_config("runlocal")
  config.init_from = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="config.init_from=.*no config.json there"):
    experiment.policy_path(config, str(tmp_path / "run"))
  (tmp_path / "config.json").write_text("{}")
  assert experiment.policy_path(config, str(tmp_path / "run")) == str(tmp_path)
