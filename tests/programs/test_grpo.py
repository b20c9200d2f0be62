"""The GRPO trainer's parts: rollout rows against a brute-force layout, the sampler's log-probs
against the trainer's (the train/inference mismatch), the rollout source's exact resume, its
guidance, feedback and restarts, and rewards from a reward model: its config checks and a short
run."""

import json
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo_arith
from reasonjax import models
from reasonjax.data import batching, tokenizers
from reasonjax.data.tasks import get_task
from reasonjax.metrics import read_jsonl
from reasonjax.rewards import reward_model, scoring
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.programs import grpo
from reasonjax.search import scorers
from tests.conftest import assert_same_batches, random_params, run_main

CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MODEL = models.Model(CFG)
RM = CFG.replace(lm_head=False, score_head=True)


def test_rollout_batch_against_brute_force():
  rng = np.random.default_rng(0)
  prompts = np.array([[1, 5, 6, 0, 0], [1, 7, 8, 9, 4]], np.int32)
  lengths = np.array([3, 5], np.int32)
  new = 4
  output = types.SimpleNamespace(
      tokens=rng.integers(10, 20, (6, new)).astype(np.int32),
      lengths=np.array([4, 1, 2, 4, 3, 1], np.int32),
      logprobs=-rng.random((6, new)).astype(np.float32))
  adv = rng.normal(size=6)
  batch = grpo.rollout_batch(prompts, lengths, output, adv)
  assert set(batch) == set(grpo.BATCH_FIELDS)
  for k, dtype in grpo.BATCH_FIELDS.items():
    assert batch[k].dtype == dtype, k
  np.testing.assert_array_equal(batch["prompt_inputs"], prompts)
  np.testing.assert_array_equal(batch["prompt_lengths"], lengths)
  np.testing.assert_array_equal(batch["completion_inputs"], output.tokens)
  for i in range(6):
    for t in range(new):
      generated = t < output.lengths[i]
      assert batch["loss_mask"][i, t] == generated
      assert batch["old_logp"][i, t] == (output.logprobs[i, t] if generated else 0.0)
  np.testing.assert_array_equal(batch["advantages"], adv.astype(np.float32))


@pytest.mark.parametrize("temperature,share_prompt", [(1.0, True), (0.7, False)])
def test_sampler_logprobs_equal_the_trainers(temperature, share_prompt):
  """The sampler's log-probs are the old policy: recomputed by the train step's loss with the same
  parameters they must agree to float32 rounding (the gap metric), and the KL to an identical
  reference and the clip fractions are 0. Both ways of running the prompts."""
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
  batch = grpo.rollout_batch(prompts, lengths, output, np.linspace(-1, 1, 6))
  _, (_, metrics) = grpo.grpo_loss(
      params, {k: jnp.asarray(v) for k, v in batch.items()}, None, params, model=MODEL,
      temperature=temperature, aggregation="grpo", max_len=12,
      loss_kwargs=dict(beta=0.04), share_prompt=share_prompt)
  assert float(metrics["tokens"]) == output.lengths.sum()
  assert float(metrics["logprob_gap_max"]) < 2e-4
  assert float(metrics["kl"]) < 1e-6 and float(metrics["clip_low"] + metrics["clip_high"]) == 0
  assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-4)


def _rollouts(minibatches=2, epochs=2, rewards="verifier"):
  config = grpo_arith.get_config("runlocal")
  config.rollouts.update({"prompts": 4, "num_samples": 2, "max_new_tokens": 8})
  config.update({"minibatches": minibatches, "epochs": epochs})
  tok = tokenizers.load("synthetic")
  task = get_task("arithmetic", **config.task.knobs)
  problems = task.generate(12, seed=0)
  scorer = scoring.Scorer(scoring.TaskVerifier(task), {"correctness": 1.0, "brevity": 0.5},
                          num_workers=0)
  if rewards == "reward_model":
    rm = scorers.RewardModelScorer(models.Model(RM), random_params(RM, 1), task, tok,
                                   batch_size=8)
    scorer = reward_model.RewardModelReward(rm, task, scorer)
  return grpo.Rollouts(config, MODEL, task, tok, problems, scorer)


@pytest.mark.parametrize("rewards", ["verifier", "reward_model"])
def test_rollouts_split_iterations_and_resume_exactly(rewards):
  params = random_params(CFG, 0)
  source = _rollouts(rewards=rewards)
  first = source.next_batch(params)
  # 4 prompts x 2 samples in 2 minibatches: 2 whole groups each.
  assert first["prompt_inputs"].shape[0] == 2 and first["completion_inputs"].shape == (4, 8)
  assert source.iteration == 1 and len(source.pending) == 3  # 2 epochs x 2 minibatches, 1 taken
  # Each minibatch keeps its groups whole: a group's advantages have mean zero.
  for batch in [first] + source.pending:
    np.testing.assert_allclose(batch["advantages"].reshape(2, 2).sum(1), 0.0, atol=1e-4)

  def pairs(batches):  # (prompt, completion) of every sample
    return sorted((tuple(b["prompt_inputs"][i // 2]), tuple(b["completion_inputs"][i]))
                  for b in batches for i in range(4))

  # Both epochs cover the iteration's 8 samples once each, each with its own prompt.
  assert pairs([first, source.pending[0]]) == pairs(source.pending[1:])
  # The reward statistics ride along as per-row constants of the iteration.
  assert np.all(first["rollout_reward_mean"] == first["rollout_reward_mean"][0])
  assert ("rollout_true_accuracy" in first) == (rewards == "reward_model")
  state = json.loads(json.dumps(source.get_state()))  # what a checkpoint keeps
  resumed = _rollouts(rewards=rewards)
  resumed.set_state(state)
  for _ in range(5):  # the rest of iteration 0, then iteration 1 sampled afresh
    assert_same_batches(source.next_batch(params), resumed.next_batch(params))
  assert source.iteration == resumed.iteration == 2


class _ParityScorer:
  """Rewards 1.0 to every sample of an even-numbered problem (a group without variance) and
  j mod 2 to sample j of an odd-numbered one."""

  def __init__(self, problems):
    self.index = {p.question: i for i, p in enumerate(problems)}

  def __call__(self, problems, texts, *, group_size):
    numbers = [self.index[p.question] for p in problems]
    rewards = [1.0 if n % 2 == 0 else float(j % group_size % 2) for j, n in enumerate(numbers)]
    return np.asarray(rewards, np.float32), {"reward/correctness": 0.0}


class _RecordingScorer(_ParityScorer):
  """The parity scorer, keeping what each call graded: [(problem number, text)]."""

  def __init__(self, problems):
    super().__init__(problems)
    self.graded = []

  def __call__(self, problems, texts, *, group_size):
    self.graded.append([(self.index[p.question], t) for p, t in zip(problems, texts)])
    return super().__call__(problems, texts, group_size=group_size)


def _controlled(guidance=0, samples=2, feedback=None, restart=None, minibatches=1,
                scorer=_ParityScorer, **controls):
  config = grpo_arith.get_config("runlocal")
  config.rollouts.update({"prompts": 4, "num_samples": samples, "max_new_tokens": 8})
  config.update({"minibatches": minibatches, "epochs": 1})
  config.data_controls.update(controls)
  config.guidance.samples = guidance
  config.feedback.update(feedback or {})
  config.restart.update(restart or {})
  grpo.check_config(config)
  task = get_task("arithmetic", **config.task.knobs)
  problems = task.generate(12, seed=0)
  source = grpo.Rollouts(config, MODEL, task, tokenizers.load("synthetic"), problems,
                         scorer(problems))
  return source, problems


def test_guidance_resamples_failed_groups_with_the_hint_under_the_plain_prompt():
  """The parity scorer's rewards are at most 1: with below=1.5 every group has failed, so the
  last 2 of each group's 4 samples are the hinted sampler's rows (its tokens and log-probs as
  old_logp), the prompts stay plain, and the first 2 are the unguided run's."""
  params = random_params(CFG, 0)
  plain, problems = _controlled(samples=4)
  guided, _ = _controlled(guidance=2, samples=4)
  guided.guidance.below = 1.5
  draws, _ = _controlled(samples=4)
  indices = [int(i) for i in next(draws.prompts)["index"]]
  a, b = plain.next_batch(params), guided.next_batch(params)
  np.testing.assert_array_equal(a["prompt_inputs"], b["prompt_inputs"])
  # The hinted samples, drawn as the rollouts draw them (the iteration's key folded with 7).
  task, tok = guided.task, tokenizers.load("synthetic")
  hints = [batching.prompt_example(tok, task.prompt(problems[i].hinted(guided.guidance.hint)),
                                   0)["prompt"] for i in indices]
  width = max(len(h) for h in hints)
  hinted = jax.tree.map(np.asarray, sampler_lib.sample(
      MODEL, params, np.stack([np.pad(h, (0, width - len(h))) for h in hints]),
      np.asarray([len(h) for h in hints], np.int32),
      jax.random.fold_in(jax.random.fold_in(jax.random.key(guided.seed + 3), 0), 7),
      guided.sampling.replace(num_samples=2)))
  tokens, logps = hinted.tokens.reshape(4, 2, -1), (hinted.logprobs * hinted.mask).reshape(4, 2, -1)
  plain_prompts = [batching.prompt_example(tok, task.prompt(problems[i]), i)["prompt"]
                   for i in indices]
  for slot, row in enumerate(b["prompt_inputs"]):  # the minibatch's group order
    group = [k for k, p in enumerate(plain_prompts)
             if np.array_equal(row[:len(p)], p) and not row[len(p):].any()]
    assert len(group) == 1
    mine, old = (b[k].reshape(4, 4, -1)[slot] for k in ("completion_inputs", "old_logp"))
    np.testing.assert_array_equal(mine[:2], a["completion_inputs"].reshape(4, 4, -1)[slot][:2])
    np.testing.assert_array_equal(mine[2:], tokens[group[0]])
    np.testing.assert_allclose(old[2:], logps[group[0]], rtol=1e-6)
  assert b["rollout_guided_groups"][0] == 1.0 and "rollout_guided_groups" not in a


def test_feedback_schedule_goes_linearly_to_its_final_fraction():
  section = grpo_arith.get_config("runlocal").feedback
  section.update({"fraction": 0.5, "final_fraction": 0.1, "decay_iterations": 4})
  for iteration, expected in [(0, 0.5), (1, 0.4), (2, 0.3), (4, 0.1), (10, 0.1)]:
    assert grpo.feedback_fraction(section, iteration) == pytest.approx(expected)
  section.decay_iterations = 0
  assert grpo.feedback_fraction(section, 7) == 0.5


@pytest.mark.parametrize("shaping", ["positive", "none"])
def test_feedback_appends_the_teachers_text_and_the_policy_continues_from_it(shaping):
  """The parity scorer's rewards are at most 1: with below=1.5 every completion fails and, at
  fraction 1, gets feedback. Each row is then the unguided run's attempt without its EOS, a
  feedback text with its problem's answer (0 as old_logp; in the loss per `shaping`), and a
  continuation whose sampler log-probs are those the trainer computes for it given everything
  before it (a continuation placed at the wrong offset would not match)."""
  params = random_params(CFG, 0)
  plain, problems = _controlled(samples=4)
  fed, _ = _controlled(samples=4, feedback={"fraction": 1.0, "below": 1.5, "max_tokens": 96,
                                            "shaping": shaping})
  draws, _ = _controlled(samples=4)
  indices = [int(i) for i in next(draws.prompts)["index"]]
  a, b = plain.next_batch(params), fed.next_batch(params)
  assert b["completion_inputs"].shape == (16, 8 + 96)
  assert b["rollout_feedback_samples"][0] == 1.0 and "rollout_feedback_samples" not in a
  tok = tokenizers.load("synthetic")
  plain_prompts = [batching.prompt_example(tok, plain.task.prompt(problems[i]), i)["prompt"]
                   for i in indices]
  continued = 0
  for r in range(16):
    prompt = b["prompt_inputs"][r // 4]
    group = [i for i, p in zip(indices, plain_prompts)
             if np.array_equal(prompt[:len(p)], p) and not prompt[len(p):].any()]
    assert len(group) == 1
    length = int(a["loss_mask"][r].sum())
    attempt = length - (a["completion_inputs"][r, length - 1] == tok.eos_id)
    np.testing.assert_array_equal(b["completion_inputs"][r, :attempt],
                                  a["completion_inputs"][r, :attempt])
    np.testing.assert_array_equal(b["old_logp"][r, :attempt], a["old_logp"][r, :attempt])
    marks = np.flatnonzero(b["feedback_mask"][r])
    note = tok.decode(b["completion_inputs"][r, marks].tolist())
    answer = problems[group[0]].answer
    assert note in [t.format(answer=answer) for t in grpo_arith.FEEDBACK_TEXTS]
    np.testing.assert_array_equal(marks, np.arange(attempt, attempt + len(marks)))
    assert not b["old_logp"][r, marks].any()
    trained = shaping == "positive" and b["advantages"][r] > 0
    assert np.all(b["loss_mask"][r, marks] == trained)
    continued += (b["loss_mask"][r, marks[-1] + 1:] > 0).sum()
  assert continued > 0  # the policy wrote something after the feedback
  # Every token the loss sees: the sampler's log-prob equals the trainer's given the row.
  _, (_, metrics) = grpo.grpo_loss(
      params, {k: jnp.asarray(v) for k, v in b.items()}, None, None, model=MODEL,
      temperature=fed.sampling.temperature, aggregation="grpo", max_len=104, loss_kwargs={})
  assert float(metrics["logprob_gap_max"]) < 2e-4


def test_feedback_tokens_count_as_the_policys_own_in_the_loss():
  """With feedback_mask, the loss and its gradient are those of the batch whose old_logp on the
  marked tokens is the current policy's log-prob (ratio 1 there)."""
  params = random_params(CFG, 0)
  source, _ = _controlled(samples=4, feedback={"fraction": 1.0, "below": 1.5, "max_tokens": 96,
                                               "shaping": "all"})
  batch = {k: jnp.asarray(v) for k, v in source.next_batch(params).items()}
  kwargs = dict(model=MODEL, temperature=1.0, aggregation="grpo", max_len=104,
                loss_kwargs=dict(epsilon_low=0.2, epsilon_high=0.2))
  logits = models.continuation_logits(MODEL, params, batch["prompt_inputs"],
                                      batch["prompt_lengths"], batch["completion_inputs"])
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                             batch["completion_inputs"][..., None], -1)[..., 0]
  marks = batch.pop("feedback_mask")
  # Off the marked tokens, an old policy away from the current one, so that clipping matters.
  reference = batch | {"old_logp": jnp.where(marks > 0, logp, batch["old_logp"] - 0.3)}
  marked = reference | {"old_logp": batch["old_logp"] - 0.3, "feedback_mask": marks}
  loss = lambda p, b: grpo.grpo_loss(p, b, None, None, **kwargs)[0]  # noqa: E731
  (want, want_grad), (got, got_grad) = (jax.value_and_grad(loss)(params, x)
                                        for x in (reference, marked))
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("update, message", [
    ({"fraction": 1.5}, "config.feedback: fraction=1.5 and final_fraction=0.0 must be"),
    ({"fraction": 0.5, "shaping": "negative"},
     "config.feedback.shaping='negative'; expected one of ['positive', 'all', 'none']"),
    ({"fraction": 0.5, "texts": ()}, "config.feedback: texts=() must hold at least one text"),
])
def test_check_config_rejects_bad_feedback_fields(update, message):
  config = grpo_arith.get_config("runlocal")
  config.feedback.update(update)
  with pytest.raises(ValueError, match=re.escape(message)):
    grpo.check_config(config)


def test_feedback_longer_than_its_budget_is_refused_by_name():
  source, _ = _controlled(samples=4, feedback={"fraction": 1.0, "below": 1.5, "max_tokens": 8})
  with pytest.raises(ValueError, match=r"config.feedback.texts\[\d\] takes \d+ tokens for"):
    source.next_batch(random_params(CFG, 0))


# Earlier trajectories to restart from, [problem number, text, right], as the buffer keeps them
# (the runlocal task's problems 0-11 have 1 or 2 steps; a policy may write more). A wrong one
# takes the cue (22 tokens) after its prefix; each step takes 8-10 tokens; the first step of
# the last does not fit 40 tokens with the cue.
BUFFER = [[0, "8 - 3 = 5\n5 + 1 = 6\n#### 6", True],
          [1, "1 + 8 = 9\n9 - 0 = 9\n9 + 0 = 9\n#### 9", True],
          [3, "5 - 2 = 4\n4 - 1 = 3\n3 + 0 = 3\n3 + 1 = 4\n#### 4", False],
          [7, "5 + 7 = 12\n12 - 6 = 6\n6 + 1 = 7\n7 + 1 = 8\n8 - 2 = 6\n6 - 1 = 5\n#### 5",
           False],
          [9, "6 - 5 = 1\n1 + 3 = 5\n#### 5", False],
          [11, "5 + 3 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 = 8\n8 = 8\n#### 8", False]]
RESTART = {"fraction": 0.75, "max_prefix_tokens": 40}


def _with_buffer(source, buffer):
  state = source.get_state()
  source.set_state(state | {"buffer": json.loads(json.dumps(buffer))})


def _expected_prompts(source, problems, indices, buffer, iteration, width):
  """Brute force, the draws replicated as the rollouts make them (from config.seed, the
  iteration and the draw, 23): each slot's (problem, prompt text, lead, (k, drawn k, right)
  for a restart). The steps: the lines before the answer line."""
  tok, task, cue = tokenizers.load("synthetic"), source.task, source.restart.cue
  out = [(i, task.prompt(problems[i]), "", None) for i in indices]
  count = min(max(1, round(source.restart.fraction * len(indices))), len(buffer))
  draw = np.random.default_rng([source.seed, iteration, 0, 23])
  picks = draw.choice(len(buffer), size=count, replace=False)
  for slot, pick in zip(range(len(indices) - count, len(indices)), picks):
    i, text, right = buffer[pick]
    steps = text.split("\n#### ")[0].split("\n")
    drawn = int(draw.integers(1, len(steps)))
    for k in range(drawn, 0, -1):
      lead = "".join(step + "\n" for step in steps[:k]) + ("" if right else cue)
      prompt = task.prompt(problems[i]) + lead
      if len(tok.encode(prompt, add_bos=True)) <= width:
        out[slot] = (i, prompt, lead, (k, drawn, right))
        break
  return out


@pytest.mark.parametrize("feedback", [False, True], ids=["plain", "feedback"])
def test_restarts_continue_a_buffered_prefix_and_are_scored_on_the_whole_solution(feedback):
  """Iteration 0 has no buffer: plain groups, prompts already padded to the plain width + 40.
  Then, from a given buffer, 3 of each iteration's 4 groups restart: each group's prompt,
  decoded, is its problem's prompt + the first k steps of a buffered trajectory (+ the cue when
  it was wrong), k the drawn one or, where that does not fit, the most that do; its samples are
  scored on prefix + completion; the sampler's log-probs equal the trainer's under the longer
  prompt (with feedback too, whose continuation goes on from restart prompt + attempt +
  feedback)."""
  params = random_params(CFG, 0)
  fb = {"fraction": 1.0, "below": 1.5, "max_tokens": 96} if feedback else None
  source, problems = _controlled(samples=4, restart=RESTART, feedback=fb,
                                 scorer=_RecordingScorer)
  draws, _ = _controlled()
  tok, task = tokenizers.load("synthetic"), source.task
  width = max(len(batching.prompt_example(tok, task.prompt(p), 0)["prompt"])
              for p in problems) + 40
  seen = []
  for iteration in range(3):
    indices = [int(i) for i in next(draws.prompts)["index"]]
    buffer = [list(x) for x in source.buffer]
    expected = _expected_prompts(source, problems, indices, buffer, iteration, width)
    batch = source.next_batch(params)
    assert batch["prompt_inputs"].shape == (4, width)
    # Each group of the (shuffled) batch: its decoded prompt, right-padded with zeros.
    decoded = []
    for row, length in zip(batch["prompt_inputs"], batch["prompt_lengths"]):
      assert not row[length:].any()
      decoded.append(tok.decode(row[:length].tolist()))
    assert sorted(decoded) == sorted(prompt for _, prompt, _, _ in expected)
    restarts = [e for e in expected if e[3]]
    assert batch["rollout_restart_groups"][0] == len(restarts) / 4
    graded = source.scorer.graded[-1]  # the iteration's last grading: every row, slot order
    right = []
    for slot, (i, prompt, lead, how) in enumerate(expected):
      group = decoded.index(prompt)
      for j in range(4):
        r = group * 4 + j
        # The row's tokens: generated (loss_mask) or the teacher's (feedback_mask, which the
        # loss may leave out).
        kept = batch["loss_mask"][r] + batch.get("feedback_mask", batch["loss_mask"])[r]
        ids = batch["completion_inputs"][r, :np.flatnonzero(kept).max() + 1].tolist()
        text = tok.decode(ids[:-1] if ids[-1] == tok.eos_id else ids)
        assert graded[slot * 4 + j] == (i, lead + text)
        if how:
          right.append(i % 2 == 0 or j % 2 == 1)  # the parity scorer's rewards
    assert batch["rollout_restart_right"][0] == pytest.approx(np.mean(right) if right else 0.0)
    seen += [how for _, _, _, how in restarts]
    _, (_, metrics) = grpo.grpo_loss(
        params, {k: jnp.asarray(v) for k, v in batch.items()}, None, None, model=MODEL,
        temperature=source.sampling.temperature, aggregation="grpo",
        max_len=batch["completion_inputs"].shape[1], loss_kwargs={})
    assert float(metrics["logprob_gap_max"]) < 2e-4
    if iteration == 0:
      assert not restarts
      _with_buffer(source, BUFFER)  # what the policy might have written
  # The draws covered the cases: a right and a wrong (cued) prefix, and one cut back.
  assert {right for _, _, right in seen} == {True, False}
  assert any(k < drawn for k, drawn, _ in seen)


def test_restart_buffer_keeps_plain_samples_of_two_steps_or_more_oldest_out():
  source, _ = _controlled(samples=2, restart={"fraction": 0.5, "buffer": 3, "below": 0.5})
  texts = ["a\nb\n#### 1", "a\n#### 1", "x\ny\n", "p\nq\nr\n#### 2", "\n\nm\n\n#### 3",
           "s\n\n t\n#### 4"]
  scores = np.asarray([1.0, 1.0, 0.2, 0.5, 0.0, 0.5], np.float32)
  draw = {"first": (texts, scores), "restarted": np.array([False, True, False]),
          "batch": {"index": np.array([7, 8, 9], np.int32)}}
  source._remember(draw, np.array([0, 1, 2]))
  # Brute force: the rows of plain groups (not group 1) with 2 or more non-empty lines before
  # the answer line; right at reward >= 0.5.
  steps = lambda t: [x for x in t.split("####")[0].split("\n") if x.strip()]  # noqa: E731
  want = [[[7, 8, 9][r // 2], texts[r], bool(scores[r] >= 0.5)] for r in range(6)
          if r // 2 != 1 and len(steps(texts[r])) >= 2]
  assert want == [[7, texts[0], True], [9, texts[5], True]]
  assert source.buffer == want
  source._remember(draw, np.array([2, 0]))  # two more: the oldest leaves
  assert source.buffer == (want + want[::-1])[-3:]


def test_restarts_compose_with_dynamic_sampling_and_resume_exactly():
  """A restart iteration with dynamic sampling (two draws, each with its own restarts; the
  parity scorer makes the even problems' groups uninformative): resumed after a JSON round trip
  of the state, mid-iteration before it, the batches are the same; the restarted fraction is
  that of the kept groups whose prompt is not a plain one."""
  params = random_params(CFG, 0)
  kwargs = dict(samples=2, minibatches=2, restart=RESTART, dynamic_sampling=True,
                max_sampling_rounds=2)
  source, problems = _controlled(**kwargs)
  source.next_batch(params)  # iteration 0's first minibatch
  _with_buffer(source, BUFFER)
  resumed, _ = _controlled(**kwargs)
  resumed.set_state(json.loads(json.dumps(source.get_state())))
  batches = []
  for _ in range(3):  # the rest of iteration 0, then iteration 1, which restarts
    a = source.next_batch(params)
    assert_same_batches(a, resumed.next_batch(params))
    batches.append(a)
  assert source.buffer == resumed.buffer and source.iteration == resumed.iteration == 2
  assert batches[0]["rollout_restart_groups"][0] == 0
  tok, task = tokenizers.load("synthetic"), source.task
  plain = {task.prompt(p) for p in problems}
  restarted = [tok.decode(row[:n].tolist()) not in plain for b in batches[1:]
               for row, n in zip(b["prompt_inputs"], b["prompt_lengths"])]
  assert batches[1]["rollout_restart_groups"][0] == np.mean(restarted) > 0


@pytest.mark.parametrize("update, message", [
    ({"fraction": 1.5}, "config.restart.fraction=1.5: expected a share in [0, 1]"),
    ({"fraction": 0.5, "buffer": 0}, "config.restart.buffer=0: expected >= 1"),
    ({"fraction": 0.5, "max_prefix_tokens": 0},
     "config.restart.max_prefix_tokens=0: expected >= 1"),
])
def test_check_config_rejects_bad_restart_fields(update, message):
  config = grpo_arith.get_config("runlocal")
  config.restart.update(update)
  with pytest.raises(ValueError, match=re.escape(message)):
    grpo.check_config(config)


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_dynamic_sampling_keeps_informative_groups_and_resumes_exactly(rounds):
  params = random_params(CFG, 0)
  source, problems = _controlled(dynamic_sampling=True, max_sampling_rounds=rounds)
  draws, _ = _controlled()  # the same prompt order, read without sampling
  batch = source.next_batch(params)
  # Brute force: draw prompt batches until 4 odd (informative) problems or `rounds` draws;
  # keep the informative ones in draw order, then fill with the rest in draw order.
  drawn = []
  while len(drawn) < rounds and sum(i % 2 for d in drawn for i in d) < 4:
    drawn.append([int(i) for i in next(draws.prompts)["index"]])
  flat = [i for d in drawn for i in d]
  expected = ([i for i in flat if i % 2] + [i for i in flat if not i % 2])[:4]
  tok, width = tokenizers.load("synthetic"), batch["prompt_inputs"].shape[1]
  task = get_task("arithmetic", **grpo_arith.get_config("runlocal").task.knobs)

  def prompt(i):
    ids = batching.prompt_example(tok, task.prompt(problems[i]), i)["prompt"]
    return tuple(np.pad(ids, (0, width - len(ids))))

  assert sorted(map(tuple, batch["prompt_inputs"])) == sorted(prompt(i) for i in expected)
  assert batch["rollout_sampling_rounds"][0] == len(drawn)
  informative = np.abs(batch["advantages"].reshape(4, 2)).sum(1) > 0
  assert informative.sum() == sum(i % 2 for i in expected)
  assert batch["rollout_zero_variance_groups"][0] == np.mean([i % 2 == 0 for i in expected])
  state = json.loads(json.dumps(source.get_state()))
  resumed, _ = _controlled(dynamic_sampling=True, max_sampling_rounds=rounds)
  resumed.set_state(state)
  assert_same_batches(source.next_batch(params), resumed.next_batch(params))


def test_overlong_filter_and_soft_penalty():
  """Truncated completions leave the loss; the reward is the scorer's plus the penalty of each
  completion's length (4 cache tokens of 8)."""
  params = random_params(CFG, 0)
  plain, problems = _controlled()
  filtered, _ = _controlled(overlong_filter=True, overlong_cache=4, overlong_weight=0.5)
  a, b = plain.next_batch(params), filtered.next_batch(params)
  np.testing.assert_array_equal(a["completion_inputs"], b["completion_inputs"])
  lengths = a["loss_mask"].sum(1)
  eos = tokenizers.load("synthetic").eos_id
  truncated = (lengths == 8) & (a["completion_inputs"][:, 7] != eos)
  assert truncated.any()
  np.testing.assert_array_equal(b["loss_mask"], a["loss_mask"] * ~truncated[:, None])
  penalty = np.clip((8 - 4 - lengths) / 4, -1, 0)
  assert b["rollout_reward_mean"][0] == pytest.approx(
      a["rollout_reward_mean"][0] + 0.5 * penalty.mean(), abs=1e-6)


def test_rollouts_reject_uneven_minibatches():
  with pytest.raises(ValueError, match="prompts=4 groups must split into config.minibatches=3"):
    _rollouts(minibatches=3)


# ----------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Hugging Face folders of a random policy and a random reward model (a score head)."""
  root = tmp_path_factory.mktemp("grpo_rm")
  for name, cfg, seed in (("policy", CFG, 0), ("rm", RM, 1)):
    models.save_hf(cfg, random_params(cfg, seed), str(root / name))
  return str(root / "policy"), str(root / "rm")


@pytest.mark.parametrize("field, value, message", [
    ("granularity", "xrm",
     "config.reward_model.granularity='xrm'; expected one of ['hrm', 'orm', 'prm']"),
    ("aggregation", "median",
     "config.reward_model.aggregation='median'; expected one of ['last', 'mean', 'min', 'prod']"),
    ("path", "/nonexistent/hf",
     "config.reward_model.path='/nonexistent/hf': no config.json there; expected a reward_model "
     "run's export"),
    ("batch_size", 0, "config.reward_model.batch_size=0; expected a positive integer"),
], ids=["granularity", "aggregation", "path", "batch_size"])
def test_check_config_rejects_bad_reward_model_fields(field, value, message):
  config = grpo_arith.get_config("runlocal")
  grpo.check_config(config)  # the defaults: verifier rewards
  config.reward_model[field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    grpo.check_config(config)


def test_make_scorer_picks_the_verifier_or_the_reward_model(checkpoints):
  config = grpo_arith.get_config("runlocal")
  task, tok = get_task("arithmetic", **config.task.knobs), tokenizers.load("synthetic")
  assert isinstance(grpo.make_scorer(config, task, tok), scoring.Scorer)
  config.reward_model.update({"path": checkpoints[1], "granularity": "orm", "batch_size": 8})
  grpo.check_config(config)
  scorer = grpo.make_scorer(config, task, tok)
  assert isinstance(scorer, reward_model.RewardModelReward)
  assert scorer.rm.granularity == "orm" and scorer.truth.weights == {"correctness": 1.0}


def test_grpo_runlocal_with_a_reward_model_reports_true_accuracy(checkpoints, tmp_path):
  """Two iterations from a random policy, rewarded by a random reward model, as a user runs it
  (one CPU device): each step's metrics hold the reward model's mean reward and the verifier's
  true accuracy, both in [0, 1], and no verifier reward."""
  policy, rm = checkpoints
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/grpo_arith.py:runlocal", f"--config.init_from={policy}",
                 f"--config.reward_model.path={rm}", "--config.reward_model.batch_size=8",
                 "--config.steps=2", "--config.checkpoint_every=2",
                 "--config.rollouts.prompts=4", "--config.rollouts.num_samples=2",
                 "--config.rollouts.max_new_tokens=16", "--config.eval.num_problems=4",
                 "--config.eval.num_samples=0", "--config.eval.k=1",
                 "--config.eval.max_new_tokens=16", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
          if "rollout_true_accuracy" in r]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert 0.0 <= r["rollout_reward_mean"] <= 1.0 and 0.0 <= r["rollout_true_accuracy"] <= 1.0
    assert "rollout_reward_correctness" not in r and "rollout_verifier_errors" in r
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert "grpo_accuracy" in json.load(f)


@pytest.mark.parametrize("keep_unsolved", [False, True])
def test_select_problems_keeps_the_hard_but_solvable(keep_unsolved, monkeypatch):
  """Given each problem's simulations and whether it was solved, the kept indices against a
  direct filter; too few for a batch of prompts is refused with the numbers."""
  sims = np.asarray([1, 9, 12, 32, 3, 8, 32, 20])
  solved = np.asarray([True, True, True, False, True, True, False, True])
  monkeypatch.setattr(grpo.methods, "simulations_to_solve",
                      lambda search, n: (sims[:len(search.problems)],
                                         solved[:len(search.problems)]))
  config = grpo_arith.get_config("runlocal")
  config.data_selection.update({"simulations": 32, "min_simulations": 8,
                                "keep_unsolved": keep_unsolved})
  config.rollouts.prompts = 2
  task = get_task("arithmetic", **config.task.knobs)
  problems = task.generate(8, seed=0)
  out = grpo.select_problems(config, MODEL, None, task, tokenizers.load("synthetic"), problems)
  want = [i for i in range(8) if (solved[i] and sims[i] >= 8) or (keep_unsolved and not solved[i])]
  assert out == {"simulations": sims.tolist(), "solved": solved.tolist(), "kept": want}
  config.rollouts.prompts = 8
  with pytest.raises(ValueError, match=f"kept {len(want)} of 8 problems \\(6 solved within 32"):
    grpo.select_problems(config, MODEL, None, task, tokenizers.load("synthetic"), problems)


def test_the_selection_is_made_once_and_refused_under_other_settings(tmp_path):
  from reasonjax.programs import stages
  config = grpo_arith.get_config("runlocal")
  config.data_selection.update({"simulations": 32, "min_simulations": 8})
  calls = []
  make = lambda: calls.append(1) or {"kept": [len(calls)]}  # noqa: E731
  assert grpo.selection(config, str(tmp_path), make) == {"kept": [1]}
  assert grpo.selection(config, str(tmp_path), make) == {"kept": [1]} and len(calls) == 1
  config.data_selection.min_simulations = 16
  with pytest.raises(stages.SettingsChanged, match="min_simulations"):
    grpo.selection(config, str(tmp_path), make)
  assert len(calls) == 1


@pytest.mark.slow
def test_thinklite_runlocal_trains_on_the_selected_problems(sft_workdir, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/thinklite_arith.py:runlocal",
                 f"--config.init_from={sft_workdir}/hf", "--config.steps=2",
                 "--config.checkpoint_every=2", "--config.eval.num_problems=4",
                 workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(tmp_path, "selection.json")) as f:
    selection = json.load(f)
  assert len(selection["simulations"]) == len(selection["solved"]) == 24
  assert selection["kept"] == [i for i, (n, ok) in enumerate(zip(selection["simulations"],
                                                                  selection["solved"]))
                               if not ok or n >= 1]
  assert all(1 <= n <= 8 + 2 * 4 for n in selection["simulations"])  # a round may go over
