"""The one state pytree of training, created directly in its sharding.

    state, shardings = state_lib.init_state(cfg, tx, rng, mesh=mesh, rules=rules)

Shardings come from the parameters' logical axes; the optimizer's moment trees inherit them
(optax maps over the still-boxed parameters under `jax.eval_shape`), scalars are replicated.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import optax

from reasonjax import checkpoint, sharding
from reasonjax.models import ModelConfig
from reasonjax.models.decoder import init_boxed_params

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """step int32 []; params and opt_state pytrees; rng uint32 key data [2] (split every step).

  The key is stored as raw key data so that checkpoints hold only plain arrays.
  """

  step: Array
  params: Any
  opt_state: Any
  rng: Array


def _boxed_state(cfg: ModelConfig, tx: optax.GradientTransformation, rng: Array,
                 init_params=init_boxed_params) -> TrainState:
  params = init_params(cfg, rng)
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(rng, 1)))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh, rules,
                    init_params=init_boxed_params):
  """NamedShardings of every TrainState leaf (params and optimizer moments by logical axes).

  `init_params(cfg, rng)` makes the trained parameters: the model's (boxed with their logical
  axes), or another tree such as LoRA adapters (`models.lora.init`; unboxed: replicated).
  """
  boxed = jax.eval_shape(functools.partial(_boxed_state, cfg, tx, init_params=init_params),
                         jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  shapes = jax.eval_shape(lambda: nn.unbox(boxed))
  return sharding.logical_to_shardings(logical, shapes, mesh, rules)  # Unboxed leaves: P().


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, *, mesh, rules,
                   init_params=init_boxed_params):
  """(ShapeDtypeStructs of the TrainState with their shardings, the shardings): the restore
  target of a checkpoint, built without allocating the state."""
  shardings = state_shardings(cfg, tx, mesh, rules, init_params)
  shapes = jax.eval_shape(lambda rng: nn.unbox(_boxed_state(cfg, tx, rng, init_params)),
                          jax.random.key(0))
  return checkpoint.abstract_like(shapes, shardings), shardings


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, rng: Array, *, mesh,
               rules, params=None, init_params=init_boxed_params) -> tuple[TrainState, Any]:
  """(state, shardings): a fresh TrainState created sharded; `params` (e.g. from load_hf)
  replace the random ones and are placed in their shardings."""
  shardings = state_shardings(cfg, tx, mesh, rules, init_params)

  def init(rng, params):
    state = nn.unbox(_boxed_state(cfg, tx, rng, init_params))
    if params is not None:
      state = state.replace(params=params, opt_state=tx.init(params))
    return state

  jitted = jax.jit(init, out_shardings=shardings)
  return jitted(rng, params), shardings
