"""The jitted train step shared by every method, and the SFT loss.

    loss_fn = functools.partial(step.sft_loss, model=model)
    train_step = step.jit_train_step(loss_fn, tx, state_shardings, batch_shardings,
                                     accum_steps=2)
    state, metrics = train_step(state, batch)      # state donated

A loss function is `loss_fn(params, batch, rng, frozen) -> (loss, (weight, metrics))`, where
`frozen` is a pytree the step does not train (a DPO reference model's parameters; None for SFT).
Micro-batches of gradient accumulation combine as sum_i(weight_i * loss_i) / sum_i(weight_i):
with the token count as weight, accumulating gives exactly the token mean of the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from reasonjax.losses import sft, tokens
from reasonjax.models import layers
from reasonjax.training import optim
from reasonjax.training.state import TrainState

Array = jax.Array
LossFn = Callable[[Any, dict[str, Array], Array, Any],
                  tuple[Array, tuple[Array, dict[str, Array]]]]


def sft_loss(params, batch: dict[str, Array], rng: Array, frozen=None, *, model,
             label_smoothing: float = 0.0, z_loss: float = 0.0, kl_weight: float = 0.0):
  """Token-mean cross-entropy on `loss_mask`; batch from `data.batching` (inputs, targets,
  loss_mask, positions, segment_ids: [B, T]). Weight: the number of supervised tokens.

  kl_weight > 0: `sft.kl_regularized`, CE + kl_weight * log(1 + KL(reference || policy)), the
  reference's logits from `frozen` (the HRM paper's self-training loss; label_smoothing and
  z_loss do not apply).
  """
  del rng
  apply = functools.partial(model.apply, positions=batch["positions"],
                            segment_ids=batch["segment_ids"])
  logits = apply({"params": params}, batch["inputs"])
  mask = batch["loss_mask"]
  count = jnp.sum(mask)
  correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * mask)
  metrics = {"token_accuracy": correct / jnp.maximum(count, 1.0), "tokens": count}
  if kl_weight:
    reference = apply({"params": frozen}, batch["inputs"])
    loss, parts = sft.kl_regularized(logits, reference, batch["targets"], mask,
                                     kl_weight=kl_weight)
    return loss, (count, metrics | parts)
  per_token = sft.cross_entropy(logits, batch["targets"], mask, label_smoothing=label_smoothing,
                                z_loss=z_loss)
  loss = tokens.reduce(per_token, mask, "token_mean")
  return loss, (count, {"loss": loss, **metrics})


def _accumulate(loss_fn: LossFn, params, batch, rng, frozen, accum_steps: int):
  """Weighted mean of loss, gradients and metrics over `accum_steps` micro-batches."""
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, frozen=frozen), has_aux=True)
  if accum_steps == 1:
    (loss, (weight, metrics)), grads = grad_fn(params, batch, rng)
    return loss, grads, metrics
  micro = jax.tree.map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

  def body(carry, inputs):
    micro_batch, micro_rng = inputs
    (loss, (weight, metrics)), grads = grad_fn(params, micro_batch, micro_rng)
    scaled = jax.tree.map(lambda x: x * weight, (loss, grads, metrics))
    return jax.tree.map(jnp.add, carry, (scaled, weight)), None

  zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
  (_, (_, metrics0)), grads0 = zeros
  init = ((jnp.zeros(()), jax.tree.map(jnp.zeros_like, grads0),
           jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics0)), jnp.zeros(()))
  ((loss, grads, metrics), total), _ = jax.lax.scan(
      body, init, (micro, jax.random.split(rng, accum_steps)))
  scale = 1.0 / jnp.maximum(total, 1e-9)
  return jax.tree.map(lambda x: x * scale, (loss, grads, metrics))


def train_step(state: TrainState, batch: dict[str, Array], frozen=None, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, accum_steps: int = 1
               ) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer update: (state, batch) -> (state, metrics). Pure; jit it once."""
  rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
  loss, grads, metrics = _accumulate(loss_fn, state.params, batch, step_rng, frozen,
                                       accum_steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics) | {
      "grad_norm": optax.global_norm(grads),
      "nonfinite_streak": optim.nonfinite_streak(opt_state),
      "nonfinite_total": optim.nonfinite_total(opt_state)}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            rng=jax.random.key_data(rng))
  return new_state, metrics


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, state_shardings,
                   batch_shardings, frozen_shardings=None, *, accum_steps: int = 1):
  """`train_step` compiled once with explicit shardings: called as (state, batch), or as
  (state, batch, frozen) when `frozen_shardings` is given. The input state is donated."""
  step = functools.partial(train_step, loss_fn=loss_fn, tx=tx, accum_steps=accum_steps)
  shardings = (state_shardings, batch_shardings)
  if frozen_shardings is not None:
    shardings += (frozen_shardings,)
  return jax.jit(step, in_shardings=shardings, out_shardings=(state_shardings, None),
                 donate_argnums=0, compiler_options=compiler_options())


def compiler_options() -> dict | None:
  """XLA options for training programs on this backend.

  On CPU, YNNPACK for dots, elementwise and reduction fusions, set explicitly: in turns against
  torch (`benchmarks/train_step.py`'s shapes), the small step ran 10% faster than with Eigen
  dots and the tiny one 3%; the default set of YNNPACK fusions made the tiny step 7% slower.
  Decoding is unaffected, so the sampler keeps the defaults. And `layers.CPU_KEEP_BARRIERS`, so
  that remat and the blockwise backward keep their memory saving with unrolled layers: the tiny
  and small steps ran within 3% of their time without it (12 alternating runs each).
  """
  library = ",".join(f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("DOT", "ELTWISE", "REDUCE"))
  return ({"xla_cpu_experimental_ynn_fusion_type": library} | layers.CPU_KEEP_BARRIERS
          if jax.default_backend() == "cpu" else None)
