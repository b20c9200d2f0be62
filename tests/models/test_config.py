"""ModelConfig validation, presets, parameter counts and FLOPs per token."""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from reasonjax import models

# Parameter counts published with each checkpoint (model cards / safetensors totals).
PUBLISHED_PARAMS = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_real_presets_have_published_parameter_counts(name):
  assert models.param_count(models.preset(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("flags", [
    {}, {"tie_word_embeddings": False}, {"qk_norm": True, "qkv_bias": False},
    {"o_bias": True, "mlp_bias": True}, {"score_head": True}, {"score_head": True, "lm_head": False},
])
def test_param_count_equals_initialised_tree(flags):
  cfg = models.preset("tiny", num_layers=2, **flags)
  shapes = models.param_shapes(cfg)
  assert models.param_count(cfg) == sum(x.size for x in jax.tree.leaves(shapes))
  embedding = shapes["embed_tokens"]["embedding"].size
  assert models.param_count(cfg, embedding=False) == models.param_count(cfg) - embedding


def test_flops_per_token_matches_xla_cost_analysis():
  """6N + 12 L H hd T against XLA's own count for one forward+backward step.

  XLA also counts the elementwise work (norms, softmax, SwiGLU) that the formula leaves out, so
  on a matmul-dominated shape the two agree to a few percent, and the formula is the lower one.
  One layer: the cost analysis counts a scanned (while-loop) body once, whatever the trip count.
  """
  # 'xla' attention computes the full T x T square that the formula counts; 'blockwise' skips
  # the blocks above the diagonal.
  cfg = models.preset("tiny", num_layers=1, hidden_size=512, intermediate_size=1536,
                      num_heads=8, num_kv_heads=2, vocab_size=2048, attention_impl="xla")
  batch, length = 2, 128
  model = models.Model(cfg)
  tokens = jnp.zeros((batch, length), jnp.int32)

  def loss(params):
    logits = model.apply({"params": params}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  params = models.param_shapes(cfg)
  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = cost["flops"]
  formula = models.flops_per_token(cfg, length) * batch * length
  assert 0.97 * xla_flops <= formula <= xla_flops, (formula, xla_flops)


def test_flops_attention_term_grows_with_length():
  cfg = models.preset("small")
  extra = models.flops_per_token(cfg, 2048) - models.flops_per_token(cfg, 1024)
  assert extra == 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 1024


@pytest.mark.parametrize("changes, message", [
    ({"dtype": "float16"}, r"model\.dtype='float16' is not valid; expected one of"),
    ({"num_heads": 6, "num_kv_heads": 4}, "must be a multiple of"),
    ({"attention_impl": "flash"}, "attention_impl"),
    ({"remat": "some"}, "remat"),
    ({"lm_head": False}, "needs an output"),
    ({"num_layerz": 2}, r"unknown ModelConfig field\(s\) \['num_layerz'\]; valid fields"),
    ({"rope_scaling": {"rope_type": "yarn"}}, "rope_type='yarn' is not supported"),
])
def test_bad_fields_are_named(changes, message):
  with pytest.raises(ValueError, match=message):
    models.preset("tiny", **changes)


def test_unknown_preset_lists_valid_names():
  with pytest.raises(ValueError, match=r"unknown model preset 'gpt5'; valid presets: \[.*'tiny'"):
    models.preset("gpt5")


def test_config_is_hashable_for_static_jit_arguments():
  cfg = models.preset("tiny")
  f = jax.jit(functools.partial(lambda c, x: x * c.num_layers), static_argnums=0)
  assert int(f(cfg, 2)) == 8
  assert hash(cfg) == hash(models.preset("tiny"))
