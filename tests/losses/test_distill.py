"""losses/distill.py against a numpy float64 reference, with gradients by finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reasonjax.losses import distill, sft


def _np_jsd(student, teacher, mask, beta, temperature):
  """Written from the definitions, in float64, token by token."""
  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()

  def kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))

  out = np.zeros(mask.shape)
  for b in range(mask.shape[0]):
    for t in range(mask.shape[1]):
      s = softmax(student[b, t] / temperature)
      q = softmax(teacher[b, t] / temperature)
      if beta == 0:
        value = kl(q, s)
      elif beta == 1:
        value = kl(s, q)
      else:
        m = beta * q + (1 - beta) * s
        value = beta * kl(q, m) + (1 - beta) * kl(s, m)
      out[b, t] = value * mask[b, t]
  return out


def _inputs(seed=0, shape=(2, 3, 7)):
  rng = np.random.default_rng(seed)
  student = rng.normal(size=shape) * 2
  teacher = rng.normal(size=shape) * 2
  mask = (rng.random(shape[:2]) < 0.7).astype(np.float64)
  return student, teacher, mask


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_against_numpy(beta, temperature):
  student, teacher, mask = _inputs()
  got = distill.generalized_jsd(jnp.asarray(student, jnp.float32),
                                jnp.asarray(teacher, jnp.float32), jnp.asarray(mask),
                                beta=beta, temperature=temperature)
  want = _np_jsd(student, teacher, mask, beta, temperature)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
  assert np.all(want >= 0) and np.any(want > 0)


def test_the_ends_are_the_two_kls_and_jsd_half_is_symmetric():
  student, teacher, mask = (jnp.asarray(x, jnp.float32) for x in _inputs(1))
  # beta = 0 is sft.reference_kl with the teacher as the reference, computed another way.
  np.testing.assert_allclose(distill.generalized_jsd(student, teacher, mask, beta=0.0),
                             sft.reference_kl(student, teacher, mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(distill.generalized_jsd(student, teacher, mask, beta=1.0),
                             sft.reference_kl(teacher, student, mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(distill.generalized_jsd(student, teacher, mask, beta=0.5),
                             distill.generalized_jsd(teacher, student, mask, beta=0.5),
                             rtol=1e-5, atol=1e-6)
  # Equal distributions: zero at every beta.
  for beta in (0.0, 0.3, 1.0):
    np.testing.assert_allclose(distill.generalized_jsd(student, student, mask, beta=beta), 0.0,
                               atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradients_flow_to_the_student_only(beta):
  with jax.enable_x64(True):
    student, teacher, mask = (jnp.asarray(x, jnp.float64) for x in _inputs(2, (1, 2, 5)))
    f = lambda s: jnp.sum(distill.generalized_jsd(s, teacher, mask, beta=beta,  # noqa: E731
                                                  temperature=1.5))
    check_grads(f, (student,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
    g = jax.grad(lambda t: jnp.sum(distill.generalized_jsd(student, t, mask, beta=beta)))(
        teacher)
  assert np.all(np.asarray(g) == 0)


def test_a_teacher_token_of_zero_mass_stays_finite():
  """log M by logsumexp: a token the teacher rules out (logit -1e9) gives no NaN."""
  student = jnp.zeros((1, 1, 4))
  teacher = jnp.asarray([[[0.0, 1.0, -1e9, 2.0]]])
  value, grad = jax.value_and_grad(
      lambda s: jnp.sum(distill.generalized_jsd(s, teacher, jnp.ones((1, 1)), beta=0.5)))(
          student)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("kwargs", [{"beta": -0.1}, {"beta": 1.5}, {"temperature": 0.0}])
def test_bad_settings_raise(kwargs):
  x = jnp.zeros((1, 1, 3))
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    distill.generalized_jsd(x, x, jnp.ones((1, 1)), **kwargs)
