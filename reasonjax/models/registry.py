"""From the `config.model` section of an experiment config to a ModelConfig and parameters."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax

from reasonjax import sharding
from reasonjax.models.config import ModelConfig, preset
from reasonjax.models.decoder import init_params, param_logical_axes, param_shapes
from reasonjax.models.hf import load_hf, read_config

# Fields that may be changed on top of a checkpoint: they change numerics, not parameter shapes.
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat")


def config_from(model: Mapping[str, Any]) -> ModelConfig:
  """`hf_path` (a checkpoint folder) or `preset` (a name in PRESETS); other keys override fields.

  E.g. {"preset": "tiny", "dtype": "bfloat16", "num_layers": 2}.
  """
  fields = dict(model)
  hf_path, name = fields.pop("hf_path", ""), fields.pop("preset", "")
  if hf_path:
    shape_fields = sorted(set(fields) - set(RUNTIME_FIELDS))
    if shape_fields:
      raise ValueError(f"model.hf_path={hf_path!r} fixes the architecture; model.{shape_fields} "
                       f"cannot be overridden (only {RUNTIME_FIELDS} can)")
    return read_config(hf_path).replace(**fields)
  if not name:
    raise ValueError("config.model needs `preset` (a model shape name) or `hf_path`")
  return preset(name, **fields)


def load(model: Mapping[str, Any], rng: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
         rules=()) -> tuple[ModelConfig, Any]:
  """(ModelConfig, params) for `config.model`: loaded from `hf_path`, else randomly initialised.

  With a mesh, every parameter is created directly in its sharding (logical axes -> `rules`).
  """
  cfg = config_from(model)
  shardings = None
  if mesh is not None:
    shardings = sharding.logical_to_shardings(param_logical_axes(cfg), param_shapes(cfg), mesh,
                                              rules)
  if model.get("hf_path"):
    _, params = load_hf(model["hf_path"], param_dtype=cfg.param_dtype, shardings=shardings)
  elif shardings is not None:
    params = sharding.init_sharded(functools.partial(init_params, cfg), rng, shardings)
  else:
    params = init_params(cfg, rng)
  return cfg, params
