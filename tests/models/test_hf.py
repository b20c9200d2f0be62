"""Hugging Face conversion: logit parity with `transformers` (torch, float32), round trips, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from reasonjax import models
from tests.conftest import hf_model, right_padded_batch


def torch_logits(model, tokens, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits.float().numpy()


def jax_logits(cfg, params, tokens, mask):
  return np.asarray(models.Model(cfg).apply({"params": params}, jnp.asarray(tokens),
                                            attention_mask=jnp.asarray(mask)))


def max_real_token_diff(a, b, mask):
  """Max |a - b| over real (unpadded) positions; padded positions have no defined logits."""
  return float(np.max(np.abs(a - b) * mask[..., None]))


def test_logits_match_transformers(hf_checkpoint):
  kind, path, torch_model = hf_checkpoint
  cfg, params = models.load_hf(path)
  assert cfg.family == kind
  tokens, mask = right_padded_batch(cfg.vocab_size)
  ref = torch_logits(torch_model, tokens, mask)
  assert np.abs(ref).max() > 1.0  # Logits large enough for the tolerance to mean something.
  assert max_real_token_diff(jax_logits(cfg, params, tokens, mask), ref, mask) <= 1e-4


def test_save_hf_reloads_in_transformers(hf_checkpoint, tmp_path):
  kind, path, torch_model = hf_checkpoint
  cfg, params = models.load_hf(path)
  models.save_hf(cfg, params, str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert type(reloaded) is type(torch_model)
  tokens, mask = right_padded_batch(cfg.vocab_size, seed=1)
  assert max_real_token_diff(torch_logits(reloaded, tokens, mask),
                             torch_logits(torch_model, tokens, mask), mask) <= 1e-5
  # And every tensor comes back bit-identical through our own loader.
  cfg2, params2 = models.load_hf(str(tmp_path))
  assert cfg2 == cfg
  np.testing.assert_array_equal(params2["layers_1"]["mlp"]["up_proj"]["kernel"],
                                params["layers_1"]["mlp"]["up_proj"]["kernel"])
  # The stacked layout (scan_layers) reads and writes the same tensors.
  _, stacked = models.load_hf(str(tmp_path), scan_layers=True)
  jax.tree.map(np.testing.assert_array_equal, models.unstack_layers(stacked), params)
  models.save_hf(cfg.replace(scan_layers=True), stacked, str(tmp_path / "stacked"))
  _, params3 = models.load_hf(str(tmp_path / "stacked"))
  jax.tree.map(np.testing.assert_array_equal, params3, params)


def test_sharded_bfloat16_checkpoint_round_trip(tmp_path):
  torch_model = hf_model("qwen2", num_hidden_layers=2)
  torch_model.save_pretrained(tmp_path / "src")
  cfg, params = models.load_hf(str(tmp_path / "src"))
  models.save_hf(cfg, params, str(tmp_path / "out"), dtype="bfloat16", max_shard_bytes=20_000)
  files = sorted(os.listdir(tmp_path / "out"))
  assert "model.safetensors.index.json" in files and "model-00002-of-" in " ".join(files)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                               dtype=torch.float32).eval()
  cfg2, params2 = models.load_hf(str(tmp_path / "out"))
  tokens, mask = right_padded_batch(cfg.vocab_size)
  # Both sides read the same bf16-rounded weights, so they agree as tightly as in float32.
  assert max_real_token_diff(jax_logits(cfg2, params2, tokens, mask),
                             torch_logits(reloaded, tokens, mask), mask) <= 1e-4


def test_legacy_transformers4_config_fields(tmp_path):
  """Checkpoints on the Hub store rope_theta + rope_scaling, not rope_parameters."""
  torch_model = hf_model("llama")
  torch_model.save_pretrained(tmp_path)
  cfg_new = models.read_config(str(tmp_path))
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  rope = hf.pop("rope_parameters")
  hf["rope_theta"] = rope.pop("rope_theta")
  hf["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in rope.items()}
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  assert models.read_config(str(tmp_path)) == cfg_new
  assert cfg_new.rope_scaling.rope_type == "llama3" and cfg_new.rope_theta == 500000.0


def test_sequence_classification_score_head(tmp_path):
  """A reward-model checkpoint loads with a score head and scores like transformers."""
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, num_labels=1, pad_token_id=0,
                                    initializer_range=0.2)
  torch_model = transformers.Qwen2ForSequenceClassification(hf_cfg).eval()
  torch_model.save_pretrained(tmp_path)
  cfg, params = models.load_hf(str(tmp_path))
  assert cfg.score_head and not cfg.lm_head
  tokens, mask = right_padded_batch(cfg.vocab_size)
  tokens = np.where(mask == 1, np.maximum(tokens, 1), 0)  # pad id 0 marks the ends for HF.
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long)).logits[:, 0].numpy()
  scores = np.asarray(models.Model(cfg).apply({"params": params}, jnp.asarray(tokens),
                                              attention_mask=jnp.asarray(mask),
                                              method=models.Model.score))
  last = mask.sum(-1) - 1
  np.testing.assert_allclose(scores[np.arange(len(last)), last], ref, atol=1e-4)
  models.save_hf(cfg, params, str(tmp_path / "out"))
  again = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
  assert type(again) is type(torch_model)


def test_unsupported_architecture_is_named(tmp_path):
  hf_model("llama").save_pretrained(tmp_path)
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  hf["architectures"] = ["MistralForCausalLM"]
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  with pytest.raises(models.CheckpointError, match="MistralForCausalLM.*not supported"):
    models.load_hf(str(tmp_path))


@pytest.mark.parametrize("edit, message", [
    ("drop", r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"),
    ("reshape", r"model\.layers\.1\.mlp\.up_proj\.weight.*shape \(96, 32\), expected \(96, 64\)"),
    ("extra", r"does not map.*model\.layers\.1\.mlp\.extra\.weight"),
])
def test_bad_tensors_are_named(tmp_path, edit, message):
  hf_model("llama").save_pretrained(tmp_path)
  file = str(tmp_path / "model.safetensors")
  tensors = safetensors.numpy.load_file(file)
  name = "model.layers.1.mlp.up_proj.weight"
  if edit == "drop":
    del tensors[name]
  elif edit == "reshape":
    tensors[name] = np.ascontiguousarray(tensors[name][:, :32])
  else:
    tensors["model.layers.1.mlp.extra.weight"] = np.zeros((2,), np.float32)
  safetensors.numpy.save_file(tensors, file, {"format": "pt"})
  with pytest.raises(models.CheckpointError, match=message):
    models.load_hf(str(tmp_path))


def test_missing_files_are_named(tmp_path):
  with pytest.raises(models.CheckpointError, match="no config.json"):
    models.load_hf(str(tmp_path))
  hf_model("qwen2").save_pretrained(tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(models.CheckpointError, match="no model.safetensors"):
    models.load_hf(str(tmp_path))


@pytest.mark.parametrize("cut", ["tail", "header"])
def test_a_truncated_safetensors_file_is_named(tmp_path, cut):
  hf_model("qwen2").save_pretrained(tmp_path)
  file = tmp_path / "model.safetensors"
  os.truncate(file, 20 if cut == "header" else os.path.getsize(file) - 1000)
  with pytest.raises(models.CheckpointError, match=f"{file}: not a readable safetensors file .*"
                     "truncated or corrupt"):
    models.load_hf(str(tmp_path))


def test_save_rejects_flags_no_transformers_class_has(tmp_path):
  cfg = models.preset("tiny", num_layers=1, qkv_bias=False)  # qwen2 always has q/k/v bias
  params = models.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="Qwen2 checkpoints have q/k/v biases"):
    models.save_hf(cfg, params, str(tmp_path))


def test_skipped_head_is_neither_converted_nor_returned(tmp_path):
  hf_model("llama").save_pretrained(tmp_path)  # Untied: it has an lm_head.
  _, full = models.load_hf(str(tmp_path))
  _, params = models.load_hf(str(tmp_path), skip=("lm_head",))
  assert "lm_head" in full and "lm_head" not in params
  jax.tree.map(np.testing.assert_array_equal, params,
               {k: v for k, v in full.items() if k != "lm_head"})
