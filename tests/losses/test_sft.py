"""Cross-entropy with label smoothing and z-loss against a numpy float64 loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reasonjax.losses import sft

RNG = np.random.default_rng(1)
LOGITS = RNG.normal(size=(2, 6, 9)) * 2
TARGETS = RNG.integers(0, 9, (2, 6))
MASK = (RNG.random((2, 6)) < 0.7).astype(np.float64)


def reference(eps, z):
  out = np.zeros((2, 6))
  for b in range(2):
    for t in range(6):
      logits = LOGITS[b, t]
      log_z = np.log(np.sum(np.exp(logits)))
      logp = logits - log_z
      target = np.full(9, eps / 9)
      target[TARGETS[b, t]] += 1 - eps
      out[b, t] = (-(target * logp).sum() + z * log_z**2) * MASK[b, t]
  return out


@pytest.mark.parametrize("eps, z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-3), (0.2, 1e-2)])
def test_matches_reference(eps, z):
  got = sft.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.asarray(MASK),
                          label_smoothing=eps, z_loss=z)
  np.testing.assert_allclose(np.asarray(got), reference(eps, z), rtol=1e-5, atol=1e-6)
  with jax.enable_x64(True):
    check_grads(lambda x: sft.cross_entropy(x, jnp.asarray(TARGETS), jnp.asarray(MASK),
                                            label_smoothing=eps, z_loss=z),
                (jnp.asarray(LOGITS),), order=1, modes=["rev"])


def test_masked_tokens_have_no_gradient():
  grad = jax.grad(lambda x: sft.cross_entropy(x, jnp.asarray(TARGETS), jnp.asarray(MASK)).sum())
  g = np.asarray(grad(jnp.asarray(LOGITS, jnp.float32)))
  assert (g[MASK == 0] == 0).all() and (np.abs(g[MASK == 1]).sum(-1) > 0).all()
