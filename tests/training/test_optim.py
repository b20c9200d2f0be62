"""Optimizer from the config: schedule, decay mask, clipping and the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reasonjax.training import optim

OPT = {"learning_rate": 1e-2, "warmup_steps": 10, "total_steps": 110,
       "end_learning_rate_ratio": 0.1, "weight_decay": 0.5, "clip_norm": 0.0}


def test_schedule_warmup_then_cosine():
  lr = optim.learning_rate_schedule(optim.FIELDS | OPT)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-3)
  assert float(lr(10)) == pytest.approx(1e-2)
  t = 35  # a quarter into the decay
  cosine = 0.5 * (1 + np.cos(np.pi * 25 / 100))
  assert float(lr(t)) == pytest.approx(1e-3 + (1e-2 - 1e-3) * cosine, rel=1e-5)
  assert float(lr(110)) == pytest.approx(1e-3)


def test_weight_decay_only_on_matrices():
  tx = optim.make_optimizer(OPT)
  params = {"kernel": jnp.ones((2, 3)), "scale": jnp.ones((3,))}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(11):  # to the end of warmup, where lr = 1e-2
    updates, state = tx.update(zeros, state, params)
  np.testing.assert_allclose(updates["kernel"], -1e-2 * 0.5 * np.ones((2, 3)), rtol=1e-5)
  np.testing.assert_array_equal(updates["scale"], np.zeros(3))


def test_gradients_are_clipped_before_adam():
  """Adam's first moment after one step is (1 - b1) times the clipped gradient."""
  tx = optim.make_optimizer(OPT | {"clip_norm": 1.0, "b1": 0.9})
  params = {"w": jnp.ones(2)}
  _, state = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  mu = state.inner_state[1][0].mu["w"]  # skip_nonfinite -> chain(clip, adamw) -> scale_by_adam
  np.testing.assert_allclose(np.asarray(mu), 0.1 * np.array([0.6, 0.8]), rtol=1e-6)


def test_nonfinite_gradients_skip_the_update_and_count():
  tx = optim.make_optimizer(OPT | {"max_nonfinite_steps": 3})
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  before = state.inner_state
  # A NaN, then a finite gradient whose squared norm overflows float32.
  for streak, bad in [(1, jnp.array([[jnp.nan, 1.0], [1.0, 1.0]])), (2, jnp.full((2, 2), 1e30))]:
    updates, state = tx.update({"w": bad}, state, params)
    assert (np.asarray(updates["w"]) == 0).all()
    assert int(optim.nonfinite_streak(state)) == streak
    jax.tree.map(np.testing.assert_array_equal, state.inner_state, before)  # Adam's moments, count
  updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  assert int(optim.nonfinite_streak(state)) == 0 and int(optim.nonfinite_total(state)) == 2


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match=r"unknown optimizer field\(s\) \['lr'\]; valid"):
    optim.make_optimizer({"lr": 1.0})
  with pytest.raises(ValueError, match="learning_rate must be positive"):
    optim.make_optimizer({"learning_rate": 0.0})
  with pytest.raises(ValueError, match=r"optimizer.learning_rate=nan; expected a finite number"):
    optim.make_optimizer({"learning_rate": float("nan")})


@pytest.mark.parametrize("case", ["nan_update", "overflowing_parameters"])
def test_finite_gradients_with_a_nonfinite_result_skip_the_update(case):
  """The gradient is finite, but the update (a NaN step size) or the parameters it gives (a
  finite update that overflows float32) are not: dropped like a non-finite gradient."""
  inner = optax.scale(float("nan") if case == "nan_update" else 3e38)
  tx = optim.skip_nonfinite(inner)
  params = {"w": jnp.full((2,), 2e38, jnp.float32)}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  new = np.asarray(params["w"] + updates["w"])
  assert np.isfinite(new).all() and (np.asarray(updates["w"]) == 0).all()
  assert int(optim.nonfinite_streak(state)) == 1
  # A finite, harmless update on the same parameters is applied.
  tx = optim.skip_nonfinite(optax.scale(-1e37))
  updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -1e37)
  assert int(optim.nonfinite_streak(state)) == 0
