"""The optimizer from the config: AdamW, linear warmup + cosine decay, global-norm clipping, and a
guard that skips updates whose gradients, update or new parameters are not finite.

    tx = optim.make_optimizer(config.optimizer)
    optim.nonfinite_streak(state.opt_state)   # consecutive skipped updates, for the loop to stop
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

FIELDS = {"learning_rate": 3e-4, "warmup_steps": 100, "total_steps": 10_000,
          "end_learning_rate_ratio": 0.1, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
          "weight_decay": 0.1, "clip_norm": 1.0, "max_nonfinite_steps": 10}


def learning_rate_schedule(opt: Mapping[str, Any]) -> optax.Schedule:
  """0 -> learning_rate linearly over warmup_steps, then cosine to lr * end_learning_rate_ratio
  at total_steps."""
  peak = opt["learning_rate"]
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=opt["warmup_steps"],
      decay_steps=max(opt["total_steps"], opt["warmup_steps"] + 1),
      end_value=peak * opt["end_learning_rate_ratio"])


def _decay_mask(params):
  """Weight decay on matrices only: norms, biases and scalar heads stay undecayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def check_fields(opt: Mapping[str, Any]) -> dict[str, Any]:
  """`opt` over FIELDS' defaults; raises ValueError naming an unknown field or a bad value."""
  opt = dict(opt)
  unknown = sorted(set(opt) - set(FIELDS))
  if unknown:
    raise ValueError(f"unknown optimizer field(s) {unknown}; valid: {sorted(FIELDS)}")
  opt = FIELDS | opt
  for name, value in opt.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ValueError(f"optimizer.{name}={value!r}; expected a finite number")
  for name in ("learning_rate", "total_steps", "max_nonfinite_steps"):
    if opt[name] <= 0:
      raise ValueError(f"optimizer.{name} must be positive, got {opt[name]}")
  return opt


def make_optimizer(opt: Mapping[str, Any]) -> optax.GradientTransformation:
  """AdamW + clipping from `opt` (keys as in FIELDS; unknown keys raise with the valid ones).

  Updates whose gradients, update or new parameters hold a NaN or Inf are skipped
  (`skip_nonfinite`); the loop stops the run once `nonfinite_streak` reaches
  max_nonfinite_steps.
  """
  opt = check_fields(opt)
  tx = optax.chain(
      optax.clip_by_global_norm(opt["clip_norm"]) if opt["clip_norm"] > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(opt), b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
                  weight_decay=opt["weight_decay"], mask=_decay_mask))
  return skip_nonfinite(tx)


class SkipNonfiniteState(NamedTuple):
  inner_state: Any
  notfinite_count: jax.Array  # int32: consecutive skipped updates
  total_notfinite: jax.Array  # int32: all skipped updates


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner`, except that a step whose gradients, update or updated parameters hold a NaN or
  Inf (or a global norm that overflows float32) gives zero updates and leaves `inner`'s state as
  it was. Finite gradients can still give a non-finite update (a NaN or huge learning rate, an
  overflow in the moments), and a finite update can still overflow the parameters it is added to.

  Unlike optax.apply_if_finite it has no branch: the update is always computed and then kept or
  dropped with selects, which XLA fuses into the update's own loops. A `lax.cond` copies its
  results, and its own pass over the gradients for NaNs and the clip's global norm inside the
  branch could not be shared with the step's `grad_norm` metric; this test reuses that norm.
  """

  def init(params):
    zero = jnp.zeros([], jnp.int32)
    return SkipNonfiniteState(inner.init(params), zero, zero)

  def update(grads, state, params=None):
    updates, inner_state = inner.update(grads, state.inner_state, params)
    finite = jnp.isfinite(optax.global_norm(grads)) & _all_finite(updates)
    if params is not None:
      finite &= _all_finite(optax.apply_updates(params, updates))
    updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
    inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state,
                               state.inner_state)
    skipped = (~finite).astype(jnp.int32)
    return updates, SkipNonfiniteState(inner_state, (state.notfinite_count + 1) * skipped,
                                       state.total_notfinite + skipped)

  return optax.GradientTransformation(init, update)


def _all_finite(tree) -> jax.Array:
  """bool []: every element of every leaf is finite (a norm could overflow on finite values)."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [True]))


def nonfinite_streak(opt_state) -> jax.Array:
  """Consecutive updates skipped as non-finite (int32 scalar)."""
  return opt_state.notfinite_count


def nonfinite_total(opt_state) -> jax.Array:
  """All updates skipped so far (int32 scalar)."""
  return opt_state.total_notfinite
