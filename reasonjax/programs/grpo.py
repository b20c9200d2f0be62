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

Rollout statistics ride in the batch as per-sample constants (`rollout_*` fields), so each step's
metrics line holds the numbers of the rollouts it trained on. A checkpoint keeps the iteration's
untrained minibatches, so a resumed run trains on the same rollouts.
"""

from __future__ import annotations

import functools
import json
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
from reasonjax.losses import policy, tokens
from reasonjax.rewards import reward_model as rm_reward, scoring
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.sampling import texts as sampling_texts
from reasonjax.search import scorers
from reasonjax.programs import stages
from reasonjax.training import experiment, loop

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
  per_token, stats = policy.policy_loss(logp, batch["old_logp"], batch["advantages"], mask,
                                        ref_logp=ref_logp, entropy=entropy, **loss_kwargs)
  value, weight = policy.aggregate(per_token, mask, aggregation, max_len=max_len)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  mean = lambda x: jnp.sum(x * mask) / count
  # |logp - old_logp|: on an iteration's first update, the sampler-vs-trainer mismatch alone.
  gap = jnp.abs(logp - batch["old_logp"]) * mask
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
  and restore the prompt iterator, the iteration count and the untrained minibatches (a
  JSON-able dict), so a resumed run trains on what it would have.
  """

  def __init__(self, config, model, task: Task, tokenizer, problems, scorer):
    section = config.rollouts
    self.model, self.tokenizer, self.problems = model, tokenizer, problems
    self.scorer, self.seed = scorer, config.seed
    self.group, self.epochs, self.minibatches = (section.num_samples, config.epochs,
                                                 config.minibatches)
    self.advantage = dict(config.advantage)
    self.sampling = sampler_lib.sampling_config(section, tokenizer)
    _check_minibatches(section.prompts, config.minibatches)
    examples = [batching.prompt_example(tokenizer, task.prompt(p), i)
                for i, p in enumerate(problems)]
    width = max(len(e["prompt"]) for e in examples)
    self.prompts = batching.batches(examples, batch_size=section.prompts, seq_len=width,
                                    seed=config.seed)
    self.iteration = 0
    self.pending: list[dict[str, np.ndarray]] = []

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

  def _iteration(self, params) -> list[dict[str, np.ndarray]]:
    """Samples, scores and splits one iteration's rollouts into epochs x minibatches."""
    prompt_batch = next(self.prompts)
    rng = jax.random.fold_in(jax.random.key(self.seed + 3), self.iteration)
    start = time.perf_counter()
    # Every process samples the same prompts (and gets every row back): the work is spread
    # over the devices of the global mesh, and each process then scores its share.
    output = sharding.to_host(sampler_lib.sample(
        self.model, params, prompt_batch["prompt"], prompt_batch["prompt_length"], rng,
        self.sampling))
    sample_s = time.perf_counter() - start
    problems = [self.problems[int(i)] for i in prompt_batch["index"] for _ in range(self.group)]
    texts = sampling_texts.decode_rows(self.tokenizer, output)
    start = time.perf_counter()
    rewards, reward_metrics = _score_shared(self.scorer, problems, texts, self.group)
    score_s = time.perf_counter() - start
    advantages = np.asarray(policy.group_advantages(rewards, self.group, **self.advantage))
    batch = rollout_batch(prompt_batch["prompt"], prompt_batch["prompt_length"], output,
                          advantages)
    grouped = rewards.reshape(-1, self.group)
    generated = float(output.lengths.sum())
    stats = {"reward_mean": rewards.mean(), "reward_std": rewards.std(),
             "zero_variance_groups": np.mean(grouped.min(1) == grouped.max(1)),
             "completion_length": output.lengths.mean(),
             "truncated": np.mean(output.finish_reason == sampler_lib.LENGTH),
             "sample_tokens_per_s": generated / sample_s, "sample_seconds": sample_s,
             "score_seconds": score_s, "iteration": self.iteration,
             **{k.replace("/", "_"): v for k, v in reward_metrics.items()}}
    n = len(rewards)
    batch |= {f"rollout_{k}": np.full(n, v, np.float32) for k, v in stats.items()}
    self.iteration += 1
    order_rng = np.random.default_rng([self.seed, self.iteration])
    out = []
    for _ in range(self.epochs):
      groups = order_rng.permutation(len(prompt_batch["prompt"]))
      for part in np.split(groups, self.minibatches):
        samples = (part[:, None] * self.group + np.arange(self.group)).reshape(-1)
        # prompt_* fields have a row per group, all others (rollout_* too) a row per sample.
        out.append({k: v[part if k.startswith("prompt_") else samples] for k, v in batch.items()})
    return out

  # The state holds whole minibatches, the same in every process: it restores under any
  # process count.
  def get_state(self) -> dict:
    return {"prompts": self.prompts.get_state(), "iteration": self.iteration,
            "pending": [{k: [v.dtype.str, v.tolist()] for k, v in b.items()}
                        for b in self.pending]}

  def set_state(self, state: dict) -> None:
    self.prompts.set_state(state["prompts"])
    self.iteration = state["iteration"]
    self.pending = [{k: np.asarray(v, np.dtype(dtype)) for k, (dtype, v) in b.items()}
                    for b in state["pending"]]


def _score_shared(scorer, problems, texts, group: int) -> tuple[np.ndarray, dict]:
  """`scorer` on all rows, each process scoring its contiguous share of whole groups; rewards
  [N] and the metrics' means, the same on every process."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return scorer(problems, texts, group_size=group)
  share = len(texts) // count
  mine = slice(index * share, (index + 1) * share)
  rewards, metrics = scorer(problems[mine], texts[mine], group_size=group)
  keys = sorted(metrics)
  rewards = multihost_utils.process_allgather(np.asarray(rewards, np.float32)).reshape(-1)
  means = distributed.job_sum([metrics[k] for k in keys]) / count
  return rewards, dict(zip(keys, means.tolist()))


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
  values `policy.check_settings` refuses, a reward model folder without a config.json, or a
  minibatch split that does not fit, before any work."""
  stages.check_policy_source(config)
  choices = {"aggregation": (config.aggregation, policy.AGGREGATIONS),
             "advantage.scale": (config.advantage.scale, policy.ADVANTAGE_SCALES),
             "advantage.ddof": (config.advantage.ddof, policy.STD_DDOF),
             "policy_loss.surrogate": (config.policy_loss.surrogate, policy.SURROGATES),
             "policy_loss.importance": (config.policy_loss.importance, policy.IMPORTANCE_LEVELS),
             "policy_loss.kl_estimator": (config.policy_loss.kl_estimator,
                                          policy.KL_ESTIMATORS),
             "verifier": (config.verifier, scoring.VERIFIERS),
             "reward_model.granularity": (config.reward_model.granularity,
                                          scorers.GRANULARITIES),
             "reward_model.aggregation": (config.reward_model.aggregation,
                                          scorers.AGGREGATIONS)}
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
  rm = config.reward_model
  if rm.path and not os.path.isfile(os.path.join(rm.path, "config.json")):
    raise ValueError(f"config.reward_model.path={rm.path!r}: no config.json there; expected a "
                     "reward_model run's export (its workdir/hf), or '' for verifier rewards")
  if rm.batch_size < 1:
    raise ValueError(f"config.reward_model.batch_size={rm.batch_size!r}; expected a positive "
                     "integer (completions per reward model forward pass)")
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
  return rm_reward.RewardModelReward.load(rm.path, task, tokenizer, truth,
                                          granularity=rm.granularity,
                                          aggregation=rm.aggregation,
                                          batch_size=rm.batch_size,
                                          score_answers=rm.score_answers)


def run(config, workdir: str) -> dict:
  """Evaluates the starting policy, trains with GRPO, evaluates; returns the results."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  _, cfg, params = stages.load_policy(config, workdir)
  model = models.Model(cfg)
  evaluate = experiment.evaluator(config, cfg, task, tokenizer)
  start_path = os.path.join(workdir, "start_eval.json")
  start = {}
  if evaluate is not None:
    if os.path.exists(start_path):
      with open(start_path) as f:
        start = json.load(f)
    else:
      start = evaluate(params, jax.random.key(config.seed + 1))
      with open(start_path, "w") as f:
        json.dump(start, f, indent=2)
  if start:
    print("starting policy: " + " ".join(f"{k}={v:.4g}" for k, v in start.items()), flush=True)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  scorer = make_scorer(config, task, tokenizer)
  rollouts = Rollouts(config, model, task, tokenizer, problems, scorer)
  loss_fn = functools.partial(grpo_loss, model=model, temperature=config.rollouts.temperature,
                              aggregation=config.aggregation,
                              max_len=config.rollouts.max_new_tokens,
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
