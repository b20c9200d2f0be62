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


def np_std(values, ddof):
  values = np.asarray(values, np.float64)
  return np.sqrt(sum((v - values.mean()) ** 2 for v in values) / (len(values) - ddof))


def np_advantages(rewards, g, scale, loo, eps=1e-4, ddof=0):
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), g):
    group = rewards[start:start + g]
    for j in range(g):
      others = [group[k] for k in range(g) if k != j]
      baseline = np.mean(others) if loo else np.mean(group)
      s = {"group": np_std(group, ddof) + eps, "batch": np_std(rewards, ddof) + eps,
           "none": 1.0}[scale]
      out[start + j] = (group[j] - baseline) / s
  return out


def np_policy_loss(logp, old, adv, mask, *, ref=None, entropy=None, importance="token",
                   surrogate="ppo", eps_low=0.2, eps_high=0.2, dual_clip=None, beta=0.0,
                   kl="k3", kl_iw=False, entropy_coef=0.0, tau_pos=1.0, tau_neg=1.05):
  loss = np.zeros_like(logp)
  for i in range(logp.shape[0]):
    seq_log_ratio = sum((logp[i, t] - old[i, t]) * mask[i, t] for t in range(logp.shape[1]))
    seq_log_ratio /= max(mask[i].sum(), 1)
    for t in range(logp.shape[1]):
      r = np.exp(logp[i, t] - old[i, t]) if importance == "token" else np.exp(seq_log_ratio)
      if surrogate == "ppo":  # min(r A, clip(r) A), then the dual clip
        o = min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
        if dual_clip is not None and adv[i] < 0:
          o = max(o, dual_clip * adv[i])
      elif surrogate == "cispo":  # MiniMax-M1: clip(r) A log pi, the weight a constant
        o = min(max(r, 1 - eps_low), 1 + eps_high) * adv[i] * logp[i, t]
      else:  # SAPO: (4 / tau) sigmoid(tau (r - 1)) A
        tau = tau_pos if adv[i] > 0 else tau_neg
        o = 4.0 / tau / (1.0 + np.exp(-tau * (r - 1.0))) * adv[i]
      value = -o
      if ref is not None:
        ratio_ref = np.exp(ref[i, t] - logp[i, t])  # pi_ref / pi
        k = {"k1": -np.log(ratio_ref), "k2": 0.5 * np.log(ratio_ref) ** 2,
             "k3": ratio_ref - 1 - np.log(ratio_ref)}[kl]
        value += beta * k * (r if kl_iw else 1.0)
      if entropy is not None:
        value -= entropy_coef * entropy[i, t]
      loss[i, t] = value
  return loss


def np_aggregate(values, mask, mode, max_len):
  if mode == "grpo":  # completions without tokens are left out
    return np.mean([(v * m).sum() / m.sum() for v, m in zip(values, mask) if m.sum()])
  if mode in ("bnpo", "dapo"):
    return (values * mask).sum() / mask.sum()
  if mode == "luspo":  # 1/G sum_i |y_i| (token mean of i) (Liu et al. 2026)
    return np.mean([m.sum() * ((v * m).sum() / max(m.sum(), 1)) for v, m in zip(values, mask)])
  return (values * mask).sum() / (len(values) * max_len)


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", policy.ADVANTAGE_SCALES)
@pytest.mark.parametrize("loo", [False, True])
@pytest.mark.parametrize("ddof", policy.STD_DDOF)
def test_group_advantages_match_loops(scale, loo, ddof):
  rewards = RNG.integers(0, 2, 12).astype(np.float64) + RNG.random(12) * 0.1
  got = policy.group_advantages(jnp.asarray(rewards), 4, scale=scale, leave_one_out=loo,
                                ddof=ddof)
  np.testing.assert_allclose(np.asarray(got), np_advantages(rewards, 4, scale, loo, ddof=ddof),
                             rtol=1e-5, atol=1e-6)


def test_bessel_correction_is_numpys_ddof_1():
  """ddof=1 divides by numpy's std(ddof=1) (TRL's torch.std); the default stays the population
  std, and the two differ by sqrt(G / (G - 1)) exactly."""
  rewards = RNG.random(15)
  with jax.enable_x64(True):
    default = np.asarray(policy.group_advantages(jnp.asarray(rewards), 5, eps=0.0))
    bessel = np.asarray(policy.group_advantages(jnp.asarray(rewards), 5, ddof=1, eps=0.0))
    batch = np.asarray(policy.group_advantages(jnp.asarray(rewards), 5, scale="batch", ddof=1,
                                               eps=0.0))
  groups = rewards.reshape(3, 5)
  centred = groups - groups.mean(1, keepdims=True)
  np.testing.assert_allclose(bessel, (centred / groups.std(1, ddof=1, keepdims=True)).ravel(),
                             rtol=1e-12)
  np.testing.assert_allclose(default, (centred / groups.std(1, keepdims=True)).ravel(),
                             rtol=1e-12)
  np.testing.assert_allclose(default, bessel * np.sqrt(5 / 4), rtol=1e-12)
  np.testing.assert_allclose(batch, centred.ravel() / rewards.std(ddof=1), rtol=1e-12)
  with pytest.raises(ValueError, match="ddof=1 needs two rewards"):
    policy.group_advantages(rewards, 1, ddof=1)
  with pytest.raises(ValueError, match="ddof=2 is not valid"):
    policy.group_advantages(rewards, 5, ddof=2)


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
    dict(surrogate="cispo", eps_low=1.0, eps_high=0.2),  # MiniMax-M1: no lower bound
    dict(surrogate="cispo", eps_low=0.2, eps_high=0.28, beta=0.04, kl="k3"),
    dict(surrogate="cispo", importance="sequence", eps_low=0.1, eps_high=0.1),
    dict(surrogate="sapo"),  # the paper's temperatures
    dict(surrogate="sapo", tau_pos=0.5, tau_neg=3.0, beta=0.04, kl="k2"),
    dict(surrogate="sapo", importance="sequence", tau_pos=2.0, tau_neg=1.0),
    dict(beta=0.04, kl="k3", kl_iw=True),  # DeepSeek-V3.2's importance-weighted KL
    dict(importance="sequence", eps_low=0.1, eps_high=0.1, beta=0.1, kl="k1", kl_iw=True),
]


def _call(logp, s, old=OLD, adv=ADV, mask=MASK):
  kwargs = dict(surrogate=s.get("surrogate", "ppo"), importance=s.get("importance", "token"),
                epsilon_low=s.get("eps_low", 0.2), epsilon_high=s.get("eps_high", 0.2),
                dual_clip=s.get("dual_clip"), beta=s.get("beta", 0.0),
                kl_estimator=s.get("kl", "k3"), kl_importance_weight=s.get("kl_iw", False),
                entropy_coef=s.get("entropy_coef", 0.0), sapo_tau_pos=s.get("tau_pos", 1.0),
                sapo_tau_neg=s.get("tau_neg", 1.05))
  return policy.policy_loss(logp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                            ref_logp=jnp.asarray(REF) if "beta" in s else None,
                            entropy=jnp.asarray(ENTROPY) if "entropy_coef" in s else None,
                            **kwargs)


def _np_loss(setting, logp=LOGP, old=OLD, adv=ADV, mask=MASK):
  return np_policy_loss(logp, old, adv, mask, ref=REF if "beta" in setting else None,
                        entropy=ENTROPY if "entropy_coef" in setting else None, **setting)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_policy_loss_matches_loops(setting):
  got, stats = _call(jnp.asarray(LOGP), setting)
  np.testing.assert_allclose(np.asarray(got), _np_loss(setting), rtol=1e-5, atol=1e-6)
  if "beta" in setting:
    assert stats["kl"].shape == (B, T)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("mode", list(policy.AGGREGATIONS))
def test_aggregated_loss_and_gradients(setting, mode):
  """The aggregated value against numpy, and autodiff against finite differences in float64.
  CISPO's weight is a stop-gradient, so finite differences would see the weight move: its
  check moves old_logp with logp (the ratio stays put) and so checks the gradient the loss
  claims, the weight held; its value is checked at the real old_logp."""
  cispo = setting.get("surrogate") == "cispo"

  def total(logp, old=None):
    old = (logp - (LOGP - OLD)) if old is None and cispo else (OLD if old is None else old)
    per_token, _ = _call(logp, setting, old=old)
    return policy.aggregate(per_token, jnp.asarray(MASK), mode, max_len=T)[0]

  np.testing.assert_allclose(float(total(jnp.asarray(LOGP), OLD)),
                             np_aggregate(_np_loss(setting), MASK, mode, T), rtol=1e-5)
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


@pytest.mark.parametrize("importance", policy.IMPORTANCE_LEVELS)
def test_cispo_keeps_every_tokens_gradient(importance):
  """CISPO's gradient on token t of completion i is -clip(r_it) A_i: the REINFORCE gradient
  weighted by the clipped ratio, nonzero where PPO's clip zeroes it."""
  eps_low, eps_high = (0.2, 0.1) if importance == "token" else (0.02, 0.02)
  setting = dict(surrogate="cispo", importance=importance, eps_low=eps_low, eps_high=eps_high)
  grad = jax.grad(lambda lp: jnp.sum(_call(lp, setting)[0] * MASK))(jnp.asarray(LOGP))
  if importance == "token":
    ratio = np.exp(LOGP - OLD)
  else:
    ratio = np.exp(((LOGP - OLD) * MASK).sum(1, keepdims=True) / MASK.sum(1, keepdims=True))
    ratio = np.broadcast_to(ratio, (B, T))
  weight = np.clip(ratio, 1 - eps_low, 1 + eps_high)
  np.testing.assert_allclose(np.asarray(grad), -weight * ADV[:, None] * MASK, rtol=1e-5,
                             atol=1e-7)
  stats = _call(jnp.asarray(LOGP), setting)[1]
  cut = (ratio < 1 - eps_low) | (ratio > 1 + eps_high)
  np.testing.assert_array_equal(np.asarray(stats["clipped_low"] + stats["clipped_high"]) > 0,
                                cut)
  ppo_grad = jax.grad(lambda lp: jnp.sum(_call(lp, dict(setting, surrogate="ppo"))[0] * MASK))(
      jnp.asarray(LOGP))
  lost = (np.asarray(ppo_grad) == 0) & (MASK > 0)
  assert lost.any() and np.all(np.asarray(grad)[lost] != 0)


def test_sapo_gate():
  """At r = 1 SAPO's gate is 2 / tau (the loss -2 A / tau); off-policy its gradient on token t
  is -A 4 s (1 - s) r with s = sigmoid(tau (r - 1)): the REINFORCE gradient scaled by a weight
  that is 1 at r = 1 and decays on both sides, faster for the larger temperature."""
  setting = dict(surrogate="sapo", tau_pos=0.5, tau_neg=3.0)
  tau = np.where(ADV > 0, 0.5, 3.0)[:, None]
  on_policy = np.asarray(_call(jnp.asarray(LOGP), setting, old=LOGP)[0])
  np.testing.assert_allclose(on_policy, np.broadcast_to(-2.0 / tau * ADV[:, None], (B, T)),
                             rtol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(_call(lp, setting)[0] * MASK))(jnp.asarray(LOGP))
  r = np.exp(LOGP - OLD)
  s = 1.0 / (1.0 + np.exp(-tau * (r - 1.0)))
  weight = 4.0 * s * (1.0 - s)
  np.testing.assert_allclose(np.asarray(grad), -ADV[:, None] * weight * r * MASK, rtol=1e-5,
                             atol=1e-7)
  assert np.all(weight <= 1.0) and np.all(weight[np.abs(r - 1) > 0.05] < 1.0)
  assert policy.policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV),
                            jnp.asarray(MASK), surrogate="sapo")[1]["clipped_high"].sum() == 0


@pytest.mark.parametrize("surrogate", policy.SURROGATES)
@pytest.mark.parametrize("importance", policy.IMPORTANCE_LEVELS)
def test_on_policy_gradient_is_the_policy_gradient(surrogate, importance):
  """At old = logp (one update per rollout), the gradient of the summed per-token loss is
  -A_i on every token of completion i, for every surrogate (SAPO's gate has slope 1 at r = 1,
  whatever its temperatures) and for token and sequence (GSPO) ratios alike: the REINFORCE
  estimator with a group baseline."""
  kwargs = dict(surrogate=surrogate, importance=importance)
  if surrogate == "sapo":
    kwargs |= dict(sapo_tau_pos=0.5, sapo_tau_neg=3.0)
  grad = jax.grad(lambda lp: jnp.sum(policy.policy_loss(
      lp, jnp.asarray(LOGP), jnp.asarray(ADV), jnp.asarray(MASK), **kwargs)[0] * MASK))(
          jnp.asarray(LOGP))
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


def test_importance_weighted_kl_is_unbiased_off_policy():
  """Tokens drawn from pi_old: the expectation of r k3 is KL(pi || ref) and its gradient is
  the KL's gradient, exactly (here over all 3 tokens weighted by pi_old); plain k3 is off in
  both. The gradient of KL(softmax(z) || q) in z is p_j (log(p_j / q_j) - KL)."""
  z = np.array([0.3, 1.2, -0.8])
  old = np.log(np.array([0.5, 0.2, 0.3]))
  ref = np.log(np.array([0.2, 0.5, 0.3]))
  mask = np.ones((1, 3))

  def expected_kl(z, weighted):
    logp = jax.nn.log_softmax(z)[None]
    stats = policy.policy_loss(logp, jnp.asarray(old)[None], jnp.zeros(1), jnp.asarray(mask),
                               ref_logp=jnp.asarray(ref)[None],
                               kl_importance_weight=weighted)[1]
    return jnp.sum(jnp.exp(old) * stats["kl"][0])

  p = np.exp(z) / np.exp(z).sum()
  q = np.exp(ref)
  kl = float((p * np.log(p / q)).sum())
  kl_grad = p * (np.log(p / q) - kl)
  with jax.enable_x64(True):
    for weighted in (True, False):
      value, grad = jax.value_and_grad(expected_kl)(jnp.asarray(z), weighted)
      if weighted:
        assert float(value) == pytest.approx(kl, rel=1e-12)
        np.testing.assert_allclose(np.asarray(grad), kl_grad, rtol=1e-10, atol=1e-12)
      else:
        assert abs(float(value) - kl) > 0.01
        assert np.abs(np.asarray(grad) - kl_grad).max() > 0.01


def test_importance_weighted_kl_on_policy():
  """At old = logp the weight is 1, so the value is plain k3's, but the gradient keeps the
  weight's: d(r k3)/dlogp = logp - ref_logp, the score-function sample of the KL's gradient."""
  args = (jnp.asarray(LOGP), jnp.asarray(LOGP), jnp.zeros(B), jnp.asarray(MASK))

  def kl(logp, weighted):
    stats = policy.policy_loss(logp, *args[1:], ref_logp=jnp.asarray(REF),
                               kl_importance_weight=weighted)[1]
    return stats["kl"]

  np.testing.assert_allclose(np.asarray(kl(args[0], True)), np.asarray(kl(args[0], False)),
                             rtol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(kl(lp, True)))(args[0])
  np.testing.assert_allclose(np.asarray(grad), LOGP - REF, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- aggregation


def test_luspo_removes_the_length_from_the_gradient():
  """GSPO's loss on-policy: with the grpo aggregation a token of completion i gets gradient
  -A_i / (B |y_i|), shorter completions pushing harder per token; LUSPO's length scaling makes
  it -A_i / B. luspo is dr_grpo's loss times max_len."""
  def grad(mode):
    def total(logp):
      per_token = policy.policy_loss(logp, jnp.asarray(LOGP), jnp.asarray(ADV),
                                     jnp.asarray(MASK), importance="sequence")[0]
      return policy.aggregate(per_token, jnp.asarray(MASK), mode, max_len=T)[0]
    return np.asarray(jax.grad(total)(jnp.asarray(LOGP)))

  lengths = MASK.sum(1, keepdims=True)
  np.testing.assert_allclose(grad("luspo"), -ADV[:, None] * MASK / B, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad("grpo"), -ADV[:, None] * MASK / (B * lengths), rtol=1e-5,
                             atol=1e-7)
  values = jnp.asarray(RNG.normal(size=(B, T)))
  luspo = policy.aggregate(values, jnp.asarray(MASK), "luspo")[0]
  dr_grpo = policy.aggregate(values, jnp.asarray(MASK), "dr_grpo", max_len=T)[0]
  assert float(luspo) == pytest.approx(float(dr_grpo) * T, rel=1e-6)


def _accumulated(values, mask, mode, parts):
  """sum_i(w_i loss_i) / sum_i(w_i) over the row slices `parts` (training.step's rule)."""
  out = [policy.aggregate(values[s], mask[s], mode, max_len=T) for s in parts]
  return sum(l * w for l, w in out) / sum(w for _, w in out)


def test_aggregation_weights_make_accumulation_exact():
  """Two micro-batches combined with the returned weights give the one-batch loss."""
  per_token = jnp.asarray(RNG.normal(size=(B, T)))
  mask = jnp.asarray(MASK)
  parts = (slice(0, 2), slice(2, B))
  for mode in ("grpo", "dapo", "dr_grpo", "luspo"):
    whole = policy.aggregate(per_token, mask, mode, max_len=T)[0]
    assert float(_accumulated(per_token, mask, mode, parts)) == pytest.approx(
        float(whole), rel=1e-6), mode
  # bnpo weighs micro-batches equally: accumulated, the mean of their token means.
  values, m = np.asarray(per_token), MASK
  expected = np.mean([(values[s] * m[s]).sum() / m[s].sum() for s in parts])
  assert float(_accumulated(per_token, mask, "bnpo", parts)) == pytest.approx(expected, rel=1e-6)
  assert expected != pytest.approx((values * m).sum() / m.sum())  # not the whole token mean


def test_dapo_normaliser_with_unequal_micro_batches():
  """DAPO over micro-batches of 1, 2 and 3 completions (token counts far apart): the value and
  the gradient are those of the token mean over the whole update batch, computed by numpy."""
  mask = MASK.copy()
  mask[0, 1:] = 0  # a one-token completion alone in the first micro-batch
  parts = (slice(0, 1), slice(1, 3), slice(3, B))
  assert len({mask[s].sum() for s in parts}) == 3
  setting = dict(beta=0.04, kl="k3")

  def total(logp):
    per_token = _call(logp, setting, mask=mask)[0]
    return _accumulated(per_token, jnp.asarray(mask), "dapo", parts)

  per_token = _np_loss(setting, mask=mask)
  assert float(total(jnp.asarray(LOGP))) == pytest.approx(
      (per_token * mask).sum() / mask.sum(), rel=1e-6)
  # numpy's gradient of the whole-batch token mean, finite differences of the reference.
  grad = np.asarray(jax.grad(total)(jnp.asarray(LOGP)))

  def whole(logp):
    return policy.aggregate(_call(logp, setting, mask=mask)[0], jnp.asarray(mask), "dapo")[0]

  np.testing.assert_allclose(grad, np.asarray(jax.grad(whole)(jnp.asarray(LOGP))), rtol=1e-5,
                             atol=1e-8)
  h = 1e-6
  probe = np.zeros((B, T))
  probe[3, 0] = h
  numeric = (((_np_loss(setting, logp=LOGP + probe, mask=mask) - per_token) * mask).sum()
             / mask.sum() / h)
  assert grad[3, 0] == pytest.approx(numeric, rel=1e-4)


def test_empty_completions_are_left_out_of_the_grpo_mean():
  """A completion without tokens (mask all zero) counts in neither the grpo loss nor its
  weight: the loss is numpy's mean over the other completions (TRL's mean over all B rows is
  different), the empty row has no gradient, and accumulation stays exact, a micro-batch of
  empty rows included (weight 0)."""
  mask = MASK.copy()
  mask[[1, 2]] = 0
  values = RNG.normal(size=(B, T))
  got = float(policy.aggregate(jnp.asarray(values), jnp.asarray(mask), "grpo")[0])
  kept = [i for i in range(B) if mask[i].sum()]
  expected = np.mean([(values[i] * mask[i]).sum() / mask[i].sum() for i in kept])
  assert got == pytest.approx(expected, rel=1e-6)
  trl = np.mean([(values[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(B)])
  assert got != pytest.approx(trl, rel=1e-3)
  for parts in ((slice(0, 1), slice(1, 3), slice(3, B)), (slice(0, 2), slice(2, B))):
    assert float(_accumulated(jnp.asarray(values), jnp.asarray(mask), "grpo", parts)) == \
        pytest.approx(expected, rel=1e-6)
  grad = jax.grad(lambda lp: policy.aggregate(_call(lp, {}, mask=mask)[0], jnp.asarray(mask),
                                              "grpo")[0])(jnp.asarray(LOGP))
  assert np.all(np.asarray(grad)[[1, 2]] == 0)


def test_sequence_clip_fraction():
  """At importance='sequence', the fraction of completions (with a token) whose sequence ratio
  is past the clip edge on its advantage's side, against a numpy loop."""
  mask = MASK.copy()
  mask[5] = 0
  eps_low, eps_high = 0.05, 0.05
  stats = policy.policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV),
                             jnp.asarray(mask), importance="sequence", epsilon_low=eps_low,
                             epsilon_high=eps_high)[1]
  clipped = []
  for i in range(B):
    if mask[i].sum() == 0:
      continue
    s = np.exp(((LOGP[i] - OLD[i]) * mask[i]).sum() / mask[i].sum())
    clipped.append((s < 1 - eps_low and ADV[i] < 0) or (s > 1 + eps_high and ADV[i] > 0))
  assert 0 < np.mean(clipped) < 1
  got = float(policy.sequence_clip_fraction(stats, jnp.asarray(mask)))
  assert got == pytest.approx(np.mean(clipped), rel=1e-6)


def test_bad_settings_raise():
  args = (jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK))
  with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
    policy.policy_loss(*args, beta=0.1)
  with pytest.raises(ValueError, match="dual_clip must be > 1"):
    policy.policy_loss(*args, dual_clip=0.5)
  with pytest.raises(ValueError, match="importance='seq'"):
    policy.policy_loss(*args, importance="seq")
  with pytest.raises(ValueError, match="surrogate='trpo'"):
    policy.policy_loss(*args, surrogate="trpo")
  with pytest.raises(ValueError, match="dual_clip bounds the clipped surrogate"):
    policy.policy_loss(*args, surrogate="cispo", dual_clip=3.0)
  with pytest.raises(ValueError, match="needs temperatures > 0"):
    policy.policy_loss(*args, surrogate="sapo", sapo_tau_neg=0.0)
  with pytest.raises(ValueError, match="need 0 <= epsilon_low < 1"):
    policy.policy_loss(*args, epsilon_low=1.0)
  policy.policy_loss(*args, surrogate="cispo", epsilon_low=1.0)  # no lower bound: valid
  with pytest.raises(ValueError, match="aggregation='mean'"):
    policy.aggregate(args[0], args[3], "mean")
