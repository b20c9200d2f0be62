"""continuation_logits: both computations against one plain forward per row, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax import models
from reasonjax.losses import tokens

CFG = models.preset("tiny", num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                    num_kv_heads=2, head_dim=16, vocab_size=97, initializer_range=0.2)
N, C = 3, 5


def _data():
  rng = np.random.default_rng(0)
  lengths = np.array([3, 6], np.int32)
  # Non-zero junk after each prefix's end: it must not leak into any logit.
  prefix = rng.integers(1, CFG.vocab_size, (2, 6)).astype(np.int32)
  continuations = rng.integers(1, CFG.vocab_size, (2 * N, C)).astype(np.int32)
  return prefix, lengths, continuations


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_logits_equal_a_forward_of_each_row(scan_layers, share_prefix):
  cfg = CFG.replace(scan_layers=scan_layers)
  model = models.Model(cfg)
  params = models.init_params(cfg, jax.random.key(0))
  prefix, lengths, continuations = _data()
  got = jax.jit(lambda p: models.continuation_logits(
      model, p, prefix, lengths, continuations, share_prefix=share_prefix))(params)
  assert got.shape == (2 * N, C, CFG.vocab_size) and got.dtype == jnp.float32
  for i in range(2 * N):
    length = lengths[i // N]
    row = np.concatenate([prefix[i // N, :length], continuations[i]])[None]
    full = np.asarray(model.apply({"params": params}, jnp.asarray(row)))[0]
    # The logits at position length - 1 + t predict continuation token t.
    np.testing.assert_allclose(got[i], full[length - 1:length - 1 + C], atol=2e-5, rtol=1e-5,
                               err_msg=f"row {i}")


def test_both_computations_have_the_same_gradient():
  model = models.Model(CFG)
  params = models.init_params(CFG, jax.random.key(1))
  prefix, lengths, continuations = _data()
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2 * N, C)), jnp.float32)

  def objective(p, share):
    logits = models.continuation_logits(model, p, prefix, lengths, continuations,
                                        share_prefix=share)
    return jnp.sum(weights * tokens.token_logprobs(logits, continuations))

  gradient = jax.jit(jax.grad(objective), static_argnums=1)
  shared, per_row = gradient(params, True), gradient(params, False)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(shared), jax.tree.leaves(per_row)):
    assert float(jnp.abs(a).max()) > 0, path  # every parameter takes part
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=str(path))


def test_rows_must_be_whole_groups():
  prefix, lengths, continuations = _data()
  with pytest.raises(ValueError, match="5 rows, not a multiple of the 2 prefixes"):
    models.continuation_logits(models.Model(CFG), models.init_params(CFG, jax.random.key(0)),
                               prefix, lengths, continuations[:5])
