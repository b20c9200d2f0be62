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
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "attention_block", "remat",
                  "scan_layers")
# Heads may be changed too: a reward model starts from a policy checkpoint (lm_head=False,
# score_head=True); a head the checkpoint lacks is initialised, one it has but the config does
# not want is dropped.
HEAD_FIELDS = ("lm_head", "score_head")


def config_from(model: Mapping[str, Any]) -> ModelConfig:
  """`hf_path` (a checkpoint folder) or `preset` (a name in PRESETS); other keys override fields.

  E.g. {"preset": "tiny", "dtype": "bfloat16", "num_layers": 2}.
  """
  fields = dict(model)
  hf_path, name = fields.pop("hf_path", ""), fields.pop("preset", "")
  if hf_path:
    shape_fields = sorted(set(fields) - set(RUNTIME_FIELDS) - set(HEAD_FIELDS))
    if shape_fields:
      raise ValueError(f"model.hf_path={hf_path!r} fixes the architecture; model.{shape_fields} "
                       f"cannot be overridden (only {RUNTIME_FIELDS + HEAD_FIELDS} can)")
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
    return cfg, _load_checkpoint(cfg, model["hf_path"], rng, shardings)
  if shardings is not None:
    return cfg, sharding.init_sharded(functools.partial(init_params, cfg), rng, shardings)
  return cfg, init_params(cfg, rng)


def _load_checkpoint(cfg: ModelConfig, path: str, rng: jax.Array, shardings):
  """Loads `path` into the tree of `cfg`, whose heads may differ from the checkpoint's."""
  saved = read_config(path).replace(param_dtype=cfg.param_dtype)
  heads = {"lm_head": cfg.lm_head and not cfg.tie_word_embeddings, "score_head": cfg.score_head}
  saved_heads = {"lm_head": saved.lm_head and not saved.tie_word_embeddings,
                 "score_head": saved.score_head}
  body_shardings = None
  if shardings is not None:
    body_shardings = {k: v for k, v in shardings.items() if k not in heads}
    body_shardings |= {k: shardings.get(k) for k, present in saved_heads.items() if present}
  unwanted = tuple(k for k, present in saved_heads.items() if present and not heads[k])
  _, params = load_hf(path, param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
                      shardings=body_shardings, skip=unwanted)
  missing = [k for k in heads if heads[k] and k not in params]
  if missing:
    # Only the new heads are computed: XLA drops the rest of the initialiser.
    new = jax.jit(lambda r: {k: init_params(cfg, r)[k] for k in missing},
                  out_shardings=None if shardings is None else {k: shardings[k] for k in missing})
    params |= new(rng)
  return params
