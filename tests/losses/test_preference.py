"""Preference losses against numpy float64 formulas (scipy's log_expit), gradients, the
identities that define each method, numerical stability and hyperparameter checks."""

import decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import expit, log_expit

from reasonjax.losses import preference as pref

# ----------------------------------------------------------------------------- references


def np_margin(w, l, rw, rl):
  return (w - rw) - (l - rl)


def np_log_odds(logp, length):
  p = np.exp(logp / length)  # straight from the definition: float64 is enough for |x| >= 1e-6
  return np.log(p / (1 - p))


def np_cdpo(z, eps=0.0):
  """Cross entropy of sigmoid(z) against the label (1 - eps, eps)."""
  return -(1 - eps) * log_expit(z) - eps * log_expit(-z)


def np_exo(w, l, rw, rl, *, beta, label_smoothing=1e-3):
  z = beta * np_margin(w, l, rw, rl)
  s, eps = expit(z), label_smoothing  # KL((s, 1 - s) || (1 - eps, eps))
  return s * (log_expit(z) - np.log(1 - eps)) + expit(-z) * (log_expit(-z) - np.log(eps))


def np_bco(w, l, rw, rl, *, beta, delta=None):
  r_w, r_l = beta * (w - rw), beta * (l - rl)
  if delta is None:
    delta = np.concatenate([r_w, r_l]).mean()
  return -log_expit(r_w - delta) - log_expit(-(r_l - delta))


def np_discopop(w, l, rw, rl, *, beta, tau):
  z = beta * np_margin(w, l, rw, rl)
  # sigmoid(z / tau) exp(-z) in logs: exp(-z) alone overflows where the switch has turned it off.
  return (1 - expit(z / tau)) * -log_expit(z) + np.exp(log_expit(z / tau) - z)


def np_f_alpha(w, l, rw, rl, *, beta, alpha, label_smoothing=0.0):
  f_prime = lambda u_pow_minus_alpha: (1 - u_pow_minus_alpha) / alpha  # noqa: E731
  u_w_a, u_l_a = np.exp(-alpha * (w - rw)), np.exp(-alpha * (l - rl))  # u^-alpha
  return np_cdpo(beta * (f_prime(u_w_a) - f_prime(u_l_a)), label_smoothing)


def np_f_js(w, l, rw, rl, *, beta, label_smoothing=0.0):
  # f'(u) = log(2 u / (1 + u)) = log 2 + log u - log(1 + u), in logs of u = pi / pi_ref.
  f_prime = lambda log_u: np.log(2) + log_u - np.logaddexp(0, log_u)  # noqa: E731
  return np_cdpo(beta * (f_prime(w - rw) - f_prime(l - rl)), label_smoothing)


def np_mixture(w, l, rw, rl, lw, ll, nll, *, weights, kwargs=None):
  inputs = dict(w=w, l=l, rw=rw, rl=rl, lw=lw, ll=ll, nll=nll)
  return sum(weight * (nll if name == "sft" else REFERENCES[name](
      *(inputs[a] for a in ARGS[name]), **(kwargs or {}).get(name, {})))
             for name, weight in weights.items())


REFERENCES = {
    "dpo": lambda w, l, rw, rl, *, beta, label_smoothing=0.0: (
        -(1 - label_smoothing) * log_expit(beta * np_margin(w, l, rw, rl))
        - label_smoothing * log_expit(-beta * np_margin(w, l, rw, rl))),
    "robust_dpo": lambda w, l, rw, rl, *, beta, label_smoothing: (
        ((1 - label_smoothing) * -log_expit(beta * np_margin(w, l, rw, rl))
         - label_smoothing * -log_expit(-beta * np_margin(w, l, rw, rl)))
        / (1 - 2 * label_smoothing)),
    "ipo": lambda w, l, rw, rl, *, beta: (np_margin(w, l, rw, rl) - 1 / (2 * beta)) ** 2,
    "hinge": lambda w, l, rw, rl, *, beta: np.maximum(0.0, 1 - beta * np_margin(w, l, rw, rl)),
    "step_apo": lambda w, l, rw, rl, qw, ql, *, beta, alpha: -log_expit(
        beta * np_margin(w, l, rw, rl) - alpha * (qw - ql)),
    "reference_free": lambda w, l, *, beta: -log_expit(beta * (w - l)),
    "simpo": lambda w, l, lw, ll, *, beta, gamma: -log_expit(beta * (w / lw - l / ll) - gamma),
    "orpo": lambda w, l, lw, ll, nll, *, lam: (
        nll - lam * log_expit(np_log_odds(w, lw) - np_log_odds(l, ll))),
    "exo_pair": np_exo,
    "nca_pair": lambda w, l, rw, rl, *, beta: (
        -log_expit(beta * (w - rw)) - 0.5 * log_expit(-beta * (w - rw))
        - 0.5 * log_expit(-beta * (l - rl))),
    "bco_pair": np_bco,
    "sppo_hard": lambda w, l, rw, rl, *, beta: (
        ((w - rw) - 0.5 / beta) ** 2 + ((l - rl) + 0.5 / beta) ** 2),
    "aot_paired": lambda w, l, rw, rl, *, beta, label_smoothing=0.0: np_cdpo(
        beta * (np.sort(w - l) - np.sort(rw - rl)), label_smoothing),
    "aot_unpaired": lambda w, l, rw, rl, *, beta, label_smoothing=0.0: np_cdpo(
        beta * (np.sort(w - rw) - np.sort(l - rl)), label_smoothing),
    "apo_zero": lambda w, l, rw, rl, *, beta: -expit(beta * (w - rw)) + expit(beta * (l - rl)),
    "apo_down": lambda w, l, rw, rl, *, beta: (
        expit(beta * (w - rw)) - expit(beta * ((w - rw) - (l - rl)))),
    "discopop": np_discopop,
    "ln_dpo": lambda w, l, rw, rl, lw, ll, *, beta, label_smoothing=0.0: np_cdpo(
        beta * ((w - rw) / np.maximum(lw, 1) - (l - rl) / np.maximum(ll, 1)), label_smoothing),
    "f_dpo_alpha": np_f_alpha,
    "f_dpo_js": np_f_js,
    "mixture": np_mixture,
}

# The inputs each loss takes, in order, and the hyperparameter settings tested.
ARGS = {
    "dpo": ("w", "l", "rw", "rl"),
    "robust_dpo": ("w", "l", "rw", "rl"),
    "ipo": ("w", "l", "rw", "rl"),
    "hinge": ("w", "l", "rw", "rl"),
    "step_apo": ("w", "l", "rw", "rl", "qw", "ql"),
    "reference_free": ("w", "l"),
    "simpo": ("w", "l", "lw", "ll"),
    "orpo": ("w", "l", "lw", "ll", "nll"),
    **{name: ("w", "l", "rw", "rl") for name in (
        "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot_paired", "aot_unpaired", "apo_zero",
        "apo_down", "discopop", "f_dpo_alpha", "f_dpo_js")},
    "ln_dpo": ("w", "l", "rw", "rl", "lw", "ll"),
    "mixture": ("w", "l", "rw", "rl", "lw", "ll", "nll"),
}
# MPO's mixture (Wang et al. 2024): sigmoid DPO, BCO (its delta the batch mean) and SFT.
MPO = dict(weights={"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0},
           kwargs={"dpo": dict(beta=0.1), "bco_pair": dict(beta=0.1)})
SETTINGS = [
    ("dpo", dict(beta=0.1)),
    ("dpo", dict(beta=0.5, label_smoothing=0.1)),
    ("dpo", dict(beta=2.0, label_smoothing=0.5)),
    ("robust_dpo", dict(beta=0.1, label_smoothing=0.0)),
    ("robust_dpo", dict(beta=0.3, label_smoothing=0.2)),
    ("ipo", dict(beta=0.1)),
    ("ipo", dict(beta=1.0)),
    ("hinge", dict(beta=0.3)),
    ("step_apo", dict(beta=0.2, alpha=0.5)),
    ("reference_free", dict(beta=0.1)),
    ("simpo", dict(beta=2.0, gamma=0.5)),
    ("orpo", dict(lam=0.1)),
    ("orpo", dict(lam=1.0)),
    ("exo_pair", dict(beta=0.1)),
    ("exo_pair", dict(beta=0.5, label_smoothing=0.2)),
    ("nca_pair", dict(beta=0.3)),
    # The last setting of a loss is the one whose gradients are checked: a fixed delta, as
    # finite differences would also move the batch-mean delta that has no gradient.
    ("bco_pair", dict(beta=0.2)),
    ("bco_pair", dict(beta=0.2, delta=0.3)),
    ("sppo_hard", dict(beta=0.5)),
    ("aot_paired", dict(beta=0.1)),
    ("aot_paired", dict(beta=0.3, label_smoothing=0.1)),
    ("aot_unpaired", dict(beta=0.1)),
    ("aot_unpaired", dict(beta=0.3, label_smoothing=0.1)),
    ("apo_zero", dict(beta=0.2)),
    ("apo_down", dict(beta=0.2)),
    ("discopop", dict(beta=0.05, tau=0.05)),
    ("discopop", dict(beta=0.5, tau=1.0)),
    ("ln_dpo", dict(beta=2.0)),
    ("ln_dpo", dict(beta=1.0, label_smoothing=0.1)),
    ("f_dpo_alpha", dict(beta=0.1, alpha=0.5)),
    ("f_dpo_alpha", dict(beta=0.3, alpha=1.0, label_smoothing=0.1)),
    ("f_dpo_js", dict(beta=0.1)),
    ("f_dpo_js", dict(beta=0.3, label_smoothing=0.1)),
    ("mixture", MPO),
    ("mixture", dict(weights={"ipo": 0.1, "bco_pair": 0.5, "simpo": 1.0, "sft": 0.3},
                     kwargs={"ipo": dict(beta=1.0), "bco_pair": dict(beta=0.2, delta=-0.1),
                             "simpo": dict(beta=2.0, gamma=0.5)})),
]
FLOAT_ARGS = ("w", "l", "rw", "rl", "qw", "ql", "nll")


def make_inputs(batch, seed):
  """float32 arrays; policy = reference + unit noise."""
  rng = np.random.default_rng(seed)
  lw = rng.integers(1, 60, batch)
  ll = rng.integers(1, 60, batch)
  rw = -lw * rng.uniform(0.05, 2.0, batch)  # mean token log-prob in [-2, -0.05]
  rl = -ll * rng.uniform(0.05, 2.0, batch)
  w = np.minimum(rw + rng.normal(size=batch), -1e-3 * lw)  # a log-prob is negative
  l = np.minimum(rl + rng.normal(size=batch), -1e-3 * ll)
  return dict(w=w.astype(np.float32), l=l.astype(np.float32), rw=rw.astype(np.float32),
              rl=rl.astype(np.float32), qw=rng.uniform(0, 1, batch).astype(np.float32),
              ql=rng.uniform(0, 1, batch).astype(np.float32), lw=lw.astype(np.int32),
              ll=ll.astype(np.int32), nll=rng.uniform(0, 3, batch).astype(np.float32))


def call(name, inputs, **kw):
  return getattr(pref, name)(*(jnp.asarray(inputs[a]) for a in ARGS[name]), **kw)


def reference(name, inputs, **kw):
  return REFERENCES[name](*(np.asarray(inputs[a], np.float64) for a in ARGS[name]), **kw)


# ----------------------------------------------------------------------------- values, gradients


@pytest.mark.parametrize("name, kw", SETTINGS)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_matches_float64_reference(name, kw, batch):
  inputs = make_inputs(batch, seed=batch)
  got = call(name, inputs, **kw)
  assert got.shape == (batch,) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), reference(name, inputs, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kw", SETTINGS)
def test_stable_at_large_margins(name, kw):
  """|beta Delta| up to ~1e4, and for ORPO/SimPO mean token log-probs from -1e-6 to -300: the
  math is finite, so the values and gradients must be."""
  inputs = make_inputs(64, seed=3)
  x = -np.logspace(-6, np.log10(300), 64)  # mean token log-prob; Delta up to ~2e4
  inputs["w"] = (x * inputs["lw"]).astype(np.float32)
  inputs["l"] = (x[::-1] * inputs["ll"]).astype(np.float32)
  got = np.asarray(call(name, inputs, **kw))
  assert np.isfinite(got).all()
  if name != "f_dpo_alpha":  # its reward grows like exp(-alpha r): capped (test_f_dpo_alpha_cap)
    np.testing.assert_allclose(got, reference(name, inputs, **kw), rtol=1e-5, atol=1e-5)
  floats = [a for a in ARGS[name] if a in FLOAT_ARGS]
  grads = jax.grad(lambda *xs: call(name, inputs | dict(zip(floats, xs)), **kw).sum(),
                   argnums=tuple(range(len(floats))))(*(jnp.asarray(inputs[a]) for a in floats))
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# aot_paired sorts the policy's logp_w - logp_l apart from the reference's: it cannot form the
# log-ratios first (documented).
@pytest.mark.parametrize("name, kw", [(n, kw) for n, kw in SETTINGS
                                      if "rw" in ARGS[n] and "beta" in kw and n != "aot_paired"])
def test_margin_keeps_precision_for_long_sequences(name, kw):
  """Summed log-probs from -1 to -2e4 (float32 spacing up to 2e-3) where policy and reference
  differ by ~0.05: Delta must be formed from the two log-ratios, each exact, not from
  logp_w - logp_l, which rounds away the digits of the shorter response."""
  inputs = make_inputs(64, seed=7)
  rng = np.random.default_rng(7)
  inputs["rw"] = -np.exp(rng.uniform(0, 10, 64)).astype(np.float32)
  inputs["rl"] = -np.exp(rng.uniform(0, 10, 64)).astype(np.float32)
  inputs["w"] = (inputs["rw"] + rng.uniform(-0.05, 0.05, 64)).astype(np.float32)
  inputs["l"] = (inputs["rl"] + rng.uniform(-0.05, 0.05, 64)).astype(np.float32)
  kw = kw | dict(beta=10.0)  # Delta ~ 0.1: the losses vary on its scale
  np.testing.assert_allclose(np.asarray(call(name, inputs, **kw)), reference(name, inputs, **kw),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kw", list(dict(SETTINGS).items()))
def test_gradients(name, kw):
  """One setting per loss, the last listed: float64 compilations are slow on CPU."""
  inputs = make_inputs(7, seed=11)
  floats = [a for a in ARGS[name] if a in FLOAT_ARGS]
  with jax.enable_x64(True):
    f64 = {a: jnp.asarray(v, jnp.float64 if a in FLOAT_ARGS else jnp.int64)
           for a, v in inputs.items()}
    check_grads(lambda *xs: call(name, f64 | dict(zip(floats, xs)), **kw),
                tuple(f64[a] for a in floats), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_computes_in_float32_from_bfloat16():
  inputs = make_inputs(7, seed=0)
  bf16 = {a: (v.astype(jnp.bfloat16) if a in FLOAT_ARGS else v) for a, v in inputs.items()}
  for name, kw in SETTINGS:
    assert call(name, bf16, **kw).dtype == jnp.float32, name


# ----------------------------------------------------------------------------- identities


# One batch size for the identity tests: eager op compilations are cached per shape.
INPUTS = make_inputs(7, seed=5)


def test_dpo_without_reference_is_reference_free():
  zeros = np.zeros(7, np.float32)
  got = pref.dpo(INPUTS["w"], INPUTS["l"], zeros, zeros, beta=0.3)
  np.testing.assert_allclose(got, pref.reference_free(INPUTS["w"], INPUTS["l"], beta=0.3),
                             rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_dpo_rewards_raising_chosen_and_lowering_rejected(eps):
  kw = dict(beta=0.5, label_smoothing=eps)
  zeros = jnp.zeros(7)
  g_w, g_l = jax.grad(lambda w, l: pref.dpo(w, l, zeros, zeros, **kw).sum(), argnums=(0, 1))(
      zeros, jnp.linspace(-2.0, 2.0, 7))
  assert (np.asarray(g_w) < 0).all() and (np.asarray(g_l) > 0).all()
  grid = pref.dpo(jnp.linspace(-2.0, 2.0, 64), jnp.zeros(64), jnp.zeros(64), jnp.zeros(64), **kw)
  assert (np.diff(np.asarray(grid)) < 0).all()


def test_cdpo_at_one_half_is_even_not_constant():
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  kw = dict(beta=0.5, label_smoothing=0.5)
  np.testing.assert_allclose(pref.dpo(w, l, rw, rl, **kw), pref.dpo(l, w, rl, rw, **kw),
                             rtol=1e-6)
  zeros = jnp.zeros(7)
  at_zero = pref.dpo(zeros, zeros, zeros, zeros, **kw)
  np.testing.assert_allclose(at_zero, np.log(2.0), rtol=1e-6)
  assert (pref.dpo(jnp.full(7, 4.0), zeros, zeros, zeros, **kw) > at_zero + 0.1).all()


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_cdpo_minimum_is_at_finite_margin(eps):
  beta = 0.5
  best = np.log((1 - eps) / eps) / beta  # solves (1 - eps) sigmoid(-z) = eps sigmoid(z)
  loss = lambda d: pref.dpo(d, 0.0, 0.0, 0.0, beta=beta, label_smoothing=eps)
  np.testing.assert_allclose(jax.grad(loss)(jnp.float32(best)), 0.0, atol=1e-6)
  assert jax.grad(loss)(jnp.float32(best - 1)) < 0 < jax.grad(loss)(jnp.float32(best + 1))


def test_robust_dpo_without_noise_is_dpo():
  args = [INPUTS[a] for a in ("w", "l", "rw", "rl")]
  np.testing.assert_allclose(pref.robust_dpo(*args, beta=0.2, label_smoothing=0.0),
                             pref.dpo(*args, beta=0.2), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.45])
def test_robust_dpo_is_unbiased_under_label_flips(eps):
  """E over flips with probability eps of rDPO = clean DPO (Chowdhury et al. 2024, Lemma 3.1);
  cDPO does not have this property."""
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  kw = dict(beta=0.2, label_smoothing=eps)
  clean = pref.dpo(w, l, rw, rl, beta=0.2)
  noisy = ((1 - eps) * pref.robust_dpo(w, l, rw, rl, **kw)
           + eps * pref.robust_dpo(l, w, rl, rw, **kw))
  np.testing.assert_allclose(noisy, clean, rtol=1e-4, atol=1e-5)
  cdpo = (1 - eps) * pref.dpo(w, l, rw, rl, **kw) + eps * pref.dpo(l, w, rl, rw, **kw)
  assert np.abs(np.asarray(cdpo - clean)).max() > 1e-2


def test_ipo_is_zero_at_its_target_margin():
  beta = 0.25
  delta = jnp.asarray([1 / (2 * beta), 0.0, 5.0, 1.0, 3.0, -1.0, 2.5])
  zeros = jnp.zeros(7)
  got = np.asarray(pref.ipo(delta, zeros, zeros, zeros, beta=beta))
  np.testing.assert_allclose(got, [0.0, 4.0, 9.0, 1.0, 1.0, 9.0, 0.25], atol=1e-6)


def test_hinge_is_zero_past_its_margin():
  zeros = jnp.zeros(7)
  got = pref.hinge(jnp.asarray([-1.0, 0.0, 1.0, 1.9, 2.0, 2.1, 9.0]), zeros, zeros, zeros,
                   beta=0.5)
  np.testing.assert_allclose(got, [1.5, 1.0, 0.5, 0.05, 0.0, 0.0, 0.0], atol=1e-6)


def test_step_apo_without_values_is_dpo_and_value_gap_is_a_margin():
  args = [INPUTS[a] for a in ("w", "l", "rw", "rl")]
  q_w, q_l = INPUTS["qw"], INPUTS["ql"]
  np.testing.assert_allclose(pref.step_apo(*args, q_w, q_l, beta=0.2, alpha=0.0),
                             pref.dpo(*args, beta=0.2), rtol=1e-6)
  # beta Delta - alpha (q_w - q_l) = beta Delta', the chosen reference raised by alpha gap / beta.
  beta, alpha = 0.2, 0.7
  shifted = args[:2] + [args[2] + alpha * (q_w - q_l) / beta, args[3]]
  np.testing.assert_allclose(pref.step_apo(*args, q_w, q_l, beta=beta, alpha=alpha),
                             pref.dpo(*shifted, beta=beta), rtol=1e-4, atol=1e-5)
  wider = pref.step_apo(*args, q_w + 1.0, q_l, beta=beta, alpha=alpha)
  assert (wider > pref.step_apo(*args, q_w, q_l, beta=beta, alpha=alpha)).all()


def test_simpo_normalises_by_length():
  w, l, lw, ll = (INPUTS[a] for a in ("w", "l", "lw", "ll"))
  # Twice the lengths: the same as half the beta.
  np.testing.assert_allclose(pref.simpo(w, l, 2 * lw, 2 * ll, beta=2.0, gamma=0.5),
                             pref.simpo(w, l, lw, ll, beta=1.0, gamma=0.5), rtol=1e-6)
  ones = np.ones(7, np.int32)
  np.testing.assert_allclose(pref.simpo(w, l, ones, ones, beta=0.3, gamma=0.0),
                             pref.reference_free(w, l, beta=0.3), rtol=1e-6)
  # A padding pair without tokens (length 0, log-prob 0) gives a finite loss, not 0 / 0.
  zero = np.zeros(7, np.float32)
  assert np.isfinite(pref.simpo(zero, zero, 0 * ones, 0 * ones, beta=1.0, gamma=0.5)).all()
  assert np.isfinite(pref.orpo(zero - 1, zero - 1, 0 * ones, 0 * ones, zero, lam=1.0)).all()
  # The margin: gamma shifts the sigmoid's argument.
  np.testing.assert_allclose(pref.simpo(w, l, lw, ll, beta=1.0, gamma=0.8),
                             pref.simpo(w - 0.8 * lw, l, lw, ll, beta=1.0, gamma=0.0),
                             rtol=1e-5, atol=1e-6)


def test_orpo_normalises_by_length():
  w, l, lw, ll, nll = (INPUTS[a] for a in ("w", "l", "lw", "ll", "nll"))
  base = pref.orpo(w, l, lw, ll, nll, lam=0.5)
  # Only logp / len enters: scaling both by 2 changes nothing; doubling len halves logp / len.
  np.testing.assert_allclose(pref.orpo(2 * w, 2 * l, 2 * lw, 2 * ll, nll, lam=0.5), base,
                             rtol=1e-6)
  np.testing.assert_allclose(pref.orpo(w, l, 2 * lw, ll, nll, lam=0.5),
                             pref.orpo(w / 2, l, lw, ll, nll, lam=0.5), rtol=1e-6)
  assert np.abs(np.asarray(pref.orpo(w, l, 2 * lw, ll, nll, lam=0.5) - base)).max() > 1e-3
  np.testing.assert_allclose(pref.orpo(w, l, lw, ll, nll, lam=0.0), nll)
  # Equal per-token probabilities: equal odds, odds-ratio term lam log 2.
  len_w, len_l = np.asarray([3, 10]), np.asarray([7, 20])
  got = pref.orpo(np.log(0.5) * len_w, np.log(0.5) * len_l, len_w, len_l, 0.0, lam=0.5)
  np.testing.assert_allclose(got, 0.5 * np.log(2.0), rtol=1e-6)


def test_orpo_is_finite_for_near_certain_sequences():
  """A summed log-prob that rounds to 0 or just above it (logsumexp rounding) has p = 1."""
  logp_w = jnp.asarray([0.0, 1e-7, 1e-5, -1e-9, -1e-7, -1e-5, -1e-3])
  ones = jnp.ones(7)
  loss, grads = jax.value_and_grad(
      lambda w, l: pref.orpo(w, l, ones, ones, 0 * ones, lam=1.0).sum(), argnums=(0, 1))(
          logp_w, logp_w[::-1])
  assert np.isfinite(loss) and all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize("eps", [1e-3, 0.1, 0.5])
def test_exo_is_a_reverse_kl_zero_at_the_smoothed_label(eps):
  beta = 0.5
  zeros = jnp.zeros(64)
  grid = pref.exo_pair(jnp.linspace(-30.0, 30.0, 64), zeros, zeros, zeros, beta=beta,
                       label_smoothing=eps)
  assert (np.asarray(grid) >= -1e-6).all()  # a KL divergence
  best = np.log((1 - eps) / eps) / beta  # sigmoid(beta Delta) = 1 - eps: p = q
  loss = lambda d: pref.exo_pair(d, 0.0, 0.0, 0.0, beta=beta, label_smoothing=eps)  # noqa: E731
  np.testing.assert_allclose(loss(jnp.float32(best)), 0.0, atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(jnp.float32(best)), 0.0, atol=1e-6)
  # Unlike cDPO, whose minimum is the label's entropy, not 0.
  cdpo = pref.dpo(jnp.float32(best), 0.0, 0.0, 0.0, beta=beta, label_smoothing=eps)
  assert eps == 0.5 or cdpo > 1e-3


def test_nca_trains_each_reward_on_its_own():
  beta = 0.5
  zeros = jnp.zeros(7)
  # d/d r_w [-log sigmoid(r_w) - log sigmoid(-r_w) / 2] = 0 at r_w = log 2, whatever r_l is,
  # and the rejected reward is always pushed down.
  g_w, g_l = jax.grad(lambda w, l: pref.nca_pair(w, l, zeros, zeros, beta=beta).sum(),
                      argnums=(0, 1))(jnp.full(7, np.log(2.0) / beta), jnp.linspace(-3, 3, 7))
  np.testing.assert_allclose(g_w, 0.0, atol=1e-6)
  assert (np.asarray(g_l) > 0).all()
  # Not a function of the margin alone, unlike DPO: raising both responses changes it.
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  np.testing.assert_allclose(pref.dpo(w + 1, l + 1, rw, rl, beta=beta),
                             pref.dpo(w, l, rw, rl, beta=beta), rtol=1e-5)
  moved = pref.nca_pair(w + 1, l + 1, rw, rl, beta=beta) - pref.nca_pair(w, l, rw, rl, beta=beta)
  assert np.abs(np.asarray(moved)).min() > 1e-3


def test_bco_shift_is_the_batch_mean_reward_without_gradient():
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  beta = 0.2
  base = pref.bco_pair(w, l, rw, rl, beta=beta)
  # delta follows the rewards: a common shift of every reference cancels (it would not against
  # a fixed delta, or TRL's running mean).
  np.testing.assert_allclose(pref.bco_pair(w, l, rw + 3.0, rl + 3.0, beta=beta), base,
                             rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(pref.bco_pair(w, l, rw + 3.0, rl + 3.0, beta=beta, delta=0.0)
                           - pref.bco_pair(w, l, rw, rl, beta=beta, delta=0.0))).min() > 1e-3
  # The same value and gradient as the batch mean passed in as a constant.
  mean = jnp.float32(beta * np.concatenate([w - rw, l - rl]).astype(np.float64).mean())
  np.testing.assert_allclose(pref.bco_pair(w, l, rw, rl, beta=beta, delta=mean), base,
                             rtol=1e-5, atol=1e-6)
  grad = lambda delta: jax.grad(  # noqa: E731
      lambda x: pref.bco_pair(x, l, rw, rl, beta=beta, delta=delta).sum())(jnp.asarray(w))
  np.testing.assert_allclose(grad(None), grad(mean), rtol=1e-5, atol=1e-7)
  # It couples the pairs: another pair's log-prob moves every value.
  w2 = w.copy()
  w2[0] += 5.0
  moved = pref.bco_pair(w2, l, rw, rl, beta=beta) - base
  assert np.abs(np.asarray(moved[1:])).min() > 1e-4


def test_sppo_hard_regresses_onto_plus_minus_half_eta():
  beta = 0.25  # eta = 4: targets r_w = 2, r_l = -2
  r_w = jnp.asarray([2.0, 2.0, 0.0, 3.0, -1.0])
  r_l = jnp.asarray([-2.0, 0.0, -2.0, -2.0, 1.0])
  zeros = jnp.zeros(5)
  np.testing.assert_allclose(pref.sppo_hard(r_w, r_l, zeros, zeros, beta=beta),
                             [0.0, 4.0, 4.0, 1.0, 18.0], atol=1e-6)


def test_aot_of_one_pair_is_dpo():
  w, l, rw, rl = (INPUTS[a][:1] for a in ("w", "l", "rw", "rl"))
  kw = dict(beta=0.3, label_smoothing=0.1)
  for fn in (pref.aot_paired, pref.aot_unpaired):
    np.testing.assert_allclose(fn(w, l, rw, rl, **kw), pref.dpo(w, l, rw, rl, **kw), rtol=1e-6)


def test_aot_depends_only_on_the_distributions():
  """Only the batch's empirical distributions enter: of the policy's and the reference's
  chosen-over-rejected ratios (paired), of the chosen and rejected rewards (unpaired)."""
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  p, q = np.random.default_rng(0).permutation(7), np.random.default_rng(1).permutation(7)
  kw = dict(beta=0.3)
  np.testing.assert_allclose(pref.aot_paired(w[p], l[p], rw[q], rl[q], **kw),
                             pref.aot_paired(w, l, rw, rl, **kw), rtol=1e-6)
  np.testing.assert_allclose(pref.aot_unpaired(w[p], l[q], rw[p], rl[q], **kw),
                             pref.aot_unpaired(w, l, rw, rl, **kw), rtol=1e-6)
  # DPO's pairs are matched: the same shuffles change its values (even as a set).
  dpo = lambda *xs: np.sort(np.asarray(pref.dpo(*xs, **kw)))  # noqa: E731
  assert np.abs(dpo(w[p], l[p], rw[q], rl[q]) - dpo(w, l, rw, rl)).max() > 1e-2
  assert np.abs(dpo(w[p], l[q], rw[p], rl[q]) - dpo(w, l, rw, rl)).max() > 1e-2


def test_apo_anchors_each_response_to_the_reference():
  zeros = jnp.zeros(7)
  for fn in (pref.apo_zero, pref.apo_down):  # the paper's form: 0 at the reference
    np.testing.assert_allclose(fn(zeros, zeros, zeros, zeros, beta=0.3), 0.0, atol=1e-7)
  r = jnp.linspace(-3.0, 3.0, 7)
  grads = lambda fn, w, l: jax.grad(  # noqa: E731
      lambda w, l: fn(w, l, zeros, zeros, beta=0.3).sum(), argnums=(0, 1))(w, l)
  # zero: every chosen response raised and every rejected one lowered, each on its own.
  g_w, g_l = grads(pref.apo_zero, r, r[::-1])
  assert (np.asarray(g_w) < 0).all() and (np.asarray(g_l) > 0).all()
  # down: once the rejected response is far below the reference, the chosen one is lowered
  # too (DPO would keep raising it); the rejected one is never raised.
  g_w, g_l = grads(pref.apo_down, r, jnp.full(7, -100.0))
  assert (np.asarray(g_w) > 0).all() and (np.asarray(g_l) >= 0).all()
  g_dpo = jax.grad(lambda w: pref.dpo(w, jnp.full(7, -100.0), zeros, zeros, beta=0.3).sum())(r)
  assert (np.asarray(g_dpo) <= 0).all()


def test_discopop_is_logistic_below_zero_and_exponential_above():
  zeros = jnp.zeros(7)
  # At a zero margin the switch is half way: (log 2 + exp(0)) / 2.
  np.testing.assert_allclose(pref.discopop(zeros, zeros, zeros, zeros, beta=0.5, tau=0.05),
                             (np.log(2.0) + 1.0) / 2, rtol=1e-6)
  z = np.asarray([-5.0, -2.0, -1.0, 1.0, 2.0, 5.0, 9.0])  # |z| / tau >= 20: switched
  got = pref.discopop(jnp.asarray(z), zeros, zeros, zeros, beta=1.0, tau=0.05)
  np.testing.assert_allclose(got, np.where(z < 0, np.log1p(np.exp(-z)), np.exp(-z)), rtol=1e-6)


def test_ln_dpo_is_dpo_on_per_token_means():
  w, l, rw, rl, lw, ll = (INPUTS[a] for a in ("w", "l", "rw", "rl", "lw", "ll"))
  kw = dict(beta=2.0, label_smoothing=0.1)
  base = pref.ln_dpo(w, l, rw, rl, lw, ll, **kw)
  np.testing.assert_allclose(base, pref.dpo(w / lw, l / ll, rw / lw, rl / ll, **kw),
                             rtol=1e-5, atol=1e-6)
  # A response twice as long with twice the log-probs: the same loss (summed DPO's changes).
  np.testing.assert_allclose(pref.ln_dpo(2 * w, l, 2 * rw, rl, 2 * lw, ll, **kw), base,
                             rtol=1e-5, atol=1e-6)
  # A padding pair without tokens: finite.
  zero, ones = np.zeros(7, np.float32), np.ones(7, np.int32)
  assert np.isfinite(pref.ln_dpo(zero, zero, zero, zero, 0 * ones, 0 * ones, **kw)).all()


def test_f_dpo_alpha_limits():
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  # alpha -> 0: f'(u) -> log u, the reverse KL of DPO.
  np.testing.assert_allclose(pref.f_dpo_alpha(w, l, rw, rl, beta=0.3, alpha=1e-6),
                             pref.dpo(w, l, rw, rl, beta=0.3), rtol=1e-4, atol=1e-6)
  # alpha = 1: the forward KL, f'(u) = -1 / u up to a constant.
  r_w, r_l = (w - rw).astype(np.float64), (l - rl).astype(np.float64)
  np.testing.assert_allclose(pref.f_dpo_alpha(w, l, rw, rl, beta=0.3, alpha=1.0),
                             -log_expit(0.3 * (np.exp(-r_l) - np.exp(-r_w))), rtol=1e-5)


def test_f_dpo_alpha_cap():
  """u^-alpha overflows float32 once a response falls ~180 nats below the reference (alpha =
  1/2): the capped loss stays finite, non-increasing in the chosen log-prob, and without nan
  gradients."""
  logp_w = -jnp.logspace(0, 5, 64)
  zeros = jnp.zeros(64)
  loss, grad = jax.value_and_grad(
      lambda w: pref.f_dpo_alpha(w, zeros, zeros, zeros, beta=0.1, alpha=0.5).sum())(logp_w)
  values = np.asarray(pref.f_dpo_alpha(logp_w, zeros, zeros, zeros, beta=0.1, alpha=0.5))
  assert np.isfinite(loss) and np.isfinite(np.asarray(grad)).all()
  assert (np.diff(values) >= 0).all() and values[-1] > 1e15


def test_f_dpo_js_is_dpo_far_below_the_reference_and_saturates_above():
  zeros = jnp.zeros(3)
  # r -> -inf: log sigmoid(r) -> r, DPO.
  r_w, r_l = jnp.asarray([-40.0, -45.0, -60.0]), jnp.asarray([-41.0, -43.0, -66.0])
  np.testing.assert_allclose(pref.f_dpo_js(r_w, r_l, zeros, zeros, beta=0.5),
                             pref.dpo(r_w, r_l, zeros, zeros, beta=0.5), rtol=1e-6)
  # Well above the reference the reward is log 2 + ~0: loss log 2, no gradient to go higher.
  r_w, r_l = jnp.asarray([20.0, 30.0, 40.0]), jnp.asarray([16.0, 17.0, 25.0])
  loss = lambda w: pref.f_dpo_js(w, r_l, zeros, zeros, beta=0.5).sum()  # noqa: E731
  np.testing.assert_allclose(loss(r_w), 3 * np.log(2.0), atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(r_w), 0.0, atol=1e-6)


def test_mixture_is_the_weighted_sum_of_its_components():
  args = [INPUTS[a] for a in ARGS["mixture"]]
  w, l, rw, rl, lw, ll, nll = args
  simpo_kw = dict(beta=2.0, gamma=0.5)
  np.testing.assert_allclose(
      pref.mixture(*args, weights={"simpo": 1.0}, kwargs={"simpo": simpo_kw}),
      pref.simpo(w, l, lw, ll, **simpo_kw), rtol=1e-6)
  np.testing.assert_allclose(pref.mixture(*args, weights={"sft": 2.0}), 2 * nll, rtol=1e-6)
  a = pref.mixture(*args, weights={"dpo": 1.0}, kwargs={"dpo": dict(beta=0.1)})
  b = pref.mixture(*args, weights={"orpo": 1.0}, kwargs={"orpo": dict(lam=0.5)})
  both = pref.mixture(*args, weights={"dpo": 0.3, "orpo": 0.7},
                      kwargs={"dpo": dict(beta=0.1), "orpo": dict(lam=0.5)})
  np.testing.assert_allclose(both, 0.3 * np.asarray(a) + 0.7 * np.asarray(b), rtol=1e-5)
  # A traced weight (a sweep under jit) is taken as it is.
  got = jax.jit(lambda x: pref.mixture(*args, weights={"sft": x}))(0.5)
  np.testing.assert_allclose(got, 0.5 * nll, rtol=1e-6)


def test_log1mexp_matches_float64_on_both_branches():
  x = -np.concatenate([np.logspace(-30, 2.5, 63), [np.log(2.0)]]).astype(np.float32)
  # 50 digits: float64 log(-expm1(x)) itself loses digits far below 0, log1p(-exp(x)) near 0.
  with decimal.localcontext(prec=50):
    want = np.array([float((1 - decimal.Decimal(float(v)).exp()).ln()) for v in x])
  # atol: exp(x) underflows in float32 below x = -88.
  np.testing.assert_allclose(pref.log1mexp(x), want, rtol=2e-6, atol=1e-30)
  # d/dx log(1 - e^x) = -1 / (e^-x - 1), finite on both branches (no nan from the unused one).
  grad = jax.vmap(jax.grad(pref.log1mexp))(jnp.asarray(x))
  np.testing.assert_allclose(grad, -1 / np.expm1(-x.astype(np.float64)), rtol=2e-6, atol=1e-30)
  with jax.enable_x64(True):
    check_grads(pref.log1mexp, (jnp.asarray([-30.0, -5.0, -0.7, -0.69, -0.5, -0.3, -0.1]),),
                order=1, modes=["rev"])


# ----------------------------------------------------------------------------- names, metrics


def test_losses_by_name():
  # step_apo needs per-step values that the DPO trainer, the user of LOSSES, does not produce.
  assert set(pref.LOSSES) == set(REFERENCES) - {"step_apo"}
  assert all(pref.get_loss(name) is fn for name, fn in pref.LOSSES.items())
  with pytest.raises(ValueError, match="valid:.*'dpo'"):
    pref.get_loss("dpoo")


def test_reward_margins():
  w, l, rw, rl = (INPUTS[a] for a in ("w", "l", "rw", "rl"))
  metrics = pref.reward_margins(w, l, rw, rl, beta=0.1)
  chosen = 0.1 * (w.astype(np.float64) - rw)
  rejected = 0.1 * (l.astype(np.float64) - rl)
  np.testing.assert_allclose(metrics["reward_chosen"], chosen, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["reward_margin"], chosen - rejected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(metrics["reward_accuracy"], (chosen > rejected).astype(np.float32))
  grad = jax.grad(lambda x: pref.reward_margins(x, l, rw, rl, beta=0.1)["reward_margin"].sum())
  np.testing.assert_array_equal(grad(jnp.asarray(w)), 0.0)


BAD = [
    ("dpo", dict(beta=0.0), "beta"),
    ("dpo", dict(beta=-1.0), "beta"),
    ("dpo", dict(beta=float("nan")), "beta"),
    ("dpo", dict(beta=0.1, label_smoothing=-0.1), "label_smoothing"),
    ("dpo", dict(beta=0.1, label_smoothing=0.6), "label_smoothing"),
    ("robust_dpo", dict(beta=0.1, label_smoothing=0.5), "label_smoothing"),
    ("robust_dpo", dict(beta=-0.1, label_smoothing=0.1), "beta"),
    ("ipo", dict(beta=0.0), "beta"),
    ("hinge", dict(beta=-2.0), "beta"),
    ("step_apo", dict(beta=0.1, alpha=-1.0), "alpha"),
    ("step_apo", dict(beta=0.0, alpha=1.0), "beta"),
    ("reference_free", dict(beta=float("inf")), "beta"),
    ("simpo", dict(beta=0.0, gamma=0.5), "beta"),
    ("simpo", dict(beta=2.0, gamma=-0.5), "gamma"),
    ("orpo", dict(lam=-0.1), "lam"),
    ("exo_pair", dict(beta=0.0), "beta"),
    ("exo_pair", dict(beta=0.1, label_smoothing=0.0), "label_smoothing"),
    ("exo_pair", dict(beta=0.1, label_smoothing=0.6), "label_smoothing"),
    ("nca_pair", dict(beta=-1.0), "beta"),
    ("bco_pair", dict(beta=0.0), "beta"),
    ("bco_pair", dict(beta=0.1, delta=float("nan")), "delta"),
    ("sppo_hard", dict(beta=0.0), "beta"),
    ("aot_paired", dict(beta=0.1, label_smoothing=0.7), "label_smoothing"),
    ("aot_unpaired", dict(beta=-0.1), "beta"),
    ("apo_zero", dict(beta=0.0), "beta"),
    ("apo_down", dict(beta=float("inf")), "beta"),
    ("discopop", dict(beta=0.0), "beta"),
    ("discopop", dict(beta=0.1, tau=0.0), "tau"),
    ("discopop", dict(beta=0.1, tau=1.5), "tau"),
    ("ln_dpo", dict(beta=0.0), "beta"),
    ("ln_dpo", dict(beta=1.0, label_smoothing=-0.1), "label_smoothing"),
    ("f_dpo_alpha", dict(beta=0.1, alpha=0.0), "alpha"),
    ("f_dpo_alpha", dict(beta=0.1, alpha=1.5), "alpha"),
    ("f_dpo_alpha", dict(beta=-0.1), "beta"),
    ("f_dpo_js", dict(beta=0.1, label_smoothing=0.51), "label_smoothing"),
    ("f_dpo_js", dict(beta=0.0), "beta"),
    ("mixture", dict(weights={}), "weights name no component"),
    ("mixture", dict(weights={"dpoo": 1.0}), r"unknown component 'dpoo'; valid: \[.*'sft'"),
    ("mixture", dict(weights={"mixture": 1.0}), "unknown component 'mixture'"),
    ("mixture", dict(weights={"sft": -1.0}), r"weights\['sft'\]"),
    ("mixture", dict(weights={"sft": float("nan")}), r"weights\['sft'\]"),
    ("mixture", dict(weights={"sft": 0.0}), "weights are all 0"),
    ("mixture", dict(weights={"sft": 1.0}, kwargs={"dpo": dict(beta=0.1)}),
     r"kwargs for \['dpo'\], which have no weight"),
    ("mixture", dict(weights={"sft": 1.0}, kwargs={"sft": dict(beta=0.1)}),
     r"kwargs\['sft'\] must be empty"),
    ("mixture", dict(weights={"dpo": 1.0}), r"kwargs\['dpo'\]: unknown \[\], missing \['beta'\]"),
    ("mixture", dict(weights={"dpo": 1.0}, kwargs={"dpo": dict(beta=0.1, gamma=1.0)}),
     r"kwargs\['dpo'\]: unknown \['gamma'\]"),
    ("mixture", dict(weights={"dpo": 1.0}, kwargs={"dpo": dict(beta=0.0)}),
     "component 'dpo': beta"),
]


@pytest.mark.parametrize("name, kw, arg", BAD)
def test_bad_hyperparameters_raise(name, kw, arg):
  with pytest.raises(ValueError, match=arg):
    call(name, make_inputs(2, seed=0), **kw)


def test_traced_hyperparameters_are_not_checked():
  args = [jnp.asarray(INPUTS[a]) for a in ("w", "l", "rw", "rl")]
  got = jax.jit(lambda b, e: pref.robust_dpo(*args, beta=b, label_smoothing=e))(0.2, 0.1)
  np.testing.assert_allclose(got, pref.robust_dpo(*args, beta=0.2, label_smoothing=0.1),
                             rtol=1e-6)
