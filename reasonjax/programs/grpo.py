"""Online RL with verifiable rewards: GRPO and its variants (DAPO, Dr. GRPO, GSPO, RLOO, CISPO,
SAPO, LUSPO).

    python -m reasonjax.main --config=configs/grpo_arith.py --workdir=runs/grpo

Each iteration takes `rollouts.prompts` training problems and samples `rollouts.num_samples`
completions of each with the jitted sampler, reading the very parameter arrays the train step
updates (no copy to an inference engine, so nothing to keep in sync). The completions are
decoded and scored on the host by `rewards.scoring.Scorer` worker processes; the rewards become
group-relative advantages (`losses.policy.group_advantages`), and the iteration's groups are
trained on for `epochs` epochs of `minibatches` jitted steps each (`losses.policy`), with the
sampler's log-probs as the old policy. The frozen reference is the starting policy. A batch
holds each prompt once and its samples (whole groups), and with `share_prompt` the loss runs
each prompt through the model once for all of its samples.

The starting policy is `config.init_from` (a Hugging Face folder) or the export of the nested
SFT run `config.sft`, trained first into `workdir/sft`. It is evaluated before training
(`workdir/start_eval.json`), and `workdir/results.json` puts the two evaluations side by side.

With `config.reward_model.path` (a reward_model run's export, `workdir/hf`), the reward is that
model's solution score instead (`rewards.reward_model`: a probability in [0, 1], its step scores
aggregated with `reward_model.aggregation` for prm/hrm, the one score for orm), and
`config.rewards` is unused. The verifier still grades every completion, only for the metrics
(`rollout_true_accuracy`, beside the reward model's `rollout_reward_mean`): reward hacking shows
as the reward rising while the true accuracy does not.

DAPO's data controls (`config.data_controls`): dynamic sampling draws more prompt batches until
the iteration has `rollouts.prompts` groups whose rewards differ (a group of equal rewards has
no advantage and so no gradient), filling with equal-reward groups after `max_sampling_rounds`
draws; overlong filtering leaves truncated completions out of the loss; the soft overlong
penalty is added to the rewards (`rewards.scoring.overlong_penalty`). `rollouts.cutoff_fraction`
stops decoding once that fraction of the rows has ended (`sampling.SamplingConfig`).
Guide-GRPO (`config.guidance`): in a group whose rewards are all below `guidance.below`, the
last `guidance.samples` completions are sampled again with the answer as a hint in the prompt and
trained on under the plain prompt, with the hinted sampler's log-probs as the old policy (the
importance weight of these off-policy samples; `Rollouts._guide`).
ThinkTuning's teacher feedback (`config.feedback`): a failed completion gets, with a scheduled
probability, a teacher's feedback appended, and the policy goes on from there; the loss takes
the feedback tokens as the policy's own (ratio 1) and, with `shaping="positive"`, trains on them
only where the completion's advantage is positive (`Rollouts._feedback`).
Satori's restart and explore (`config.restart`): from the second iteration on, a share of each
prompt batch's groups restart from the middle of an earlier iteration's trajectory (the first
steps of a right or wrong solution, a reflection cue after a wrong one's), so that the policy
practises continuing and correcting a solution; they are scored on prefix + completion
(`Rollouts._restarts`).
ThinkLite's data selection (`config.data_selection`, `select_problems`): before training, each
problem's difficulty is the MCTS simulations its tree needs to hold a right answer; GRPO then
trains on the hard but solvable ones (`workdir/selection.json`).
`config.train_split="test"` trains on the evaluation's problems (test-time RL, with rewards that
do not read the answers).

Rollout statistics ride in the batch as per-sample constants (`rollout_*` fields), so each step's
metrics line holds the numbers of the rollouts it trained on. A checkpoint keeps the iteration's
untrained minibatches, so a resumed run trains on the same rollouts.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from reasonjax import distributed, models, sharding
from reasonjax.data import batching
from reasonjax.data.tasks import Task
from reasonjax.data.tasks.base import SPLITS, parse_steps
from reasonjax.losses import policy, tokens
from reasonjax.rewards import reward_model as rm_reward, scoring
from reasonjax.search import methods
from reasonjax.search.policy import StepPolicy
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.sampling import texts as sampling_texts
from reasonjax.programs import stages
from reasonjax.training import experiment, loop

# Which feedback tokens the loss trains on (config.feedback.shaping): those of completions with
# a positive advantage, all of them, or none.
FEEDBACK_SHAPING = ("positive", "all", "none")

# Fields of a rollout batch besides the rollout statistics, with their dtypes: each group's
# prompt once ([B, P] and [B]), its samples prompt-major ([B * G, C] and [B * G]).
BATCH_FIELDS = {"prompt_inputs": np.int32, "prompt_lengths": np.int32,
                "completion_inputs": np.int32, "loss_mask": np.float32, "old_logp": np.float32,
                "advantages": np.float32}


def grpo_loss(params, batch, rng, frozen, *, model, temperature: float, aggregation: str,
              max_len: int, loss_kwargs: dict, share_prompt: bool = True):
  """The GRPO-family loss of `losses.policy` on a rollout batch (`rollout_batch`); `frozen` holds
  the reference parameters (None without a KL term). Log-probs are those of
  softmax(logits / temperature), the distribution the sampler drew from; the prompts run through
  the model once per group when `share_prompt` (`models.continuation_logits`). Weight: as
  `policy.aggregate` says for `aggregation`."""
  del rng
  completions = batch["completion_inputs"]

  def logits_of(p):
    logits = models.continuation_logits(model, p, batch["prompt_inputs"],
                                        batch["prompt_lengths"], completions,
                                        share_prefix=share_prompt)
    return tokens.at_least_f32(logits) / temperature

  logits = logits_of(params)
  logp = tokens.token_logprobs(logits, completions)
  entropy = tokens.token_entropy(logits)
  ref_logp = None
  if frozen is not None:
    ref_logp = jax.lax.stop_gradient(tokens.token_logprobs(logits_of(frozen), completions))
  mask = batch["loss_mask"]
  old_logp = batch["old_logp"]
  if "feedback_mask" in batch:
    # The teacher's tokens have no sampler log-prob: the ratio is 1 there, and the gradient
    # that of A * log pi, as if the policy had written them.
    old_logp = jnp.where(batch["feedback_mask"] > 0, jax.lax.stop_gradient(logp), old_logp)
  per_token, stats = policy.policy_loss(logp, old_logp, batch["advantages"], mask,
                                        ref_logp=ref_logp, entropy=entropy, **loss_kwargs)
  value, weight = policy.aggregate(per_token, mask, aggregation, max_len=max_len)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  mean = lambda x: jnp.sum(x * mask) / count
  # |logp - old_logp|: on an iteration's first update, the sampler-vs-trainer mismatch alone.
  gap = jnp.abs(logp - old_logp) * mask
  metrics = {"loss": value, "clip_low": mean(stats["clipped_low"]),
             "clip_high": mean(stats["clipped_high"]), "ratio": mean(stats["ratio"]),
             "entropy": mean(stats["entropy"]), "logprob_gap_mean": jnp.sum(gap) / count,
             "logprob_gap_max": jnp.max(gap), "tokens": jnp.sum(mask)}
  if "kl" in stats:
    metrics["kl"] = mean(stats["kl"])
  if loss_kwargs.get("importance") == "sequence":
    # GSPO clips whole completions: the token fraction above weighs them by their length.
    metrics["clip_sequences"] = policy.sequence_clip_fraction(stats, mask)
  metrics |= {k: jnp.mean(v) for k, v in batch.items() if k.startswith("rollout_")}
  return value, (weight, metrics)


def rollout_batch(prompts: np.ndarray, prompt_lengths: np.ndarray, output,
                  advantages: np.ndarray) -> dict[str, np.ndarray]:
  """The fields of `BATCH_FIELDS` from a sampling call's host copy.

  prompts: int32 [B, P] right-padded, prompt_lengths [B]; output: a `SamplingOutput` with
  N = B * G rows (prompt-major); advantages [N]. The loss covers each completion's generated
  tokens (its EOS included), and old_logp holds the sampler's log-prob of each.
  """
  mask = (np.arange(output.tokens.shape[1])[None] < output.lengths[:, None]).astype(np.float32)
  return {"prompt_inputs": np.asarray(prompts, np.int32),
          "prompt_lengths": np.asarray(prompt_lengths, np.int32),
          "completion_inputs": np.asarray(output.tokens, np.int32), "loss_mask": mask,
          "old_logp": np.asarray(output.logprobs, np.float32) * mask,
          "advantages": np.asarray(advantages, np.float32)}


class Rollouts:
  """The on-policy batch source of `loop.train`: `next_batch(params)` gives the next minibatch,
  sampling a new iteration's rollouts with `params` when the last one's are used up.

  `scorer(problems, texts, group_size=...) -> (rewards [N], metrics)`: a `scoring.Scorer` or a
  `rewards.reward_model.RewardModelReward` (`make_scorer`). `get_state()` / `set_state()` save
  and restore the prompt iterator, the iteration count, the untrained minibatches and the
  restart buffer (a JSON-able dict), so a resumed run trains on what it would have.
  """

  def __init__(self, config, model, task: Task, tokenizer, problems, scorer):
    section = config.rollouts
    self.model, self.tokenizer, self.problems, self.task = model, tokenizer, problems, task
    self.guidance, self.feedback, self.restart = config.guidance, config.feedback, config.restart
    self.scorer, self.seed = scorer, config.seed
    self.group, self.epochs, self.minibatches = (section.num_samples, config.epochs,
                                                 config.minibatches)
    self.advantage = dict(config.advantage)
    self.controls = config.data_controls
    self.sampling = sampler_lib.sampling_config(section, tokenizer,
                                                cutoff_fraction=section.cutoff_fraction)
    _check_minibatches(section.prompts, config.minibatches)
    examples = [batching.prompt_example(tokenizer, task.prompt(p), i)
                for i, p in enumerate(problems)]
    width = max(len(e["prompt"]) for e in examples)
    self.prompts = batching.batches(examples, batch_size=section.prompts, seq_len=width,
                                    seed=config.seed)
    self.iteration = 0
    self.pending: list[dict[str, np.ndarray]] = []
    # Restart buffer: [problem index, completion text, right] of earlier iterations' plain
    # samples with 2 steps or more, oldest first.
    self.buffer: list[list] = []

  def next_batch(self, params) -> dict[str, np.ndarray]:
    """This process's rows of the next minibatch (all of it in a single-process job)."""
    if not self.pending:
      self.pending = self._iteration(params)
    batch = self.pending.pop(0)
    count, index = jax.process_count(), jax.process_index()
    groups = len(batch["prompt_inputs"]) // count
    # The loop places process i's rows i-th in the global batch: the minibatch as it is.
    return {k: v[index * groups:(index + 1) * groups] if k.startswith("prompt_") else
            v[index * groups * self.group:(index + 1) * groups * self.group]
            for k, v in batch.items()}

  def _sample(self, params, attempt: int) -> dict:
    """One prompt batch sampled and scored: the batch, its host `output`, rewards [N] (with
    the overlong penalty), the reward metrics and timings, which groups restarted (bool [B];
    None without restarts), and the texts and rewards [N] as first graded, before guidance and
    feedback (the restart buffer's candidates)."""
    prompt_batch = next(self.prompts)
    leads, restarted = [""] * len(prompt_batch["index"]), None
    if restart_on(self.restart):
      prompt_batch, leads, restarted = self._restarts(prompt_batch, attempt)
    key = jax.random.fold_in(jax.random.key(self.seed + 3), self.iteration)
    rng = key if attempt == 0 else jax.random.fold_in(key, 1000 + attempt)
    start = time.perf_counter()
    # Every process samples the same prompts (and gets every row back): the work is spread
    # over the devices of the global mesh, and each process then scores its share.
    output = sharding.to_host(sampler_lib.sample(
        self.model, params, prompt_batch["prompt"], prompt_batch["prompt_length"], rng,
        self.sampling))
    sample_s = time.perf_counter() - start
    problems = [self.problems[int(i)] for i in prompt_batch["index"] for _ in range(self.group)]
    texts = sampling_texts.decode_rows(self.tokenizer, output)
    # A restarted sample is graded as the whole solution: its group's prefix, then itself.
    leads = [lead for lead in leads for _ in range(self.group)]
    texts = [lead + text for lead, text in zip(leads, texts)]
    start = time.perf_counter()
    rewards, metrics = _score_shared(self.scorer, problems, texts, self.group)
    first = (texts, np.asarray(rewards, np.float32))
    generated = float(output.lengths.sum())
    if self.guidance.samples:
      output, rewards, metrics = self._guide(params, problems, output, texts, rewards, metrics,
                                             rng, restarted)
      generated += metrics["guided_tokens"]
    marks = None
    if feedback_on(self.feedback):
      output, rewards, metrics, marks = self._feedback(params, prompt_batch, problems, output,
                                                       rewards, metrics, rng, leads)
      generated += metrics["feedback_continued_tokens"]
    scored = np.asarray(rewards, np.float32)
    if self.controls.overlong_cache:
      penalty = scoring.overlong_penalty(output.lengths, self.sampling.max_new_tokens,
                                         self.controls.overlong_cache)
      rewards = rewards + self.controls.overlong_weight * penalty
      metrics["reward/overlong_penalty"] = float(penalty.mean())
    return {"batch": prompt_batch, "output": output, "rewards": np.asarray(rewards, np.float32),
            "scored": scored, "marks": marks, "metrics": metrics, "generated": generated,
            "restarted": restarted, "first": first, "sample_s": sample_s,
            "score_s": time.perf_counter() - start}

  def _restarts(self, prompt_batch, attempt: int):
    """Satori's restart and explore: the last round(restart.fraction * B) (at least 1) groups
    of the prompt batch are replaced by restarts from distinct buffered trajectories, drawn
    from config.seed, the iteration and the draw. A restart's prompt is its problem's prompt +
    the first k of the trajectory's s steps (k uniform in 1 .. s - 1, each step followed by the
    tokenizer's step delimiter) + `restart.cue` if it was wrong; k shrinks until the prompt
    fits the padded width, plain width + `max_prefix_tokens` (a trajectory whose first step
    does not fit leaves its group plain). Returns the batch (prompt int32 [B, P + X],
    prompt_length [B], index [B]), each group's prefix text (its lead, "" for a plain group)
    and which groups restarted, bool [B]."""
    section, delimiter = self.restart, self.tokenizer.step_delimiter
    b = len(prompt_batch["index"])
    prompts = np.pad(prompt_batch["prompt"], ((0, 0), (0, section.max_prefix_tokens)))
    lengths = np.array(prompt_batch["prompt_length"], np.int32)
    index = np.array(prompt_batch["index"], np.int32)
    leads, restarted = [""] * b, np.zeros(b, bool)
    count = min(max(1, round(section.fraction * b)), len(self.buffer))
    draw = np.random.default_rng([self.seed, self.iteration, attempt, 23])
    picks = draw.choice(len(self.buffer), size=count, replace=False)
    for slot, pick in zip(range(b - count, b), picks):
      problem, text, right = self.buffer[pick]
      steps = parse_steps(text, delimiter)
      drawn = int(draw.integers(1, len(steps)))  # buffered trajectories have 2 steps or more
      for k in range(drawn, 0, -1):
        lead = "".join(s + delimiter for s in steps[:k]) + ("" if right else section.cue)
        ids = batching.prompt_example(
            self.tokenizer, self.task.prompt(self.problems[problem]) + lead, problem)["prompt"]
        if len(ids) <= prompts.shape[1]:
          prompts[slot] = 0
          prompts[slot, :len(ids)] = ids
          lengths[slot], index[slot], leads[slot], restarted[slot] = len(ids), problem, lead, True
          break
    return {"prompt": prompts, "prompt_length": lengths, "index": index}, leads, restarted

  def _remember(self, draw: dict, groups: np.ndarray) -> None:
    """Appends the plain samples of a draw's trained `groups` with 2 steps or more to the
    restart buffer, as first sampled and scored (before guidance or feedback), right when
    scored at least `restart.below`; the oldest beyond `restart.buffer` are dropped."""
    texts, scores = draw["first"]
    delimiter = self.tokenizer.step_delimiter
    for j in groups:
      if draw["restarted"][j]:
        continue
      for r in range(j * self.group, (j + 1) * self.group):
        if len(parse_steps(texts[r], delimiter)) >= 2:
          self.buffer.append([int(draw["batch"]["index"][j]), texts[r],
                              bool(scores[r] >= self.restart.below)])
    del self.buffer[:max(0, len(self.buffer) - self.restart.buffer)]

  def _guide(self, params, problems, output, texts, rewards, metrics, rng, restarted=None):
    """Guide-GRPO: in each group whose rewards are all below `guidance.below` (a plain group:
    not one of the `restarted` [B]), the last `guidance.samples` completions are replaced by
    ones sampled with the hint in the prompt, and the group is scored again. The batch keeps
    the plain prompt and the hinted sampler's log-probs as old_logp, so the loss's ratio
    pi(o | q) / pi_old(o | q, hint) is the importance weight that corrects for the hinted
    (off-policy) samples. Returns the output, rewards and metrics (guided_groups, guided_right,
    guided_tokens) with those groups'."""
    g, h = self.group, self.guidance.samples
    failed = np.asarray(rewards).reshape(-1, g).max(1) < self.guidance.below
    if restarted is not None:
      failed &= ~restarted  # the hint goes with the plain prompt: it would drop the prefix
    failed = np.flatnonzero(failed)
    metrics = metrics | {"guided_groups": len(failed) / (len(rewards) // g)}
    if not len(failed):
      return output, rewards, metrics | {"guided_right": 0.0, "guided_tokens": 0.0}
    examples = [batching.prompt_example(
        self.tokenizer, self.task.prompt(problems[i * g].hinted(self.guidance.hint)), 0)["prompt"]
        for i in failed]
    width = max(len(e) for e in examples)
    tokens = np.stack([np.pad(e, (0, width - len(e))) for e in examples])
    lengths = np.asarray([len(e) for e in examples], np.int32)
    hinted = sharding.to_host(sampler_lib.sample(
        self.model, params, tokens, lengths, jax.random.fold_in(rng, 7),
        self.sampling.replace(num_samples=h)))
    rows = (failed[:, None] * g + np.arange(g - h, g)).reshape(-1)
    output = jax.tree.map(lambda x, y: _set_rows(x, rows, y), output, hinted)
    hinted_texts = sampling_texts.decode_rows(self.tokenizer, hinted)
    texts = list(texts)
    for row, text in zip(rows, hinted_texts):
      texts[row] = text
    group_rows = (failed[:, None] * g + np.arange(g)).reshape(-1)
    again, _ = _score_shared(self.scorer, [problems[r] for r in group_rows],
                             [texts[r] for r in group_rows], g)
    rewards = np.asarray(rewards, np.float32).copy()
    rewards[group_rows] = again
    right = again.reshape(-1, g)[:, g - h:].max(1) >= self.guidance.below
    return output, rewards, metrics | {"guided_right": float(right.mean()),
                                       "guided_tokens": float(hinted.lengths.sum())}

  def _feedback(self, params, prompt_batch, problems, output, rewards, metrics, rng, leads):
    """ThinkTuning: each completion scored below `feedback.below` gets, with probability
    `feedback_fraction`, one of `feedback.texts` (its {answer} filled in) appended in place of
    its EOS, and the policy continues from prompt + attempt + feedback; the feedback and the
    continuation take `feedback.max_tokens` tokens at most. The groups that hold such rows are
    scored again. Every row is padded to the completion width (`completion_width`). Returns
    the output, rewards, metrics and marks float32 [N, width], 1 on the feedback tokens (whose
    log-probs in the output are 0: the teacher wrote them). `leads` [N]: the text before each
    row's completion that its score reads too (a restart's prefix)."""
    fb, g = self.feedback, self.group
    n, width = output.tokens.shape
    pad = ((0, 0), (0, fb.max_tokens))
    output = output.replace(
        tokens=np.pad(output.tokens, pad, constant_values=self.tokenizer.pad_id),
        logprobs=np.pad(output.logprobs, pad))
    marks = np.zeros(output.tokens.shape, np.float32)
    fraction = feedback_fraction(fb, self.iteration)
    draw = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, 17))))
    chosen = np.flatnonzero((np.asarray(rewards) < fb.below) & (draw.random(n) < fraction))
    kinds = draw.integers(len(fb.texts), size=n)
    metrics = metrics | {"feedback_fraction": fraction, "feedback_samples": len(chosen) / n}
    if not len(chosen):
      return output, rewards, metrics | {"feedback_right": 0.0, "feedback_tokens": 0.0,
                                         "feedback_continued_tokens": 0.0}, marks
    attempts, notes, prefixes = [], [], []
    for r in chosen:
      b = r // g
      end = output.lengths[r] - (output.finish_reason[r] == sampler_lib.EOS)
      attempts.append(output.tokens[r, :end])
      notes.append(np.asarray(self.tokenizer.encode(
          fb.texts[kinds[r]].format(answer=problems[r].answer)), np.int32))
      if len(notes[-1]) >= fb.max_tokens:
        raise ValueError(f"config.feedback.texts[{kinds[r]}] takes {len(notes[-1])} tokens for "
                         f"{problems[r].answer!r}: raise config.feedback.max_tokens="
                         f"{fb.max_tokens}, which also bounds the continuation")
      prompt = prompt_batch["prompt"][b][:prompt_batch["prompt_length"][b]]
      prefixes.append(np.concatenate([prompt, attempts[-1], notes[-1]]))
    # A fixed width and a power-of-two row count: few shapes for the sampler to compile.
    rows = min(1 << (len(chosen) - 1).bit_length(), n)
    prompt_width = prompt_batch["prompt"].shape[1] + width + fb.max_tokens
    tokens = np.zeros((rows, prompt_width), np.int32)
    for i, prefix in enumerate(prefixes):
      tokens[i, :len(prefix)] = prefix
    lengths = np.asarray([len(p) for p in prefixes] + [len(prefixes[0])] * (rows - len(chosen)),
                         np.int32)
    tokens[len(chosen):] = tokens[0]
    more = sharding.to_host(sampler_lib.sample(
        self.model, params, tokens, lengths, jax.random.fold_in(rng, 11),
        self.sampling.replace(num_samples=1, max_new_tokens=fb.max_tokens)))
    out = {k: np.array(getattr(output, k)) for k in ("tokens", "logprobs", "lengths",
                                                     "finish_reason")}
    continued = 0
    for i, (r, attempt, note) in enumerate(zip(chosen, attempts, notes)):
      keep = min(int(more.lengths[i]), fb.max_tokens - len(note))
      a, f = len(attempt), len(note)
      out["tokens"][r] = self.tokenizer.pad_id
      out["tokens"][r, :a + f + keep] = np.concatenate([attempt, note, more.tokens[i, :keep]])
      out["logprobs"][r, a:] = 0.0
      out["logprobs"][r, a + f:a + f + keep] = more.logprobs[i, :keep]
      out["lengths"][r] = a + f + keep
      out["finish_reason"][r] = (more.finish_reason[i] if keep == more.lengths[i]
                                 else sampler_lib.LENGTH)
      marks[r, a:a + f] = 1.0
      continued += keep
    output = output.replace(**out)
    groups = np.unique(chosen // g)
    group_rows = (groups[:, None] * g + np.arange(g)).reshape(-1)
    texts = sampling_texts.decode_rows(self.tokenizer,
                                       jax.tree.map(lambda x: x[group_rows], output))
    again, _ = _score_shared(self.scorer, [problems[r] for r in group_rows],
                             [leads[r] + t for r, t in zip(group_rows, texts)], g)
    rewards = np.asarray(rewards, np.float32).copy()
    rewards[group_rows] = again
    return output, rewards, metrics | {
        "feedback_right": float(np.mean(rewards[chosen] >= fb.below)),
        "feedback_tokens": float(sum(len(x) for x in notes)),
        "feedback_continued_tokens": float(continued)}, marks

  def _iteration(self, params) -> list[dict[str, np.ndarray]]:
    """Samples, scores and splits one iteration's rollouts into epochs x minibatches. With
    dynamic sampling, groups whose scores are all equal are dropped and more prompt batches
    sampled, until the batch is full of informative groups. The scores are the scorer's, before
    the overlong penalty: with the correctness reward alone, DAPO's all-right and all-wrong
    groups (a length-dependent term would make nearly every group differ)."""
    draws = [self._sample(params, 0)]
    rounds = self.controls.max_sampling_rounds if self.controls.dynamic_sampling else 1
    informative = lambda d: d["scored"].reshape(-1, self.group).std(1) > 0  # noqa: E731
    while len(draws) < rounds and sum(informative(d).sum() for d in draws) < len(
        draws[0]["batch"]["prompt"]):
      draws.append(self._sample(params, len(draws)))
    groups = len(draws[0]["batch"]["prompt"])
    if len(draws) > 1 or self.controls.dynamic_sampling:
      # Informative groups first, in draw order; zero-variance ones fill what is left.
      order = sorted(((not keep, d, g) for d, draw in enumerate(draws)
                      for g, keep in enumerate(informative(draw))))[:groups]
      pick = lambda d: sorted(g for _, dd, g in order if dd == d)  # noqa: E731
    else:
      pick = lambda d: list(range(groups))  # noqa: E731
    parts = [(draw, np.asarray(pick(d), np.int64)) for d, draw in enumerate(draws)]
    rows = lambda g: (g[:, None] * self.group + np.arange(self.group)).reshape(-1)  # noqa: E731
    prompts = np.concatenate([d["batch"]["prompt"][g] for d, g in parts])
    prompt_lengths = np.concatenate([d["batch"]["prompt_length"][g] for d, g in parts])
    output = jax.tree.map(lambda *xs: np.concatenate(xs),
                          *[jax.tree.map(lambda x, g=g: x[rows(g)], d["output"])
                            for d, g in parts])
    rewards = np.concatenate([d["rewards"][rows(g)] for d, g in parts])
    advantages = np.asarray(policy.group_advantages(rewards, self.group, **self.advantage))
    batch = rollout_batch(prompts, prompt_lengths, output, advantages)
    if feedback_on(self.feedback):
      marks = np.concatenate([d["marks"][rows(g)] for d, g in parts])
      batch["feedback_mask"] = marks
      if self.feedback.shaping != "all":
        # Advantage-aware: the teacher's words are reinforced where they led somewhere better
        # than the group did, never pushed down (the policy did not choose them).
        drop = marks * (advantages[:, None] <= 0 if self.feedback.shaping == "positive" else 1)
        batch["loss_mask"] = batch["loss_mask"] * (1 - drop)
    truncated = output.finish_reason == sampler_lib.LENGTH
    if self.controls.overlong_filter:
      batch["loss_mask"] = batch["loss_mask"] * ~truncated[:, None]
    grouped = rewards.reshape(-1, self.group)
    first = draws[0]["rewards"].reshape(-1, self.group)
    sample_s = sum(d["sample_s"] for d in draws)
    generated = sum(d["generated"] for d in draws)  # hinted samples and dropped groups too
    reward_metrics = {k: np.mean([d["metrics"][k] for d in draws]) for k in draws[0]["metrics"]}
    stats = {"reward_mean": rewards.mean(), "reward_std": rewards.std(),
             "zero_variance_groups": np.mean(grouped.min(1) == grouped.max(1)),
             "sampled_zero_variance_groups": np.mean(first.min(1) == first.max(1)),
             "sampling_rounds": len(draws), "generated_tokens": generated,
             "completion_length": output.lengths.mean(), "truncated": np.mean(truncated),
             "sample_tokens_per_s": generated / sample_s, "sample_seconds": sample_s,
             "score_seconds": sum(d["score_s"] for d in draws), "iteration": self.iteration,
             **{k.replace("/", "_"): v for k, v in reward_metrics.items()}}
    if restart_on(self.restart):
      restarted = np.concatenate([d["restarted"][g] for d, g in parts])
      scored = np.concatenate([d["scored"][rows(g)] for d, g in parts]).reshape(-1, self.group)
      stats["restart_groups"] = restarted.mean()
      stats["restart_right"] = (np.mean(scored[restarted] >= self.restart.below)
                                if restarted.any() else 0.0)
      for d, g in parts:
        self._remember(d, g)
    n = len(rewards)
    batch |= {f"rollout_{k}": np.full(n, v, np.float32) for k, v in stats.items()}
    self.iteration += 1
    order_rng = np.random.default_rng([self.seed, self.iteration])
    out = []
    for _ in range(self.epochs):
      for part in np.split(order_rng.permutation(groups), self.minibatches):
        samples = rows(part)
        # prompt_* fields have a row per group, all others (rollout_* too) a row per sample.
        out.append({k: v[part if k.startswith("prompt_") else samples] for k, v in batch.items()})
    return out

  # The state holds whole minibatches, the same in every process: it restores under any
  # process count.
  def get_state(self) -> dict:
    return {"prompts": self.prompts.get_state(), "iteration": self.iteration,
            "pending": [{k: [v.dtype.str, v.tolist()] for k, v in b.items()}
                        for b in self.pending], "buffer": self.buffer}

  def set_state(self, state: dict) -> None:
    self.prompts.set_state(state["prompts"])
    self.iteration = state["iteration"]
    self.pending = [{k: np.asarray(v, np.dtype(dtype)) for k, (dtype, v) in b.items()}
                    for b in state["pending"]]
    # A checkpoint written before restarts existed has no buffer: an empty one.
    self.buffer = [list(x) for x in state.get("buffer", [])]


def restart_on(section) -> bool:
  return section.fraction > 0


def feedback_on(section) -> bool:
  return section.fraction > 0 or section.final_fraction > 0


def feedback_fraction(section, iteration: int) -> float:
  """ThinkTuning's schedule: the probability that a failed completion gets feedback, going
  linearly from `fraction` to `final_fraction` over `decay_iterations` (0: `fraction` always)."""
  if not section.decay_iterations:
    return float(section.fraction)
  t = min(iteration / section.decay_iterations, 1.0)
  return float(section.fraction + t * (section.final_fraction - section.fraction))


def completion_width(config) -> int:
  """The completion tokens of a rollout batch: rollouts.max_new_tokens, and feedback.max_tokens
  more with ThinkTuning's feedback on."""
  extra = config.feedback.max_tokens if feedback_on(config.feedback) else 0
  return config.rollouts.max_new_tokens + extra


def _set_rows(array: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
  """A copy of `array` with `rows` replaced by `values`."""
  out = np.array(array)
  out[rows] = values
  return out


def _score_shared(scorer, problems, texts, group: int) -> tuple[np.ndarray, dict]:
  """`scorer` on all rows, each process scoring its contiguous share of whole groups; rewards
  [N] and the metrics' means, the same on every process. Groups that do not split evenly
  over the processes are padded with copies of the last one (scored, then dropped)."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return scorer(problems, texts, group_size=group)
  n, pad = len(texts), -(len(texts) // group) % count
  problems, texts = list(problems) + list(problems[-group:]) * pad, list(texts) + list(
      texts[-group:]) * pad
  share = len(texts) // count
  mine = slice(index * share, (index + 1) * share)
  rewards, metrics = scorer(problems[mine], texts[mine], group_size=group)
  keys = sorted(metrics)
  rewards = multihost_utils.process_allgather(np.asarray(rewards, np.float32)).reshape(-1)
  means = distributed.job_sum([metrics[k] for k in keys]) / count
  return rewards[:n], dict(zip(keys, means.tolist()))


def results_table(start: dict[str, float], final: dict[str, float]) -> str:
  """A Markdown table of the starting and final evaluations (the metrics both have)."""
  keys = [k for k in start if k in final]
  lines = ["| metric | start (SFT) | after GRPO |", "|---|---|---|"]
  lines += [f"| {k} | {start[k]:.4g} | {final[k]:.4g} |" for k in keys]
  return "\n".join(lines)


def policy_loss_kwargs(config) -> dict:
  """`config.policy_loss` as keyword arguments of `policy.policy_loss` (dual_clip 0: None)."""
  kwargs = dict(config.policy_loss)
  kwargs["dual_clip"] = kwargs["dual_clip"] or None  # 0 in a config: off
  return kwargs


def check_config(config) -> None:
  """Raises ValueError naming a bad name-valued field (aggregation, advantage scale and ddof,
  surrogate, importance, KL estimator, reward, verifier, reward model fields), policy_loss
  values `policy.check_settings` refuses, a reward model folder without a config.json, bad
  guidance, feedback, restart, data selection or data control values, or a minibatch split
  that does not fit, before any work."""
  stages.check_policy_source(config)
  choices = {"aggregation": (config.aggregation, policy.AGGREGATIONS),
             "advantage.scale": (config.advantage.scale, policy.ADVANTAGE_SCALES),
             "advantage.ddof": (config.advantage.ddof, policy.STD_DDOF),
             "policy_loss.surrogate": (config.policy_loss.surrogate, policy.SURROGATES),
             "policy_loss.importance": (config.policy_loss.importance, policy.IMPORTANCE_LEVELS),
             "policy_loss.kl_estimator": (config.policy_loss.kl_estimator,
                                          policy.KL_ESTIMATORS),
             "verifier": (config.verifier, scoring.VERIFIERS)}
  for name, (value, valid) in choices.items():
    if value not in valid:
      raise ValueError(f"config.{name}={value!r}; expected one of {sorted(valid)}")
  try:
    policy.check_settings(**policy_loss_kwargs(config))
  except ValueError as e:
    raise ValueError(f"config.policy_loss: {e}") from e
  unknown = sorted(set(config.rewards) - set(scoring.REWARDS))
  if unknown:
    raise ValueError(f"config.rewards has unknown reward(s) {unknown}; valid: "
                     f"{list(scoring.REWARDS)}")
  rm_reward.check_section(config.reward_model)
  if config.train_split not in SPLITS:
    raise ValueError(f"config.train_split={config.train_split!r}; expected one of {SPLITS}")
  guidance, section = config.guidance, config.rollouts
  if not 0 <= guidance.samples <= section.num_samples:
    raise ValueError(f"config.guidance.samples={guidance.samples}: expected 0 (off) to "
                     f"rollouts.num_samples={section.num_samples} hinted samples per group")
  if guidance.samples and "{answer}" not in guidance.hint:
    raise ValueError(f"config.guidance.hint={guidance.hint!r} has no {{answer}} to fill in")
  fb = config.feedback
  if not (0 <= fb.fraction <= 1 and 0 <= fb.final_fraction <= 1 and fb.decay_iterations >= 0):
    raise ValueError(f"config.feedback: fraction={fb.fraction} and final_fraction="
                     f"{fb.final_fraction} must be probabilities in [0, 1] and decay_iterations="
                     f"{fb.decay_iterations} >= 0")
  if fb.shaping not in FEEDBACK_SHAPING:
    raise ValueError(f"config.feedback.shaping={fb.shaping!r}; expected one of "
                     f"{list(FEEDBACK_SHAPING)}")
  if feedback_on(fb) and (not fb.texts or fb.max_tokens < 2):
    raise ValueError(f"config.feedback: texts={tuple(fb.texts)} must hold at least one text and "
                     f"max_tokens={fb.max_tokens} room for it and a continuation")
  restart = config.restart
  if not 0 <= restart.fraction <= 1:
    raise ValueError(f"config.restart.fraction={restart.fraction}: expected a share in [0, 1] of "
                     "each prompt batch's groups (0: off)")
  if restart_on(restart) and restart.buffer < 1:
    raise ValueError(f"config.restart.buffer={restart.buffer}: expected >= 1 earlier "
                     "trajectories kept to restart from")
  if restart_on(restart) and restart.max_prefix_tokens < 1:
    raise ValueError(f"config.restart.max_prefix_tokens={restart.max_prefix_tokens}: expected "
                     ">= 1 tokens of room for a restart's prefix and cue")
  selection = config.data_selection
  if selection.simulations < 0 or selection.min_simulations < 0:
    raise ValueError("config.data_selection.simulations and min_simulations must be >= 0 (0 "
                     f"simulations: no selection), got {selection.simulations} and "
                     f"{selection.min_simulations}")
  controls = config.data_controls
  if controls.max_sampling_rounds < 1:
    raise ValueError(f"config.data_controls.max_sampling_rounds={controls.max_sampling_rounds}: "
                     "expected >= 1 (prompt batches sampled per iteration at most)")
  if not 0 <= controls.overlong_cache <= section.max_new_tokens:
    raise ValueError(f"config.data_controls.overlong_cache={controls.overlong_cache}: expected "
                     f"0 (off) to rollouts.max_new_tokens={section.max_new_tokens}")
  if not 0 < section.cutoff_fraction <= 1:
    raise ValueError(f"config.rollouts.cutoff_fraction={section.cutoff_fraction}: expected a "
                     "fraction in (0, 1] of the rows (1: no cut-off)")
  _check_minibatches(config.rollouts.prompts, config.minibatches)


def _check_minibatches(prompts: int, minibatches: int) -> None:
  if prompts % minibatches:
    raise ValueError(f"rollouts.prompts={prompts} groups must split into "
                     f"config.minibatches={minibatches} equal minibatches (a minibatch holds "
                     "whole groups)")
  count = jax.process_count()
  if prompts // minibatches % count:
    raise ValueError(f"a minibatch of rollouts.prompts / config.minibatches = "
                     f"{prompts // minibatches} groups must split over the job's {count} "
                     f"processes (each trains on whole groups): make it a multiple of {count}")


def make_scorer(config, task: Task, tokenizer):
  """The rollouts' reward: the verifier's weighted `config.rewards`, or with
  `config.reward_model.path` the reward model's score, the verifier graded for metrics only."""
  verifier = scoring.make_verifier(config.verifier, task)
  rm = config.reward_model
  if not rm.path:
    return scoring.Scorer(verifier, dict(config.rewards), num_workers=config.scorer_workers)
  logging.info("GRPO rewards: the %s reward model %s (aggregation %s); config.rewards unused",
               rm.granularity, rm.path, rm.aggregation)
  truth = scoring.Scorer(verifier, {"correctness": 1.0}, num_workers=config.scorer_workers)
  return rm_reward.RewardModelReward.from_section(rm, task, tokenizer, truth)


def selection(config, workdir: str, make) -> dict:
  """ThinkLite's selection (`make()`: `select_problems`), made once into workdir/selection.json;
  a rerun under other selection settings (data_selection, task, init_from, seed) is refused
  (`stages.SettingsChanged`) instead of training on a stale selection."""
  stages.check_settings(os.path.join(workdir, "selection_settings.json"),
                        {"data_selection": config.data_selection.to_dict(),
                         "task": config.task.to_dict(), "init_from": config.init_from,
                         "seed": config.seed})
  return stages.json_file(os.path.join(workdir, "selection.json"), make)


def select_problems(config, model, params, task: Task, tokenizer, problems) -> dict:
  """ThinkLite's data selection (`config.data_selection`): each problem's simulations to solve
  by step-level MCTS with rollout values (`search.methods.simulations_to_solve`), each process
  searching its share; kept: the solved ones that took at least `min_simulations` (hard but
  solvable), and the unsolved ones with `keep_unsolved`. Returns {"simulations", "solved",
  "kept": indices}."""
  s = config.data_selection
  step_policy = StepPolicy(model, params, tokenizer, task, temperature=s.temperature,
                           max_step_tokens=s.max_step_tokens, max_steps=s.max_steps,
                           batch_size=s.batch_size)
  mcts = {"num_children": s.num_children, "simulations_per_round": s.simulations_per_round,
          "evaluation": "rollout"}
  rng = distributed.process_rng(jax.random.key(config.seed + 7))

  def difficulty(part):
    search = methods.Search(step_policy, None, part, rng, mcts=mcts)
    sims, solved = methods.simulations_to_solve(search, s.simulations)
    return [[int(n), bool(ok)] for n, ok in zip(sims, solved)]

  rows = distributed.map_shared(difficulty, problems)
  kept = [i for i, (n, ok) in enumerate(rows)
          if (ok and n >= s.min_simulations) or (not ok and s.keep_unsolved)]
  if len(kept) < config.rollouts.prompts:
    solved = sum(ok for _, ok in rows)
    raise ValueError(f"config.data_selection kept {len(kept)} of {len(problems)} problems "
                     f"({solved} solved within {s.simulations} simulations), fewer than "
                     f"rollouts.prompts={config.rollouts.prompts}: lower min_simulations, set "
                     "keep_unsolved, or raise task.num_train")
  return {"simulations": [n for n, _ in rows], "solved": [ok for _, ok in rows], "kept": kept}


def run(config, workdir: str) -> dict:
  """Evaluates the starting policy, trains with GRPO, evaluates; returns the results."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  _, cfg, params = stages.load_policy(config, workdir)
  model = models.Model(cfg)
  evaluate = experiment.evaluator(config, cfg, task, tokenizer)
  start = {}
  if evaluate is not None:
    start = stages.json_file(os.path.join(workdir, "start_eval.json"),
                             lambda: evaluate(params, jax.random.key(config.seed + 1)))
  if start:
    print("starting policy: " + " ".join(f"{k}={v:.4g}" for k, v in start.items()), flush=True)
  problems = task.generate(config.task.num_train, seed=config.seed, split=config.train_split)
  if config.data_selection.simulations:
    chosen = selection(config, workdir, lambda: select_problems(
        config, model, params, task, tokenizer, problems))
    problems = [problems[i] for i in chosen["kept"]]
    logging.info("ThinkLite selection: %d of %d problems kept", len(problems),
                 len(chosen["solved"]))
  scorer = make_scorer(config, task, tokenizer)
  rollouts = Rollouts(config, model, task, tokenizer, problems, scorer)
  loss_fn = functools.partial(grpo_loss, model=model, temperature=config.rollouts.temperature,
                              aggregation=config.aggregation,
                              max_len=completion_width(config),
                              loss_kwargs=policy_loss_kwargs(config),
                              share_prompt=config.share_prompt)
  steps_per_iteration = config.epochs * config.minibatches
  logging.info("GRPO: %d prompts x %d samples per iteration, %d steps each",
               config.rollouts.prompts, config.rollouts.num_samples, steps_per_iteration)
  try:
    state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=rollouts,
                              params=params,
                              frozen=params if config.policy_loss.beta > 0 else None,
                              evaluate=evaluate)
  finally:
    scorer.close()
  results = {"steps": int(state.step), "iterations": rollouts.iteration, "start": start,
             "final": final}
  for prefix, values in (("sft", start), ("grpo", final)):
    results |= {f"{prefix}_{k}": v for k, v in values.items()}
  if start and final:
    print(results_table(start, final), flush=True)
  experiment.export(workdir, cfg, state.params, results, tokenizer=tokenizer)
  return results
