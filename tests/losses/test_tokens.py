"""Masked reductions and token log-probabilities against numpy float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reasonjax.losses import tokens

RNG = np.random.default_rng(0)
VALUES = RNG.normal(size=(4, 7))
MASK = (RNG.random((4, 7)) < 0.6).astype(np.float64)
MASK[2] = 0  # a sequence without tokens


def reference(values, mask, mode, max_len=None):
  if mode == "token_mean":
    return (values * mask).sum() / max(mask.sum(), 1)
  if mode == "sequence_mean":
    means = [(v * m).sum() / m.sum() for v, m in zip(values, mask) if m.sum() > 0]
    return sum(means) / len(means)
  if mode == "constant_length":
    return (values * mask).sum() / (len(values) * max_len)
  return (values * mask).sum()


@pytest.mark.parametrize("mode", tokens.REDUCTIONS)
def test_reductions_match_loops(mode):
  got = tokens.reduce(jnp.asarray(VALUES), jnp.asarray(MASK), mode, max_len=10)
  np.testing.assert_allclose(float(got), reference(VALUES, MASK, mode, 10), rtol=1e-6)
  with jax.enable_x64(True):
    check_grads(lambda v: tokens.reduce(v, jnp.asarray(MASK), mode, max_len=10),
                (jnp.asarray(VALUES),), order=1, modes=["rev"])


def test_reductions_weigh_differently():
  """GRPO's sequence mean favours short sequences' tokens; DAPO's token mean does not."""
  values = np.array([[1.0, 0, 0, 0], [0.0, 0, 0, 0]])
  mask = np.array([[1.0, 0, 0, 0], [1.0, 1, 1, 1]])
  assert float(tokens.reduce(values, mask, "sequence_mean")) == pytest.approx(0.5)
  assert float(tokens.reduce(values, mask, "token_mean")) == pytest.approx(0.2)
  assert float(tokens.reduce(values, mask, "constant_length", max_len=4)) == pytest.approx(1 / 8)
  with pytest.raises(ValueError, match="needs max_len"):
    tokens.reduce(values, mask, "constant_length")
  with pytest.raises(ValueError, match=r"unknown reduction 'mean'; valid"):
    tokens.reduce(values, mask, "mean")


def test_token_and_sequence_logprobs():
  logits = RNG.normal(size=(3, 5, 11)) * 3
  targets = RNG.integers(0, 11, (3, 5))
  mask = (RNG.random((3, 5)) < 0.7).astype(np.float64)
  ref = np.zeros((3, 5))
  for b in range(3):
    for t in range(5):
      z = logits[b, t]
      ref[b, t] = z[targets[b, t]] - np.log(np.exp(z - z.max()).sum()) - z.max()
  np.testing.assert_allclose(np.asarray(tokens.token_logprobs(logits, targets)), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(tokens.sequence_logprobs(logits, targets, mask)),
                             (ref * mask).sum(-1), atol=1e-5)


def test_token_entropy():
  logits = RNG.normal(size=(2, 3, 7)) * 4
  ref = np.zeros((2, 3))
  for b in range(2):
    for t in range(3):
      p = np.exp(logits[b, t] - logits[b, t].max())
      p /= p.sum()
      ref[b, t] = -(p * np.log(p)).sum()
  np.testing.assert_allclose(np.asarray(tokens.token_entropy(logits)), ref, atol=1e-5)
  one_hot = np.full((1, 1, 5), -1e4)
  one_hot[..., 2] = 0.0  # a certain distribution has no entropy; a uniform one log(V)
  assert float(tokens.token_entropy(one_hot)[0, 0]) == pytest.approx(0.0, abs=1e-6)
  assert float(tokens.token_entropy(np.zeros((1, 1, 5)))[0, 0]) == pytest.approx(np.log(5))
