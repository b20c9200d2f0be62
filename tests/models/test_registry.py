"""From a config's model section to parameters: `config_from` errors, and checkpoints loaded
into a model with other heads (a policy into a reward model and back), with and without a
mesh of 8 fake CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs.common import AXIS_RULES
from reasonjax import models, sharding
from reasonjax.models import registry
from tests.conftest import random_params

POLICY = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64,
                       intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                       initializer_range=0.2)
BACKBONE = ("embed_tokens", "layers_0", "layers_1", "norm")


def saved(tmp_path_factory, name, cfg, seed=0):
  """A checkpoint folder of `cfg` with random parameters; returns (path, params)."""
  params = random_params(cfg, seed)
  path = str(tmp_path_factory.mktemp(name))
  models.save_hf(cfg, params, path)
  return path, params


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def policy(request, tmp_path_factory):
  """A causal LM checkpoint (lm_head only): (cfg, path, params)."""
  cfg = POLICY.replace(tie_word_embeddings=request.param)
  path, params = saved(tmp_path_factory, "policy", cfg)
  assert ("lm_head" in params) != request.param
  return cfg, path, params


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def scorer(request, tmp_path_factory):
  """A sequence-classification checkpoint (score_head only): (cfg, path, params)."""
  cfg = POLICY.replace(tie_word_embeddings=request.param, lm_head=False, score_head=True)
  path, params = saved(tmp_path_factory, "scorer", cfg, seed=1)
  assert "score_head" in params and "lm_head" not in params
  return cfg, path, params


def assert_same_structure(params, cfg):
  shapes = models.param_shapes(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
    assert x.shape == s.shape and x.dtype == s.dtype


def assert_backbone_equal(params, reference):
  for key in BACKBONE:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params[key]), reference[key])


def assert_fresh(kernel, std):
  """A new head: drawn from N(0, std), not zeros and not a copy of anything."""
  kernel = np.asarray(kernel, np.float64)
  assert np.isfinite(kernel).all()
  assert 0.6 * std < kernel.std() < 1.4 * std and abs(kernel.mean()) < 0.5 * std


# ----------------------------------------------------------------------------- config_from


def test_hf_path_with_a_shape_field_raises_naming_the_allowed_fields(policy):
  _, path, _ = policy
  with pytest.raises(ValueError) as e:
    models.config_from({"hf_path": path, "num_layers": 3, "hidden_size": 32, "dtype": "bfloat16"})
  message = str(e.value)
  assert "['hidden_size', 'num_layers']" in message and path in message
  for allowed in registry.RUNTIME_FIELDS + registry.HEAD_FIELDS:
    assert allowed in message


def test_hf_path_takes_runtime_and_head_fields(policy):
  cfg, path, _ = policy
  changes = {"dtype": "bfloat16", "remat": "full", "attention_impl": "auto",
             "param_dtype": "bfloat16", "lm_head": False, "score_head": True}
  got = models.config_from({"hf_path": path, **changes})
  assert got == models.read_config(path).replace(**changes)
  assert got.num_layers == cfg.num_layers and got.tie_word_embeddings == cfg.tie_word_embeddings


@pytest.mark.parametrize("section", [{}, {"dtype": "bfloat16"}, {"preset": "", "hf_path": ""}])
def test_neither_preset_nor_hf_path_raises(section):
  with pytest.raises(ValueError, match="needs `preset`.*or `hf_path`"):
    models.config_from(section)


def test_preset_with_overrides():
  assert models.config_from({"preset": "tiny", "num_layers": 2, "dtype": "bfloat16"}) == \
      models.preset("tiny", num_layers=2, dtype="bfloat16")
  with pytest.raises(ValueError, match="valid presets"):
    models.config_from({"preset": "gpt5"})


# ----------------------------------------------------------------------------- heads


def test_policy_checkpoint_into_a_reward_model(policy):
  _, path, params = policy
  cfg, loaded = models.load({"hf_path": path, "lm_head": False, "score_head": True},
                            jax.random.key(0))
  assert not cfg.lm_head and cfg.score_head
  assert "score_head" in loaded and "lm_head" not in loaded
  assert_same_structure(loaded, cfg)
  assert_backbone_equal(loaded, params)
  assert_fresh(loaded["score_head"]["kernel"], cfg.initializer_range)


def assert_placed(loaded, cfg, mesh):
  """Every parameter in the sharding its logical axes give under AXIS_RULES."""
  expected = sharding.logical_to_shardings(models.param_logical_axes(cfg),
                                           models.param_shapes(cfg), mesh, AXIS_RULES)
  assert jax.tree.structure(expected) == jax.tree.structure(loaded)
  for (where, x), s in zip(jax.tree_util.tree_leaves_with_path(loaded), jax.tree.leaves(expected)):
    assert x.sharding.is_equivalent_to(s, x.ndim), (jax.tree_util.keystr(where), x.sharding, s)
  # The rules really shard: the embedding table over tensor x fsdp.
  assert loaded["embed_tokens"]["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")


def test_policy_checkpoint_into_a_reward_model_on_a_mesh(policy):
  _, path, params = policy
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  section = {"hf_path": path, "lm_head": False, "score_head": True}
  cfg, loaded = models.load(section, jax.random.key(0), mesh=mesh, rules=AXIS_RULES)
  assert_same_structure(loaded, cfg)
  assert_placed(loaded, cfg, mesh)
  assert loaded["score_head"]["kernel"].sharding.spec == PartitionSpec("fsdp", None)
  assert_backbone_equal(loaded, params)
  assert_fresh(loaded["score_head"]["kernel"], cfg.initializer_range)


def test_policy_checkpoint_with_both_heads_keeps_the_lm_head(policy):
  policy_cfg, path, params = policy
  cfg, loaded = models.load({"hf_path": path, "score_head": True}, jax.random.key(0))
  assert cfg.lm_head and cfg.score_head
  assert_same_structure(loaded, cfg)
  assert_backbone_equal(loaded, params)
  if not policy_cfg.tie_word_embeddings:
    np.testing.assert_array_equal(loaded["lm_head"]["kernel"], params["lm_head"]["kernel"])
  assert_fresh(loaded["score_head"]["kernel"], cfg.initializer_range)


def test_score_checkpoint_into_a_causal_lm(scorer):
  score_cfg, path, params = scorer
  cfg, loaded = models.load({"hf_path": path, "lm_head": True, "score_head": False},
                            jax.random.key(0))
  assert cfg.lm_head and not cfg.score_head
  assert "score_head" not in loaded
  assert_same_structure(loaded, cfg)
  assert_backbone_equal(loaded, params)
  if score_cfg.tie_word_embeddings:
    assert set(loaded) == set(BACKBONE)  # The logits use the (loaded) embedding table.
  else:
    assert loaded["lm_head"]["kernel"].shape == (64, 512)
    assert_fresh(loaded["lm_head"]["kernel"], cfg.initializer_range)


def test_score_checkpoint_into_a_causal_lm_on_a_mesh(scorer):
  _, path, params = scorer
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  cfg, loaded = models.load({"hf_path": path, "lm_head": True, "score_head": False},
                            jax.random.key(0), mesh=mesh, rules=AXIS_RULES)
  assert_same_structure(loaded, cfg)
  assert_placed(loaded, cfg, mesh)
  assert_backbone_equal(loaded, params)
  if not cfg.tie_word_embeddings:
    assert loaded["lm_head"]["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")


def test_plain_checkpoint_load_round_trips(scorer):
  score_cfg, path, params = scorer
  cfg, loaded = models.load({"hf_path": path}, jax.random.key(0))
  assert cfg.replace(initializer_range=score_cfg.initializer_range) == score_cfg
  assert_same_structure(loaded, cfg)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)
