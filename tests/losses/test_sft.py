"""Cross-entropy with label smoothing and z-loss, and the HRM KL-regularised loss, against numpy
float64 loops."""

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


# A reference policy near the policy, as after a few fine-tuning steps from it.
REF_LOGITS = LOGITS + RNG.normal(size=LOGITS.shape)


def softmax64(row):
  e = np.exp(row - row.max())
  return e / e.sum()


def kl_reference(w, logits=LOGITS, ref_logits=REF_LOGITS, targets=TARGETS, mask=MASK):
  """(loss, CE mean, KL mean, per-token KL [B, T], d loss / d logits [B, T, V]), float64."""
  ce_sum = kl_sum = count = 0.0
  kl_t = np.zeros(mask.shape)
  probs, ref_probs = np.zeros(logits.shape), np.zeros(logits.shape)
  for b in range(mask.shape[0]):
    for t in range(mask.shape[1]):
      if not mask[b, t]:
        continue
      p, q = softmax64(logits[b, t]), softmax64(ref_logits[b, t])
      probs[b, t], ref_probs[b, t] = p, q
      kl_t[b, t] = sum(q[v] * (np.log(q[v]) - np.log(p[v])) for v in range(len(p)))
      ce_sum += -np.log(p[targets[b, t]])
      kl_sum += kl_t[b, t]
      count += 1
  ce, kl = ce_sum / count, kl_sum / count
  # d/dz of CE_t is p - onehot(y); of KL_t it is p - q; log1p scales the KL mean by 1 / (1 + KL).
  onehot = np.eye(logits.shape[-1])[targets]
  grad = (probs - onehot + w / (1 + kl) * (probs - ref_probs)) * mask[..., None] / count
  return ce + w * np.log1p(kl), ce, kl, kl_t, grad


def kl_loss(logits, ref_logits, w, targets=TARGETS, mask=MASK):
  return sft.kl_regularized(logits, ref_logits, jnp.asarray(targets), jnp.asarray(mask),
                            kl_weight=w)


@pytest.mark.parametrize("w", [0.0, 0.1, 1.0, 10.0])
def test_kl_regularized_matches_reference(w):
  assert 0 < MASK.sum() < MASK.size  # both supervised and masked tokens
  want_loss, want_ce, want_kl, want_kl_t, want_grad = kl_reference(w)
  with jax.enable_x64(True):
    logits, ref = jnp.asarray(LOGITS), jnp.asarray(REF_LOGITS)
    (loss, metrics), grad = jax.value_and_grad(kl_loss, has_aux=True)(logits, ref, w)
    kl_t = sft.reference_kl(logits, ref, jnp.asarray(MASK))
  np.testing.assert_allclose(np.asarray(kl_t), want_kl_t, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-10)
  np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-10)
  np.testing.assert_allclose(float(metrics["cross_entropy"]), want_ce, rtol=1e-10)
  np.testing.assert_allclose(float(metrics["kl"]), want_kl, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-8, atol=1e-12)
  assert want_kl > 0.1  # the KL term is not vanishing, so w has an effect
  if w == 0.0:  # then the loss is the token-mean cross-entropy the SFT step uses
    with jax.enable_x64(True):
      ce = sft.cross_entropy(logits, jnp.asarray(TARGETS), jnp.asarray(MASK))
    np.testing.assert_allclose(float(loss), np.asarray(ce).sum() / MASK.sum(), rtol=1e-12)


def test_float32_computation_for_bfloat16_inputs():
  loss, metrics = kl_loss(jnp.asarray(LOGITS, jnp.bfloat16), jnp.asarray(REF_LOGITS, jnp.bfloat16),
                          1.0)
  assert loss.dtype == metrics["kl"].dtype == jnp.float32
  rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (LOGITS, REF_LOGITS)]
  np.testing.assert_allclose(float(loss), kl_reference(1.0, *rounded)[0], rtol=1e-5)


def test_masked_tokens_change_nothing():
  masked = MASK == 0
  huge = RNG.normal(size=LOGITS.shape) * 1e30  # finite in float32, overflows any exp
  logits = np.where(masked[..., None], huge, LOGITS).astype(np.float32)
  ref = np.where(masked[..., None], -huge, REF_LOGITS).astype(np.float32)
  targets = np.where(masked, (TARGETS + 1) % 9, TARGETS)
  grad_fn = jax.value_and_grad(kl_loss, has_aux=True)
  (loss, metrics), grad = grad_fn(jnp.asarray(logits), jnp.asarray(ref), 1.0, targets)
  (want, want_metrics), want_grad = grad_fn(jnp.asarray(LOGITS, jnp.float32),
                                            jnp.asarray(REF_LOGITS, jnp.float32), 1.0)
  assert float(loss) == float(want)
  assert all(float(metrics[k]) == float(want_metrics[k]) for k in want_metrics)
  g = np.asarray(grad)
  assert (g[masked] == 0).all() and (np.abs(g[~masked]).sum(-1) > 0).all()
  np.testing.assert_array_equal(g, np.asarray(want_grad))


def test_kl_is_zero_when_policy_is_reference():
  logits = jnp.asarray(LOGITS * 3, jnp.float32)
  kl_t = sft.reference_kl(logits, logits, jnp.ones(MASK.shape))
  np.testing.assert_allclose(np.asarray(kl_t), 0.0, atol=1e-5)
  loss, metrics = kl_loss(logits, logits, 5.0)
  np.testing.assert_allclose(float(metrics["kl"]), 0.0, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(metrics["cross_entropy"]), atol=5e-5)
  # A shift of all logits at a token is the same distribution, so still no KL.
  shifted = sft.reference_kl(logits, logits + 7.0, jnp.ones(MASK.shape))
  np.testing.assert_allclose(np.asarray(shifted), 0.0, atol=1e-5)


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_kl_regularized_gradients(w):
  with jax.enable_x64(True):
    ref = jnp.asarray(REF_LOGITS)
    check_grads(lambda x: kl_loss(x, ref, w)[0], (jnp.asarray(LOGITS),), order=2,
                modes=["rev"])


def test_no_gradient_to_reference():
  with jax.enable_x64(True):
    logits, ref = jnp.asarray(LOGITS), jnp.asarray(REF_LOGITS)
    grad = jax.grad(lambda r: kl_loss(logits, r, 1.0)[0])(ref)
    assert (np.asarray(grad) == 0).all()
    # Without the stop_gradient the reference would get a gradient: the loss does depend on it.
    b, t = np.argwhere(MASK)[0]
    bumped = ref.at[b, t, 0].add(1e-3)
    assert abs(float(kl_loss(logits, bumped, 1.0)[0] - kl_loss(logits, ref, 1.0)[0])) > 1e-6
