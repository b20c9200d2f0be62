"""The GRPO trainer's loss choices, cheaply: config checks that name a bad choice, the default
config giving today's loss, the per-completion clip metric, and gradient accumulation over
micro-batches with unequal token counts and an empty completion against numpy."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo_arith
from reasonjax import models
from reasonjax.losses import policy, tokens
from reasonjax.programs import grpo
from reasonjax.training import step
from tests.conftest import random_params

CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MODEL = models.Model(CFG)
GROUPS, G, C = 2, 2, 6
LENGTHS = np.array([6, 1, 0, 4])  # completion lengths: an empty one, micro-batches of 7 and 4


@pytest.mark.parametrize("fields, message", [
    ({"policy_loss.surrogate": "trpo"},
     "config.policy_loss.surrogate='trpo'; expected one of ['cispo', 'ppo', 'sapo']"),
    ({"advantage.ddof": 2}, "config.advantage.ddof=2; expected one of [0, 1]"),
    ({"aggregation": "mean"},
     "config.aggregation='mean'; expected one of ['bnpo', 'dapo', 'dr_grpo', 'grpo', 'luspo']"),
    ({"policy_loss.surrogate": "cispo", "policy_loss.dual_clip": 3.0},
     "config.policy_loss: dual_clip bounds the clipped surrogate: it needs surrogate='ppo', "
     "got surrogate='cispo'"),
    ({"policy_loss.surrogate": "sapo", "policy_loss.sapo_tau_neg": 0.0},
     "config.policy_loss: surrogate='sapo' needs temperatures > 0"),
    ({"policy_loss.epsilon_low": 1.5},
     "config.policy_loss: need 0 <= epsilon_low < 1 and epsilon_high >= 0"),
], ids=["surrogate", "ddof", "aggregation", "dual_clip", "sapo_tau", "epsilon"])
def test_check_config_names_a_bad_loss_choice(fields, message):
  config = grpo_arith.get_config("runlocal")
  grpo.check_config(config)
  for dotted, value in fields.items():
    section, _, key = dotted.rpartition(".")
    (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    grpo.check_config(config)


@pytest.mark.parametrize("fields", [
    {"policy_loss.surrogate": "cispo", "policy_loss.epsilon_low": 1.0, "aggregation": "dapo"},
    {"policy_loss.surrogate": "sapo"},
    {"aggregation": "luspo", "policy_loss.importance": "sequence"},
    {"policy_loss.kl_importance_weight": True, "advantage.ddof": 1},
], ids=["cispo", "sapo", "luspo", "kl_weight_bessel"])
def test_check_config_accepts_the_variants(fields):
  config = grpo_arith.get_config("runlocal")
  for dotted, value in fields.items():
    section, _, key = dotted.rpartition(".")
    (config[section] if section else config)[key] = value
  grpo.check_config(config)


def _batch(params, advantages, shift=None, seed=0):
  """A rollout batch of GROUPS prompts x G completions of LENGTHS tokens, and the trained
  policy's log-probs [N, C] of its tokens computed as grpo_loss does; old_logp is that minus
  `shift` [N] on each completion's tokens (log-ratio `shift`), or equal to it."""
  rng = np.random.default_rng(seed)
  prompt_lengths = np.array([3, 5], np.int32)
  prompts = np.where(np.arange(5) < prompt_lengths[:, None], rng.integers(3, 500, (2, 5)), 0)
  completions = rng.integers(3, 500, (GROUPS * G, C)).astype(np.int32)
  mask = (np.arange(C) < LENGTHS[:, None]).astype(np.float32)
  logits = models.continuation_logits(MODEL, params, jnp.asarray(prompts, jnp.int32),
                                      jnp.asarray(prompt_lengths), jnp.asarray(completions))
  logp = np.asarray(tokens.token_logprobs(logits, jnp.asarray(completions)), np.float64)
  shift = np.zeros(len(mask)) if shift is None else np.asarray(shift)
  batch = {"prompt_inputs": prompts.astype(np.int32), "prompt_lengths": prompt_lengths,
           "completion_inputs": completions, "loss_mask": mask,
           "old_logp": ((logp - shift[:, None]) * mask).astype(np.float32),
           "advantages": np.asarray(advantages, np.float32)}
  return {k: jnp.asarray(v) for k, v in batch.items()}, logp


def _loss_fn(config, **overrides):
  kwargs = grpo.policy_loss_kwargs(config) | overrides
  return functools.partial(grpo.grpo_loss, model=MODEL, temperature=1.0,
                           aggregation=config.aggregation, max_len=C, loss_kwargs=kwargs)


def test_the_default_config_is_todays_loss():
  """The new fields default to today's loss: the config's keyword arguments give the value,
  gradients and metrics of the keyword arguments the trainer passed before them, and the
  advantages of group_advantages without ddof."""
  config = grpo_arith.get_config("runlocal")
  assert config.aggregation == "grpo" and config.advantage.ddof == 0
  kwargs = grpo.policy_loss_kwargs(config)
  assert (kwargs["surrogate"], kwargs["kl_importance_weight"]) == ("ppo", False)
  before = {"importance": "token", "epsilon_low": 0.2, "epsilon_high": 0.2, "dual_clip": None,
            "beta": 0.04, "kl_estimator": "k3", "entropy_coef": 0.0}
  assert {k: kwargs[k] for k in before} == before
  params, frozen = random_params(CFG, 0), random_params(CFG, 1)
  batch, _ = _batch(params, [1.0, -1.0, 0.5, -0.5], shift=[0.3, -0.2, 0.0, 0.1])
  loss_fn = jax.jit(jax.value_and_grad(_loss_fn(config), has_aux=True))
  old_fn = jax.jit(jax.value_and_grad(functools.partial(
      grpo.grpo_loss, model=MODEL, temperature=1.0, aggregation="grpo", max_len=C,
      loss_kwargs=before), has_aux=True))
  (value, (weight, metrics)), grads = loss_fn(params, batch, None, frozen)
  (old_value, (old_weight, old_metrics)), old_grads = old_fn(params, batch, None, frozen)
  assert float(value) == float(old_value) and float(weight) == float(old_weight)
  assert metrics.keys() == old_metrics.keys() and "clip_sequences" not in metrics
  jax.tree.map(np.testing.assert_array_equal, grads, old_grads)
  rewards = np.random.default_rng(0).random(16)
  np.testing.assert_array_equal(
      np.asarray(policy.group_advantages(rewards, 4, **config.advantage)),
      np.asarray(policy.group_advantages(rewards, 4, scale="group", leave_one_out=False)))


def test_sequence_clip_metric():
  """At importance='sequence' the trainer logs the fraction of completions whose sequence ratio
  is clipped: log-ratios 0.5, 0, -, -0.5 with advantages +, -, +, - clip the first (above
  1 + eps, A > 0) and the last (below 1 - eps, A < 0); the empty one is left out."""
  config = grpo_arith.get_config("runlocal")
  config.policy_loss.update({"importance": "sequence", "epsilon_low": 0.2, "epsilon_high": 0.2,
                             "beta": 0.0})
  params = random_params(CFG, 0)
  shift, adv = np.array([0.5, 0.0, 0.0, -0.5]), np.array([1.0, -1.0, 1.0, -1.0])
  batch, _ = _batch(params, adv, shift=shift)
  _, (_, metrics) = _loss_fn(config)(params, batch, None, None)
  ratio = np.exp(shift)
  clipped = [(r > 1.2 and a > 0) or (r < 0.8 and a < 0)
             for r, a, n in zip(ratio, adv, LENGTHS) if n]
  assert float(metrics["clip_sequences"]) == pytest.approx(np.mean(clipped), abs=1e-6)
  # The token fraction weighs the clipped completions by their 6 and 4 tokens of 11.
  tokens_clipped = sum(n for r, a, n in zip(ratio, adv, LENGTHS) if (r > 1.2 and a > 0)
                       or (r < 0.8 and a < 0))
  assert float(metrics["clip_low"] + metrics["clip_high"]) == pytest.approx(
      tokens_clipped / LENGTHS.sum(), abs=1e-6)


@pytest.mark.parametrize("aggregation", ["dapo", "grpo", "luspo"])
def test_accumulated_micro_batches_give_the_whole_batch(aggregation):
  """training.step accumulates micro-batches as sum_i(w_i loss_i) / sum_i(w_i). With the
  micro-batches' token counts 7 and 4 and one empty completion, 2 micro-batches give the loss
  and gradients of 1, and the loss is numpy's over the whole batch: on-policy the per-token
  loss is -A_i + beta k3_it, reduced as `aggregation` says (grpo leaving the empty completion
  out)."""
  config = grpo_arith.get_config("runlocal")
  config.aggregation = aggregation
  params, frozen = random_params(CFG, 0), random_params(CFG, 1)
  adv = np.array([1.0, -0.5, 2.0, -1.5])
  batch, logp = _batch(params, adv)
  _, ref = _batch(frozen, adv)
  loss_fn = _loss_fn(config)
  rng = jax.random.key(0)
  whole, grads, _ = step._accumulate(loss_fn, params, batch, rng, frozen, 1)
  split, split_grads, _ = step._accumulate(loss_fn, params, batch, rng, frozen, 2)
  mask = np.asarray(batch["loss_mask"], np.float64)
  u = ref - logp
  per_token = -adv[:, None] + config.policy_loss.beta * (np.exp(u) - 1 - u)
  sums, counts = (per_token * mask).sum(1), mask.sum(1)
  expected = {"dapo": sums.sum() / counts.sum(),
              "grpo": np.mean([s / n for s, n in zip(sums, counts) if n]),
              "luspo": sums.mean()}[aggregation]
  assert float(whole) == pytest.approx(expected, rel=1e-5)
  assert float(split) == pytest.approx(expected, rel=1e-5)
  # float32 sums in another order: equal to a small fraction of each parameter's gradient.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(b).max()),
               split_grads, grads)
