"""models/lora.py: the merge against numpy float64, the PEFT folder against `peft` itself (the
adapted transformers model's logits, or a reward model's scores with its score head trained in
full, equal the Flax model's on the merged parameters), scanned layers, and the file round
trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers

from reasonjax import models
from reasonjax.models import lora
from tests.conftest import HF_COMMON, hf_model, right_padded_batch
from tests.models.test_hf import jax_logits, max_real_token_diff, torch_logits


def _trained(adapters, seed=1):
  """Adapters as after training: b no longer zero."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(rng.normal(size=x.shape) * 0.2, np.float32),
                      adapters)


def test_merge_against_numpy():
  cfg = models.preset("tiny", num_layers=2, vocab_size=128, hidden_size=32, intermediate_size=64,
                      num_heads=4, num_kv_heads=2, head_dim=8)
  params = jax.tree.map(np.asarray, models.init_params(cfg, jax.random.key(0)))
  fresh = lora.init(cfg, jax.random.key(1), rank=3, targets=("q_proj", "o_proj", "down_proj"))
  merged = lora.merge(params, fresh, scale=2.0)
  jax.tree.map(np.testing.assert_array_equal, merged, params)  # b = 0: nothing changes
  adapters = _trained(fresh)
  merged = lora.merge(params, adapters, scale=2.0)
  for layer in ("layers_0", "layers_1"):
    for group, name in (("self_attn", "q_proj"), ("self_attn", "o_proj"), ("mlp", "down_proj")):
      w = np.asarray(params[layer][group][name]["kernel"], np.float64)
      a, b = (np.asarray(adapters[layer][group][name][k], np.float64) for k in ("lora_a",
                                                                                 "lora_b"))
      n_in = 2 if name == "o_proj" else 1  # o_proj's input is [heads, head_dim]
      matrix = w.reshape(int(np.prod(w.shape[:n_in])), -1) + 2.0 * a @ b
      np.testing.assert_allclose(merged[layer][group][name]["kernel"], matrix.reshape(w.shape),
                                 rtol=1e-5, atol=1e-6)
    # Untargeted kernels and other leaves are the same arrays.
    np.testing.assert_array_equal(merged[layer]["self_attn"]["k_proj"]["kernel"],
                                  params[layer]["self_attn"]["k_proj"]["kernel"])
  assert set(adapters["layers_0"]["self_attn"]) == {"q_proj", "o_proj"}
  assert adapters["layers_0"]["self_attn"]["q_proj"]["lora_a"].shape == (32, 3)
  assert adapters["layers_0"]["self_attn"]["o_proj"]["lora_b"].shape == (3, 32)


@pytest.mark.parametrize("scan", [False, True])
def test_the_factored_form_has_the_merged_models_logits_and_gradients(scan):
  """What training differentiates (`attach`) against what samples and exports (`merge`): the
  same logits, and the same gradients in the adapters and in a head trained in full."""
  cfg = models.preset("tiny", num_layers=2, vocab_size=128, hidden_size=32, intermediate_size=64,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False,
                      scan_layers=scan)
  params = models.init_params(cfg, jax.random.key(0))
  adapters = jax.tree.map(jnp.asarray, _trained(lora.init(
      cfg, jax.random.key(1), rank=3, targets=("q_proj", "o_proj", "up_proj"),
      full={"lm_head": params["lm_head"]})))
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
  model = models.Model(cfg)

  def loss(adapters, form):
    logits = model.apply({"params": form(params, adapters, scale=1.5)}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(adapters, lora.attach)
  (want_value, want_logits), want = jax.value_and_grad(loss, has_aux=True)(adapters, lora.merge)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6), grads, want)
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))  # every part is trained


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_peft_loads_the_adapters_with_the_same_logits(kind, tmp_path):
  torch_model = hf_model(kind)
  torch_model.save_pretrained(tmp_path / "base")
  cfg, params = models.load_hf(str(tmp_path / "base"))
  rank, alpha = 4, 8.0
  adapters = _trained(lora.init(cfg, jax.random.key(0), rank=rank))
  lora.save_peft(str(tmp_path / "adapter"), cfg, adapters, rank=rank, alpha=alpha,
                 base_model=str(tmp_path / "base"))
  adapted = peft.PeftModel.from_pretrained(torch_model, str(tmp_path / "adapter")).eval()
  tokens, mask = right_padded_batch(cfg.vocab_size)
  merged = lora.merge(params, adapters, scale=alpha / rank)
  want = torch_logits(adapted, tokens, mask)
  assert max_real_token_diff(jax_logits(cfg, merged, tokens, mask), want, mask) <= 1e-4
  # The adapters change the logits: the comparison is not of the base model with itself.
  assert max_real_token_diff(jax_logits(cfg, params, tokens, mask), want, mask) > 1e-2
  # The merged parameters exported as a plain checkpoint give the same logits too.
  models.save_hf(cfg, merged, str(tmp_path / "merged"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"),
                                                               dtype=torch.float32).eval()
  assert max_real_token_diff(torch_logits(reloaded, tokens, mask), want, mask) <= 1e-4


def _reward_model(path):
  """A tiny random Llama reward model (transformers, num_labels 1) saved at `path`."""
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(**HF_COMMON, num_labels=1, pad_token_id=0)
  model = transformers.LlamaForSequenceClassification(hf_cfg).eval()
  model.save_pretrained(path)
  return model


def _last_scores(cfg, params, tokens, mask):
  scores = models.Model(cfg).apply({"params": params}, tokens, attention_mask=mask,
                                   method=models.Model.score)
  return np.asarray(scores)[np.arange(len(mask)), mask.sum(-1) - 1]


def _torch_scores(model, tokens, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits[:, 0].numpy()


def test_a_reward_models_score_head_is_saved_as_peft_modules_to_save(tmp_path):
  torch_model = _reward_model(tmp_path / "base")
  cfg, params = models.load_hf(str(tmp_path / "base"))
  assert lora.modules(cfg) == ("score_head",)
  head = {"score_head": jax.tree.map(lambda x: np.asarray(x) + 0.5, params["score_head"])}
  adapters = _trained(lora.init(cfg, jax.random.key(0), rank=2, targets=("v_proj",)),
                      seed=2) | head
  lora.save_peft(str(tmp_path / "adapter"), cfg, adapters, rank=2, alpha=4.0,
                 targets=("v_proj",))
  adapted = peft.PeftModel.from_pretrained(torch_model, str(tmp_path / "adapter")).eval()
  tokens, mask = right_padded_batch(cfg.vocab_size)
  tokens = np.where(mask == 1, np.maximum(tokens, 1), 0)  # pad id 0 marks the ends for HF.
  want = _torch_scores(adapted, tokens, mask)
  merged = lora.merge(params, adapters, scale=2.0)
  np.testing.assert_allclose(_last_scores(cfg, merged, tokens, mask), want, atol=1e-4)
  # Both parts count: without the trained head, or without the adapters, the scores differ.
  for part in (lora.merge(params, adapters | {"score_head": params["score_head"]}, scale=2.0),
               lora.merge(params, head, scale=2.0)):
    assert np.abs(_last_scores(cfg, part, tokens, mask) - want).max() > 1e-2
  loaded, settings = lora.load_peft(str(tmp_path / "adapter"), cfg)
  assert settings["modules_to_save"] == ["score"] and settings["task_type"] == "SEQ_CLS"
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), loaded, adapters)


def test_a_folder_peft_itself_saved_loads_with_its_score_head(tmp_path):
  torch_model = _reward_model(tmp_path / "base")
  cfg, params = models.load_hf(str(tmp_path / "base"))
  wrapped = peft.get_peft_model(torch_model, peft.LoraConfig(
      task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
  with torch.no_grad():  # as after training: B and the score head moved
    for name, p in wrapped.named_parameters():
      if p.requires_grad:
        p.add_(0.3 * torch.randn_like(p))
  wrapped.save_pretrained(tmp_path / "adapter")
  tokens, mask = right_padded_batch(cfg.vocab_size)
  tokens = np.where(mask == 1, np.maximum(tokens, 1), 0)
  want = _torch_scores(wrapped.eval(), tokens, mask)
  adapters, _ = lora.load_peft(str(tmp_path / "adapter"), cfg)
  assert "score_head" in adapters
  merged = lora.merge(params, adapters, scale=2.0)
  np.testing.assert_allclose(_last_scores(cfg, merged, tokens, mask), want, atol=1e-4)


def test_modules_trained_in_full_are_checked():
  cfg = models.preset("tiny", num_layers=1, vocab_size=64, hidden_size=16, intermediate_size=32,
                      num_heads=2, num_kv_heads=1, head_dim=8)
  assert lora.modules(cfg) == ()
  assert lora.modules(cfg.replace(tie_word_embeddings=False), ["lm_head"]) == ("lm_head",)
  for names in (["lm_head"], ["norm"], ["score_head"]):  # tied LM head; not a head; no score
    with pytest.raises(ValueError, match="modules_to_save"):
      lora.modules(cfg, names)


def test_scanned_layers_and_the_file_round_trip(tmp_path):
  cfg = models.preset("tiny", num_layers=3, vocab_size=128, hidden_size=32, intermediate_size=64,
                      num_heads=4, num_kv_heads=2, head_dim=8)
  params = models.init_params(cfg, jax.random.key(0))
  adapters = _trained(lora.init(cfg, jax.random.key(1), rank=2, targets=("v_proj", "up_proj")))
  lora.save_peft(str(tmp_path), cfg, adapters, rank=2, alpha=4.0, targets=("v_proj", "up_proj"))
  with open(tmp_path / lora.CONFIG_FILE) as f:
    assert json.load(f)["target_modules"] == ["up_proj", "v_proj"]
  loaded, settings = lora.load_peft(str(tmp_path), cfg)
  jax.tree.map(np.testing.assert_array_equal, loaded, adapters)
  assert settings["r"] == 2 and settings["lora_alpha"] == 4.0
  # The same adapters read for the scanned layout: a leading layer axis, the same merge.
  scanned = cfg.replace(scan_layers=True)
  stacked, _ = lora.load_peft(str(tmp_path), scanned)
  assert stacked["layers"]["self_attn"]["v_proj"]["lora_a"].shape == (3, 32, 2)
  models.save_hf(cfg, params, str(tmp_path / "base"))
  _, stacked_params = models.load_hf(str(tmp_path / "base"), scan_layers=True)
  merged = lora.merge(stacked_params, stacked, scale=2.0)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6),
               models.unstack_layers(merged), lora.merge(params, adapters, scale=2.0))


@pytest.mark.parametrize("rank, targets, match", [(0, ("q_proj",), "rank"),
                                                  (2, ("qkv",), "targets"), (2, (), "targets")])
def test_bad_settings_are_refused(rank, targets, match):
  cfg = models.preset("tiny", num_layers=1, vocab_size=128, hidden_size=32,
                      intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8)
  with pytest.raises(ValueError, match=match):
    lora.init(cfg, jax.random.key(0), rank=rank, targets=targets)
