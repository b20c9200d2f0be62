"""Logits processors and the token draw: temperature, top-k, top-p (nucleus), min-p.

All functions take float32 logits [N, V] and return arrays of the same shape; a removed token
gets -inf. Truncations apply in the order top-k, top-p, min-p, each to the distribution the
previous one left (renormalised), after dividing by the temperature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def top_k_mask(logits: Array, k: int) -> Array:
  """Keeps the k largest logits per row (ties at the k-th value are kept too); k=0: all."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_mask(logits: Array, p: float) -> Array:
  """Keeps the smallest set of most likely tokens whose probability sums to >= p; p=1: all.

  A token is kept iff the probability mass strictly above it is < p, so the token that crosses
  p stays and the most likely token always does.
  """
  if p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, axis=-1)
  sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  # Smallest probability still kept: the last sorted entry whose mass above is < p.
  threshold = jnp.min(jnp.where(mass_above < p, sorted_probs, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(probs >= threshold, logits, -jnp.inf)


def min_p_mask(logits: Array, min_p: float) -> Array:
  """Keeps tokens with probability >= min_p * (largest probability); min_p=0: all."""
  if min_p <= 0.0:
    return logits
  max_logit = jnp.max(logits, axis=-1, keepdims=True)
  # p_i >= min_p * p_max  <=>  logit_i >= max_logit + log(min_p)
  return jnp.where(logits >= max_logit + jnp.log(min_p), logits, -jnp.inf)


def draw_categorical(rng: Array, logits: Array) -> Array:
  """One draw per row from softmax(logits) by inverting the CDF. logits [N, V] -> int32 [N].

  One uniform number per row instead of the V Gumbel variates of `jax.random.categorical`:
  generating those dominated a CPU decode step at vocabulary sizes of 32k and more.
  """
  cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
  # u in (0, total]: the first index with cdf >= u has positive probability.
  u = (1.0 - jax.random.uniform(rng, (logits.shape[0], 1))) * cdf[:, -1:]
  return jnp.minimum(jnp.sum(cdf < u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def sample_tokens(logits: Array, rng: Array, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> tuple[Array, Array]:
  """Draws one token per row.

  Args:
    logits: float32 [N, V].
    rng: a PRNG key.
    temperature: 0 means greedy (argmax; top-k/p and min-p are irrelevant then).

  Returns:
    tokens int32 [N] and their log-probabilities float32 [N] under softmax(logits / temperature)
    before truncation (softmax(logits) when greedy): the policy probability that an RL importance
    ratio needs.
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits
  else:
    scaled = logits / temperature
    truncated = min_p_mask(top_p_mask(top_k_mask(scaled, top_k), top_p), min_p)
    tokens = draw_categorical(rng, truncated)
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], -1)[:, 0]
  return tokens, logprobs
