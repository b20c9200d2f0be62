"""Token draws against analytic distributions written independently in numpy (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from reasonjax import sampling

LOGITS = np.array([2.0, 1.5, 1.0, 0.7, 0.2, 0.0, -0.5, -1.0, -2.0, -3.0])
DRAWS = 40_000


def reference_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
  """The target distribution, step by step in float64 with plain sorting."""
  p = np.exp(logits / temperature - np.max(logits / temperature))
  p /= p.sum()
  if top_k:
    keep = np.zeros_like(p, bool)
    keep[np.argsort(-p)[:top_k]] = True
    p = np.where(keep, p, 0) / p[keep].sum()
  if top_p < 1.0:
    order = np.argsort(-p)
    keep = np.zeros_like(p, bool)
    total = 0.0
    for i in order:  # take tokens by probability until the mass reaches top_p
      keep[i] = True
      total += p[i]
      if total >= top_p:
        break
    p = np.where(keep, p, 0) / p[keep].sum()
  if min_p > 0.0:
    keep = p >= min_p * p.max()
    p = np.where(keep, p, 0) / p[keep].sum()
  return p


def draw(config):
  logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (DRAWS, LOGITS.size))
  tokens, logprobs = sampling.sample_tokens(logits, jax.random.key(7), **config)
  return np.asarray(tokens), np.asarray(logprobs)


@pytest.mark.parametrize("config", [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=1.7, top_k=3),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=0.8, top_p=0.55),
    dict(temperature=1.0, min_p=0.15),
    dict(temperature=1.3, top_k=6, top_p=0.9, min_p=0.05),
])
def test_empirical_distribution_matches_analytic(config):
  expected = reference_probs(LOGITS, **config)
  tokens, logprobs = draw(config)
  counts = np.bincount(tokens, minlength=LOGITS.size)
  assert counts[expected == 0].sum() == 0, "a truncated token was drawn"
  support = expected > 0
  if support.sum() > 1:
    stat, p_value = scipy.stats.chisquare(counts[support], DRAWS * expected[support])
    assert p_value > 1e-3, (stat, p_value, counts, expected)
  # Log-probabilities are those of the untruncated tempered distribution.
  full = LOGITS / config["temperature"]
  full = full - np.log(np.exp(full - full.max()).sum()) - full.max()
  np.testing.assert_allclose(logprobs, full[tokens], atol=1e-5)


def test_chi_square_test_can_fail():
  """The test above has power: a wrong temperature is rejected."""
  tokens, _ = draw(dict(temperature=1.0))
  counts = np.bincount(tokens, minlength=LOGITS.size)
  wrong = reference_probs(LOGITS, temperature=1.1)
  assert scipy.stats.chisquare(counts, DRAWS * wrong).pvalue < 1e-3


def test_greedy_is_argmax_with_untempered_logprob():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(5, 50)), jnp.float32)
  tokens, logprobs = sampling.sample_tokens(logits, jax.random.key(0), temperature=0.0, top_k=3)
  np.testing.assert_array_equal(np.asarray(tokens), np.argmax(np.asarray(logits), -1))
  np.testing.assert_allclose(np.asarray(logprobs),
                             np.max(np.asarray(jax.nn.log_softmax(logits)), -1), atol=1e-6)


def test_masks_keep_at_least_the_top_token():
  logits = jnp.asarray([[5.0, 1.0, 0.0, -1.0]])
  for masked in (sampling.top_p_mask(logits, 0.01), sampling.min_p_mask(logits, 0.99),
                 sampling.top_k_mask(logits, 1)):
    np.testing.assert_array_equal(np.isfinite(np.asarray(masked[0])), [True, False, False, False])
