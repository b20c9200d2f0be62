"""Shared trainer plumbing: where a post-training run gets its starting policy; the export."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpo_arith
from reasonjax import models
from reasonjax.data import tokenizers
from reasonjax.trainers import experiment, loop


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
  with pytest.raises(ValueError, match="config.init_from=.*no config.json there"):
    experiment.policy_path(config, str(tmp_path / "run"))
  (tmp_path / "config.json").write_text("{}")
  assert experiment.policy_path(config, str(tmp_path / "run")) == str(tmp_path)


def test_a_post_training_config_without_a_policy_source_is_refused():
  config = dpo_arith.get_config("runlocal")
  with config.unlocked():
    del config["sft"]
  with pytest.raises(ValueError, match="config.init_from is empty and the config has no nested"):
    experiment.check_policy_source(config)


def test_export_writes_a_folder_that_generates_on_its_own_and_refuses_nan(tmp_path):
  cfg = models.preset("tiny", vocab_size=512, num_layers=1, hidden_size=32, intermediate_size=64,
                      num_heads=2, num_kv_heads=1, head_dim=16)
  _, params = models.load({"preset": "tiny", "vocab_size": 512, "num_layers": 1,
                           "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "num_kv_heads": 1, "head_dim": 16}, jax.random.key(0))
  tokenizer = tokenizers.load("synthetic")
  path = experiment.export(str(tmp_path), cfg, params, {"steps": 1}, tokenizer=tokenizer)
  again = tokenizers.load(path)
  assert again.encode("12 + 3 = 15\n") == tokenizer.encode("12 + 3 = 15\n")
  assert (again.eos_id, again.pad_id) == (tokenizer.eos_id, tokenizer.pad_id)
  _, loaded = models.load_hf(path)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A diverged run: nothing is written.
  poisoned = jax.tree.map(lambda x: x, params)
  poisoned["norm"]["scale"] = poisoned["norm"]["scale"].at[0].set(jnp.nan)
  with pytest.raises(loop.NonFiniteError, match=r"refusing to export .* 1 parameter array\(s\) "
                     r"hold NaN or Inf \(\['norm'\]\['scale'\]\)"):
    experiment.export(str(tmp_path / "diverged"), cfg, poisoned, {}, tokenizer=tokenizer)
  assert not os.path.exists(tmp_path / "diverged")
