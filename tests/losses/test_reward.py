"""Reward-model losses against numpy float64 loops; masks, packing, HRM units, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reasonjax.data import step_labels
from reasonjax.losses import reward, tokens

RNG = np.random.default_rng(0)
B, T = 5, 12
# Rows: one padded sequence; three packed segments; all padding; one full sequence (given no
# steps below); two packed segments filling the row.
SEGMENT_IDS = np.array([
    [1] * 9 + [0] * 3,
    [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0],
    [0] * 12,
    [1] * 12,
    [1, 1, 1] + [2] * 9,
])
SCORES = RNG.normal(size=(B, T)) * 3
STEP_MASK = ((RNG.random((B, T)) < 0.4) & (SEGMENT_IDS != 0)).astype(np.float64)
STEP_MASK[3] = 0.0
# Hard labels in the first two rows, Monte-Carlo estimates in the others; junk off the mask,
# which must be ignored.
STEP_LABELS = RNG.random((B, T))
STEP_LABELS[:2] = np.round(STEP_LABELS[:2])
STEP_LABELS = np.where(STEP_MASK == 1, STEP_LABELS, RNG.normal(size=(B, T)) * 5)


def ref_last_token_mask(segment_ids):
  """For each segment id of a row, the largest index holding it."""
  out = np.zeros(segment_ids.shape)
  for b, row in enumerate(segment_ids):
    for s in set(row.tolist()) - {0}:
      out[b, max(t for t in range(len(row)) if row[t] == s)] = 1.0
  return out


def ref_pointwise(x, mask, y, kind):
  out = np.zeros(x.shape)
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      if mask[b, t] == 0:
        continue
      p = 1.0 / (1.0 + np.exp(-x[b, t]))
      if kind == "bce":
        out[b, t] = -(y[b, t] * np.log(p) + (1.0 - y[b, t]) * np.log(1.0 - p))
      else:
        out[b, t] = (p - y[b, t]) ** 2
  return out


def ref_bradley_terry(w, l, margin):
  return np.array([-np.log(1.0 / (1.0 + np.exp(-(w[i] - l[i] - margin[i]))))
                   for i in range(len(w))])


def outcome_batch():
  """last-token mask and a 0/1 outcome per segment, written at its last token."""
  last = ref_last_token_mask(SEGMENT_IDS)
  return last, np.where(last == 1, RNG.integers(0, 2, (B, T)), 7.0)


def test_last_token_mask_marks_each_segment_end():
  got = np.asarray(reward.last_token_mask(jnp.asarray(SEGMENT_IDS)))
  np.testing.assert_array_equal(got, ref_last_token_mask(SEGMENT_IDS))
  assert got.sum() == 1 + 3 + 0 + 1 + 2
  several = RNG.integers(0, 4, (6, 20))  # Ids may repeat in a row here; only runs matter.
  runs = np.zeros(several.shape)
  for b in range(6):
    for t in range(20):
      runs[b, t] = several[b, t] != 0 and (t == 19 or several[b, t + 1] != several[b, t])
  np.testing.assert_array_equal(np.asarray(reward.last_token_mask(jnp.asarray(several))), runs)


@pytest.mark.parametrize("kind", reward.LABEL_KINDS)
def test_prm_and_hrm_match_reference(kind):
  want = ref_pointwise(SCORES, STEP_MASK, STEP_LABELS, kind)
  for loss in (reward.prm, reward.hrm):
    got = loss(jnp.asarray(SCORES), jnp.asarray(STEP_MASK), jnp.asarray(STEP_LABELS), kind=kind)
    assert got.shape == (B, T)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert (want[3] == 0).all() and (want[2] == 0).all()
  jitted = jax.jit(reward.prm, static_argnames="kind")
  np.testing.assert_allclose(
      np.asarray(jitted(SCORES, STEP_MASK, STEP_LABELS, kind=kind)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", reward.LABEL_KINDS)
def test_orm_matches_reference_on_packed_rows(kind):
  last, labels = outcome_batch()
  mask = reward.last_token_mask(jnp.asarray(SEGMENT_IDS))
  got = np.asarray(reward.orm(jnp.asarray(SCORES), mask, jnp.asarray(labels), kind=kind))
  want = ref_pointwise(SCORES, last, labels, kind)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Reduced with its own mask: the mean over the 7 sequences of the batch.
  per_sequence = [want[b, t] for b in range(B) for t in range(T) if last[b, t]]
  np.testing.assert_allclose(float(tokens.reduce(jnp.asarray(got), mask, "token_mean")),
                             np.mean(per_sequence), rtol=1e-5)


def test_orm_per_sequence_for_unpacked_rows():
  segment_ids = (np.arange(T)[None] < np.array([[5], [12], [1]])).astype(np.int32)
  y = np.array([1.0, 0.0, 1.0])
  last = reward.last_token_mask(jnp.asarray(segment_ids))
  loss = reward.orm(jnp.asarray(SCORES[:3]), last, jnp.asarray(y)[:, None] * last).sum(-1)
  x = SCORES[:3][np.arange(3), [4, 11, 0]]
  np.testing.assert_allclose(np.asarray(loss), -y * np.log(1 / (1 + np.exp(-x)))
                             - (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))), rtol=1e-5)


@pytest.mark.parametrize("kind", reward.LABEL_KINDS)
def test_hrm_on_a_batch_built_from_units(kind):
  """Each unit of the HRM renderings as a packed segment of 1-3 tokens: the loss is the sum
  over units."""
  solutions = [[1.0, 0.0, 1.0, 1.0], [0.25, 0.75], [0.5]]
  unit_labels = [y for labels in solutions
                 for _, ys in step_labels.hierarchical_units(list("abcd"[:len(labels)]), labels)
                 for y in ys]
  mask, labels, ends = np.zeros((3, 16)), np.zeros((3, 16)), []
  row, t = 0, 0
  for label in unit_labels:
    length = int(RNG.integers(1, 4))
    if t + length > 16:
      row, t = row + 1, 0
    t += length
    mask[row, t - 1], labels[row, t - 1] = 1.0, label
    ends.append((row, t - 1, label))
  scores = RNG.normal(size=(3, 16)) * 3
  got = reward.hrm(jnp.asarray(scores), jnp.asarray(mask), jnp.asarray(labels), kind=kind)
  want = sum(ref_pointwise(np.array([[scores[r, t]]]), np.ones((1, 1)), np.array([[y]]), kind)
             for r, t, y in ends)
  assert len(ends) == (4 + 2 + 3) + (2 + 1) + 1  # singles, pairs from step 0, from step 1
  np.testing.assert_allclose(float(got.sum()), float(want.sum()), rtol=1e-5)


def test_bradley_terry_matches_reference():
  w, l = RNG.normal(size=8) * 3, RNG.normal(size=8) * 3
  for margin in (0.0, 0.5, RNG.random(8)):
    got = reward.bradley_terry(jnp.asarray(w), jnp.asarray(l), margin=margin)
    np.testing.assert_allclose(np.asarray(got), ref_bradley_terry(w, l, np.broadcast_to(
        margin, 8)), rtol=1e-5, atol=1e-6)
  # -log s(d) + log s(-d) = -d.
  swap = reward.bradley_terry(jnp.asarray(w), jnp.asarray(l)) - reward.bradley_terry(
      jnp.asarray(l), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(swap), -(w - l), rtol=1e-5, atol=1e-5)
  extreme = reward.bradley_terry(jnp.array([100.0, -100.0]), jnp.array([-100.0, 100.0]))
  np.testing.assert_allclose(np.asarray(extreme), [0.0, 200.0], atol=1e-6)


def test_gradients():
  last, labels = outcome_batch()
  with jax.enable_x64(True):
    x = jnp.asarray(SCORES)
    for kind in reward.LABEL_KINDS:
      for loss in (reward.prm, reward.hrm):
        check_grads(lambda s: loss(s, jnp.asarray(STEP_MASK), jnp.asarray(STEP_LABELS),
                                   kind=kind), (x,), order=1, modes=["rev"])
      check_grads(lambda s: reward.orm(s, jnp.asarray(last), jnp.asarray(labels), kind=kind),
                  (x,), order=1, modes=["rev"])
    check_grads(lambda w, l: reward.bradley_terry(w, l, margin=0.3),
                (x[:, 0], x[:, 1]), order=1, modes=["rev"])


@pytest.mark.parametrize("kind", reward.LABEL_KINDS)
def test_soft_label_one_half_is_minimised_at_zero(kind):
  mask, half = jnp.ones((1, 3)), jnp.full((1, 3), 0.5)
  value, grad = jax.value_and_grad(lambda s: reward.prm(s, mask, half, kind=kind).sum())(
      jnp.zeros((1, 3)))
  assert (np.asarray(grad) == 0).all()
  for shift in (-0.1, 0.1):
    assert reward.prm(jnp.full((1, 3), shift), mask, half, kind=kind).sum() > value
  if kind == "bce":
    np.testing.assert_allclose(float(value), 3 * np.log(2.0), rtol=1e-6)


def test_bce_gradient_is_sigmoid_minus_label():
  grad = jax.grad(lambda s: reward.prm(s, jnp.asarray(STEP_MASK), jnp.asarray(STEP_LABELS)).sum())
  g = np.asarray(grad(jnp.asarray(SCORES, jnp.float32)))
  want = (1 / (1 + np.exp(-SCORES)) - STEP_LABELS) * STEP_MASK
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_mse_with_hard_labels_is_squared_sigmoid_error():
  y = RNG.integers(0, 2, (B, T)).astype(np.float64)
  got = reward.prm(jnp.asarray(SCORES), jnp.ones((B, T)), jnp.asarray(y), kind="mse")
  np.testing.assert_allclose(np.asarray(got), (1 / (1 + np.exp(-SCORES)) - y) ** 2,
                             rtol=1e-5, atol=1e-7)


def test_bce_is_stable_for_large_scores():
  x, y = jnp.array([[100.0, 100.0, -100.0, -100.0]]), jnp.array([[0.0, 1.0, 1.0, 0.0]])
  got = np.asarray(reward.prm(x, jnp.ones((1, 4)), y))
  np.testing.assert_allclose(got, [[100.0, 0.0, 100.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("loss", [reward.orm, reward.prm, reward.hrm])
@pytest.mark.parametrize("kind", reward.LABEL_KINDS)
def test_masked_positions_give_exactly_zero_loss_and_gradient(loss, kind):
  # Off the mask: any scores (inf, or nan from padding that attends to nothing) and labels
  # that are not labels.
  off = STEP_MASK == 0
  scores = np.where(off, RNG.choice([np.nan, np.inf, -np.inf, 1e30, 0.0], (B, T)), SCORES)
  labels = np.where(off, np.nan, STEP_LABELS)
  fn = lambda s: loss(s, jnp.asarray(STEP_MASK), jnp.asarray(labels), kind=kind)  # noqa: E731
  value, vjp = jax.vjp(fn, jnp.asarray(scores, jnp.float32))
  (grad,) = vjp(jnp.ones((B, T)))
  value, grad = np.asarray(value), np.asarray(grad)
  assert (value[off] == 0).all() and (grad[off] == 0).all()
  assert np.isfinite(value).all() and np.isfinite(grad).all()
  assert (grad[~off] != 0).all()


@pytest.mark.parametrize("loss", [reward.orm, reward.prm, reward.hrm])
def test_bad_kind_and_shapes_raise(loss):
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"'hinge'.*bce.*mse"):
    loss(x, x, x, kind="hinge")
  with pytest.raises(ValueError, match="one shape"):
    loss(x, x, jnp.zeros((2,)))


def test_losses_by_name():
  assert reward.LOSSES == {"orm": reward.orm, "prm": reward.prm, "hrm": reward.hrm,
                           "bradley_terry": reward.bradley_terry}
