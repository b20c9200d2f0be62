"""The GRPO trainer's parts: rollout rows against a brute-force layout, the sampler's log-probs
against the trainer's (the train/inference mismatch), and the rollout source's exact resume."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo_arith
from reasonjax import models
from reasonjax.data import tokenizers
from reasonjax.data.tasks import get_task
from reasonjax.rewards import scoring
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.trainers import grpo
from tests.conftest import random_params

CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MODEL = models.Model(CFG)


def test_rollout_rows_against_brute_force():
  rng = np.random.default_rng(0)
  prompts = np.array([[1, 5, 6, 0, 0], [1, 7, 8, 9, 4]], np.int32)
  lengths = np.array([3, 5], np.int32)
  group, new = 3, 4
  output = types.SimpleNamespace(
      tokens=rng.integers(10, 20, (6, new)).astype(np.int32),
      lengths=np.array([4, 1, 2, 4, 3, 1], np.int32),
      logprobs=-rng.random((6, new)).astype(np.float32))
  adv = rng.normal(size=6)
  rows = grpo.rollout_rows(prompts, lengths, output, adv, seq_len=10)
  for i in range(6):
    p = prompts[i // group, :lengths[i // group]].tolist()
    c = output.tokens[i, :output.lengths[i]].tolist()
    seq = p + c
    for t in range(10):
      real = t < len(seq) - 1
      assert rows["inputs"][i, t] == (seq[t] if real else 0)
      assert rows["targets"][i, t] == (seq[t + 1] if real else 0)
      assert rows["segment_ids"][i, t] == real and rows["positions"][i, t] == (t if real else 0)
      # Target t + 1 is a completion token exactly when t + 1 >= len(p).
      is_completion = real and t + 1 >= len(p)
      assert rows["loss_mask"][i, t] == is_completion
      expected = output.logprobs[i, t + 1 - len(p)] if is_completion else 0.0
      assert rows["old_logp"][i, t] == expected
  np.testing.assert_array_equal(rows["advantages"], adv.astype(np.float32))
  with pytest.raises(ValueError, match="need seq_len >= 8, but config.seq_len=7"):
    grpo.rollout_rows(prompts, lengths, output, adv, seq_len=7)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_the_trainers(temperature):
  """The sampler's log-probs are the old policy: recomputed by the train step's loss with the same
  parameters they must agree to float32 rounding (the gap metric), and the KL to an identical
  reference and the clip fractions are 0."""
  params = random_params(CFG, 0)
  tok = tokenizers.load("synthetic")
  task = get_task("arithmetic")
  problems = task.generate(3, seed=0)
  ids = [tok.encode(task.prompt(p), add_bos=True) for p in problems]
  width = max(map(len, ids))
  prompts = np.array([x + [tok.pad_id] * (width - len(x)) for x in ids], np.int32)
  lengths = np.array([len(x) for x in ids], np.int32)
  config = sampler_lib.SamplingConfig(max_new_tokens=12, temperature=temperature, num_samples=2,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  output = jax.device_get(sampler_lib.sample(MODEL, params, prompts, lengths,
                                             jax.random.key(1), config))
  assert output.lengths.min() >= 3  # a few tokens per row at least: something to compare
  rows = grpo.rollout_rows(prompts, lengths, output, np.linspace(-1, 1, 6), seq_len=width + 12)
  _, (_, metrics) = grpo.grpo_loss(
      params, {k: jnp.asarray(v) for k, v in rows.items()}, None, params, model=MODEL,
      temperature=temperature, aggregation="grpo", max_len=12,
      loss_kwargs=dict(beta=0.04))
  assert float(metrics["tokens"]) == output.lengths.sum()
  assert float(metrics["logprob_gap_max"]) < 2e-4
  assert float(metrics["kl"]) < 1e-6 and float(metrics["clip_low"] + metrics["clip_high"]) == 0
  assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-4)


def _rollouts(minibatches=2, epochs=2):
  config = grpo_arith.get_config("runlocal")
  config.rollouts.update({"prompts": 4, "num_samples": 2, "max_new_tokens": 8})
  config.update({"minibatches": minibatches, "epochs": epochs, "seq_len": 48})
  tok = tokenizers.load("synthetic")
  task = get_task("arithmetic", **config.task.knobs)
  problems = task.generate(12, seed=0)
  scorer = scoring.Scorer(scoring.TaskVerifier(task), {"correctness": 1.0, "brevity": 0.5},
                          num_workers=0)
  return grpo.Rollouts(config, MODEL, task, tok, problems, scorer)


def test_rollouts_split_iterations_and_resume_exactly():
  params = random_params(CFG, 0)
  source = _rollouts()
  first = source.next_batch(params)
  assert first["inputs"].shape == (4, 48) and source.iteration == 1
  assert len(source.pending) == 3  # 2 epochs x 2 minibatches, one taken
  # Both epochs cover the iteration's 8 rows once each.
  epoch = np.concatenate([first["advantages"], source.pending[0]["advantages"]])
  again = np.concatenate([source.pending[1]["advantages"], source.pending[2]["advantages"]])
  np.testing.assert_array_equal(np.sort(epoch), np.sort(again))
  # The reward statistics ride along as per-row constants of the iteration.
  assert np.all(first["rollout_reward_mean"] == first["rollout_reward_mean"][0])
  state = json.loads(json.dumps(source.get_state()))  # what a checkpoint keeps
  resumed = _rollouts()
  resumed.set_state(state)
  for _ in range(5):  # the rest of iteration 0, then iteration 1 sampled afresh
    a, b = source.next_batch(params), resumed.next_batch(params)
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].dtype == b[k].dtype
      if not k.endswith(("seconds", "per_s")):  # timings differ between runs
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert source.iteration == resumed.iteration == 2


def test_rollouts_reject_uneven_minibatches():
  with pytest.raises(ValueError, match="8 rows must split into config.minibatches=3"):
    _rollouts(minibatches=3)
