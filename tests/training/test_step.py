"""TrainState sharding and the jitted step: accumulation, sharding equality, donation, guard."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from configs.common import AXIS_RULES
from reasonjax import models, sharding
from reasonjax.training import optim, state as state_lib, step as step_lib

CFG = models.preset("tiny", num_layers=2)
OPT = {"learning_rate": 1e-2, "warmup_steps": 0, "total_steps": 100, "clip_norm": 1.0}


def make_batch(seed=0, batch=8, length=32):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, CFG.vocab_size, (batch, length)).astype(np.int32)
  loss_mask = np.zeros((batch, length), np.float32)
  for r in range(batch):  # uneven supervised lengths: micro-batches have different token counts
    loss_mask[r, length - 3 - 3 * r:] = 1
  return {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1), "loss_mask": loss_mask,
          "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
          "segment_ids": np.ones((batch, length), np.int32)}


def setup(mesh):
  tx = optim.make_optimizer(OPT)
  state, shardings = state_lib.init_state(CFG, tx, jax.random.key(0), mesh=mesh,
                                          rules=AXIS_RULES)
  return tx, state, shardings, sharding.batch_shardings(make_batch(), mesh, AXIS_RULES)


def test_state_is_sharded_like_the_params():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  _, state, shardings, _ = setup(mesh)
  q = ("layers_0", "self_attn", "q_proj", "kernel")
  params_spec = shardings.params["layers_0"]["self_attn"]["q_proj"]["kernel"].spec
  assert params_spec == PartitionSpec("fsdp", "tensor", None)
  adam = state.opt_state.inner_state[1][0]  # skip_nonfinite -> chain -> adamw's scale_by_adam
  mu = adam.mu
  for key in q:
    mu = mu[key]
  assert mu.sharding.spec == params_spec
  assert state.step.sharding.spec == PartitionSpec() and int(state.step) == 0


def test_accumulation_gives_the_whole_batch_token_mean():
  params = models.init_params(CFG, jax.random.key(0))
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(CFG))
  batch = jax.tree.map(jnp.asarray, make_batch())
  accumulate = jax.jit(step_lib._accumulate, static_argnums=(0, 5))
  ref_loss, ref_grads, _ = accumulate(loss_fn, params, batch, jax.random.key(1), None, 1)
  for k in (2, 4):
    loss, grads, metrics = accumulate(loss_fn, params, batch, jax.random.key(1), None, k)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      # float32 sums in another order: compare on the scale of the gradient.
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * np.abs(b).max())
  # The plain mean of micro-batch means would differ: the token counts are uneven.
  half_loss = jax.jit(lambda p, b: loss_fn(p, b, None)[0])
  halves = [half_loss(params, jax.tree.map(lambda x: x[i * 4:(i + 1) * 4], batch))
            for i in range(2)]
  assert abs(float(sum(halves)) / 2 - float(ref_loss)) > 1e-4


def test_sharded_step_equals_single_device_and_learns():
  results = []
  for mesh in (sharding.make_mesh(data=2, fsdp=2, tensor=2),
               sharding.make_mesh(devices=jax.devices()[:1])):
    tx, state, shardings, batch_sharding = setup(mesh)
    loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(CFG))
    with sharding.axis_rules(mesh, AXIS_RULES):
      train = step_lib.jit_train_step(loss_fn, tx, shardings, batch_sharding)
      batch = jax.device_put(make_batch(), batch_sharding)
      losses = []
      for _ in range(15):
        old_params = state.params
        state, metrics = train(state, batch)
        losses.append(float(metrics["loss"]))
      assert jax.tree.leaves(old_params)[0].is_deleted()  # donated
    results.append(losses)
  sharded_losses, single_losses = results
  assert sharded_losses[-1] < 0.5 * sharded_losses[0]
  # Same updates up to float32 round-off, which Adam at this learning rate amplifies over many
  # steps: compare the first ones tightly.
  np.testing.assert_allclose(sharded_losses[:5], single_losses[:5], rtol=1e-4)


def test_nonfinite_loss_skips_the_update():
  tx = optim.make_optimizer(OPT)
  state, _ = state_lib.init_state(CFG, tx, jax.random.key(0),
                                  mesh=sharding.make_mesh(devices=jax.devices()[:1]),
                                  rules=AXIS_RULES)
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(CFG))
  batch = make_batch()
  batch["loss_mask"][0, -1] = np.nan
  train = jax.jit(functools.partial(step_lib.train_step, loss_fn=loss_fn, tx=tx))
  new_state, metrics = train(state, jax.tree.map(jnp.asarray, batch))
  assert int(metrics["nonfinite_streak"]) == 1 and int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_trains_float32_parameters_close_to_float32():
  """Mixed precision from the model config: bf16 matmuls, f32 parameters, moments and loss."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  tx = optim.make_optimizer(OPT)
  batch = jax.tree.map(jnp.asarray, make_batch())
  losses, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    cfg = CFG.replace(num_layers=1, hidden_size=64, intermediate_size=128, num_heads=2,
                      num_kv_heads=1, head_dim=32, dtype=dtype,
                      remat="full" if dtype == "bfloat16" else "none")
    state, shardings = state_lib.init_state(cfg, tx, jax.random.key(0), mesh=mesh,
                                            rules=AXIS_RULES)
    loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
    with sharding.axis_rules(mesh, AXIS_RULES):
      train = step_lib.jit_train_step(loss_fn, tx, shardings,
                                      sharding.batch_shardings(batch, mesh, AXIS_RULES))
      losses[dtype] = []
      for _ in range(3):
        state, metrics = train(state, batch)
        losses[dtype].append(float(metrics["loss"]))
    states[dtype] = state
  assert {x.dtype for x in jax.tree.leaves(states["bfloat16"].params)} == {jnp.dtype("float32")}
  # bf16 keeps 8 mantissa bits: the loss agrees to about 1%, and the updates really happened.
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)
  assert losses["bfloat16"][-1] < losses["bfloat16"][0]
  assert losses["bfloat16"] != losses["float32"]  # The compute really ran in bf16.
