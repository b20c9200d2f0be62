"""What the programs share: the export of a trained model."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import tokenizers
from reasonjax.training import experiment, loop


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
