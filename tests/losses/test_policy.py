"""GRPO-family losses against numpy float64 loops written from the papers' formulas, gradients,
and the properties that tell the variants apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reasonjax.losses import policy

RNG = np.random.default_rng(0)
B, T = 6, 9
LOGP = -RNG.random((B, T)) * 3
OLD = LOGP + RNG.normal(size=(B, T)) * 0.3  # ratios spread over both clip edges
REF = LOGP + RNG.normal(size=(B, T)) * 0.2
ENTROPY = RNG.random((B, T)) * 2
ADV = RNG.normal(size=B)
MASK = (RNG.random((B, T)) < 0.7).astype(np.float64)
MASK[:, 0] = 1  # every completion has a token
MASK[4] = 1  # one full-length completion


# ----------------------------------------------------------------------------- references


def np_advantages(rewards, g, scale, loo, eps=1e-4):
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), g):
    group = rewards[start:start + g]
    for j in range(g):
      others = [group[k] for k in range(g) if k != j]
      baseline = np.mean(others) if loo else np.mean(group)
      s = {"group": np.std(group) + eps, "batch": np.std(rewards) + eps, "none": 1.0}[scale]
      out[start + j] = (group[j] - baseline) / s
  return out


def np_policy_loss(logp, old, adv, mask, *, ref=None, entropy=None, importance="token",
                   eps_low=0.2, eps_high=0.2, dual_clip=None, beta=0.0, kl="k3",
                   entropy_coef=0.0):
  loss = np.zeros_like(logp)
  for i in range(logp.shape[0]):
    seq_log_ratio = sum((logp[i, t] - old[i, t]) * mask[i, t] for t in range(logp.shape[1]))
    seq_log_ratio /= max(mask[i].sum(), 1)
    for t in range(logp.shape[1]):
      r = np.exp(logp[i, t] - old[i, t]) if importance == "token" else np.exp(seq_log_ratio)
      o = min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
      if dual_clip is not None and adv[i] < 0:
        o = max(o, dual_clip * adv[i])
      value = -o
      if ref is not None:
        ratio_ref = np.exp(ref[i, t] - logp[i, t])  # pi_ref / pi
        k = {"k1": -np.log(ratio_ref), "k2": 0.5 * np.log(ratio_ref) ** 2,
             "k3": ratio_ref - 1 - np.log(ratio_ref)}[kl]
        value += beta * k
      if entropy is not None:
        value -= entropy_coef * entropy[i, t]
      loss[i, t] = value
  return loss


def np_aggregate(values, mask, mode, max_len):
  if mode == "grpo":
    return np.mean([(v * m).sum() / m.sum() for v, m in zip(values, mask)])
  if mode in ("bnpo", "dapo"):
    return (values * mask).sum() / mask.sum()
  return (values * mask).sum() / (len(values) * max_len)


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", policy.ADVANTAGE_SCALES)
@pytest.mark.parametrize("loo", [False, True])
def test_group_advantages_match_loops(scale, loo):
  rewards = RNG.integers(0, 2, 12).astype(np.float64) + RNG.random(12) * 0.1
  got = policy.group_advantages(jnp.asarray(rewards), 4, scale=scale, leave_one_out=loo)
  np.testing.assert_allclose(np.asarray(got), np_advantages(rewards, 4, scale, loo), rtol=1e-5,
                             atol=1e-6)


def test_group_advantages_properties():
  rewards = np.array([1.0, 1, 1, 1, 0, 1, 0, 0])
  adv = np.asarray(policy.group_advantages(rewards, 4))
  assert np.all(adv[:4] == 0)  # a group with one reward value teaches nothing
  assert adv[5] > 0 > adv[4] and adv[4:].sum() == pytest.approx(0, abs=1e-6)
  # RLOO: A_i = G / (G - 1) (R_i - mean), so it is the plain mean baseline scaled.
  loo = np.asarray(policy.group_advantages(rewards, 4, scale="none", leave_one_out=True))
  plain = np.asarray(policy.group_advantages(rewards, 4, scale="none"))
  np.testing.assert_allclose(loo, plain * 4 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="group_size=3"):
    policy.group_advantages(rewards, 3)
  with pytest.raises(ValueError, match="scale='std'"):
    policy.group_advantages(rewards, 4, scale="std")


# ----------------------------------------------------------------------------- per-token loss

SETTINGS = [
    dict(),
    dict(eps_low=0.2, eps_high=0.28),  # DAPO clip-higher
    dict(dual_clip=3.0),
    dict(importance="sequence", eps_low=3e-4, eps_high=4e-4),  # GSPO's tiny range
    dict(beta=0.04, kl="k1"),
    dict(beta=0.04, kl="k2"),
    dict(beta=0.04, kl="k3", entropy_coef=0.01),
]


def _call(logp, s, old=OLD, adv=ADV, mask=MASK):
  kwargs = dict(importance=s.get("importance", "token"), epsilon_low=s.get("eps_low", 0.2),
                epsilon_high=s.get("eps_high", 0.2), dual_clip=s.get("dual_clip"),
                beta=s.get("beta", 0.0), kl_estimator=s.get("kl", "k3"),
                entropy_coef=s.get("entropy_coef", 0.0))
  return policy.policy_loss(logp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                            ref_logp=jnp.asarray(REF) if "beta" in s else None,
                            entropy=jnp.asarray(ENTROPY) if "entropy_coef" in s else None,
                            **kwargs)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_policy_loss_matches_loops(setting):
  got, stats = _call(jnp.asarray(LOGP), setting)
  ref = np_policy_loss(LOGP, OLD, ADV, MASK, ref=REF if "beta" in setting else None,
                       entropy=ENTROPY if "entropy_coef" in setting else None, **setting)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
  if "beta" in setting:
    assert stats["kl"].shape == (B, T)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("mode", list(policy.AGGREGATIONS))
def test_aggregated_loss_and_gradients(setting, mode):
  def total(logp):
    per_token, _ = _call(logp, setting)
    return policy.aggregate(per_token, jnp.asarray(MASK), mode, max_len=T)[0]

  ref = np_policy_loss(LOGP, OLD, ADV, MASK, ref=REF if "beta" in setting else None,
                       entropy=ENTROPY if "entropy_coef" in setting else None, **setting)
  np.testing.assert_allclose(float(total(jnp.asarray(LOGP))), np_aggregate(ref, MASK, mode, T),
                             rtol=1e-5)
  with jax.enable_x64(True):
    check_grads(total, (jnp.asarray(LOGP),), order=1, modes=["rev"], eps=1e-6)


def test_clipping_stops_the_gradient_where_the_ratio_left_the_range():
  """Token ratios past the edge on the advantage's side get no gradient; the others do."""
  stats = _call(jnp.asarray(LOGP), {})[1]
  grad = jax.grad(lambda lp: jnp.sum(_call(lp, {})[0] * MASK))(jnp.asarray(LOGP))
  clipped = (np.asarray(stats["clipped_low"]) + np.asarray(stats["clipped_high"])) > 0
  assert clipped.any() and (~clipped & (MASK > 0)).any()
  assert np.all(np.asarray(grad)[clipped] == 0)
  assert np.all(np.asarray(grad)[~clipped & (MASK > 0)] != 0)


def test_on_policy_gradient_is_the_policy_gradient():
  """At old = logp (one update per rollout), the gradient of the summed per-token loss is
  -A_i on every token of completion i, for token and sequence (GSPO) ratios alike: the
  REINFORCE estimator with a group baseline."""
  for importance in policy.IMPORTANCE_LEVELS:
    grad = jax.grad(lambda lp: jnp.sum(policy.policy_loss(
        lp, jnp.asarray(LOGP), jnp.asarray(ADV), jnp.asarray(MASK),
        importance=importance)[0] * MASK))(jnp.asarray(LOGP))
    np.testing.assert_allclose(np.asarray(grad), -ADV[:, None] * MASK, rtol=1e-5, atol=1e-7)


def test_kl_estimators_agree_in_expectation():
  """Sampled from pi, k1 and k3 are unbiased estimates of KL(pi || ref); k3 is never negative."""
  logits_pi, logits_ref = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -0.5])
  p = np.exp(logits_pi) / np.exp(logits_pi).sum()
  q = np.exp(logits_ref) / np.exp(logits_ref).sum()
  exact = float((p * np.log(p / q)).sum())
  draws = np.random.default_rng(1).choice(3, size=200_000, p=p)
  logp, ref = np.log(p)[draws][None], np.log(q)[draws][None]
  for name in ("k1", "k3"):
    k = np.asarray(policy.kl_penalty(jnp.asarray(logp), jnp.asarray(ref), name))
    assert k.mean() == pytest.approx(exact, rel=0.03), name
  assert np.asarray(policy.kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k3")).min() >= 0


def test_aggregation_weights_make_accumulation_exact():
  """Two micro-batches combined with the returned weights give the one-batch loss."""
  per_token = jnp.asarray(RNG.normal(size=(B, T)))
  mask = jnp.asarray(MASK)
  for mode in ("grpo", "dapo", "dr_grpo"):
    whole = policy.aggregate(per_token, mask, mode, max_len=T)[0]
    parts = [policy.aggregate(per_token[s], mask[s], mode, max_len=T)
             for s in (slice(0, 2), slice(2, B))]
    combined = sum(l * w for l, w in parts) / sum(w for _, w in parts)
    assert float(combined) == pytest.approx(float(whole), rel=1e-6), mode
  # bnpo weighs micro-batches equally: accumulated, the mean of their token means.
  values, m = np.asarray(per_token), MASK
  parts = [policy.aggregate(per_token[s], mask[s], "bnpo") for s in (slice(0, 2), slice(2, B))]
  combined = sum(l * w for l, w in parts) / sum(w for _, w in parts)
  expected = np.mean([(values[s] * m[s]).sum() / m[s].sum() for s in (slice(0, 2), slice(2, B))])
  assert float(combined) == pytest.approx(expected, rel=1e-6)
  assert expected != pytest.approx((values * m).sum() / m.sum())  # not the whole token mean


def test_bad_settings_raise():
  args = (jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK))
  with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
    policy.policy_loss(*args, beta=0.1)
  with pytest.raises(ValueError, match="dual_clip must be > 1"):
    policy.policy_loss(*args, dual_clip=0.5)
  with pytest.raises(ValueError, match="importance='seq'"):
    policy.policy_loss(*args, importance="seq")
  with pytest.raises(ValueError, match="aggregation='mean'"):
    policy.aggregate(args[0], args[3], "mean")
