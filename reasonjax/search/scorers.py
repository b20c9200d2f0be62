"""Step scorers for search: the task's own step checker (an oracle), a trained reward model, or
the policy itself (Self-PRM, `ImplicitScorer`).

    scorer = OracleScorer(task)                                   # 1.0 / 0.0 per step
    scorer = RewardModelScorer.load("runs/prm/hf", task, tokenizer, granularity="prm")
    scorer = ImplicitScorer.load("runs/grpo/hf", task, tokenizer, reference="runs/sft/hf")
    scores = scorer(problems, solutions)     # solutions[i]: the steps of one solution
    value = aggregate(scores[i], "min")      # a solution's score

A scorer maps each (problem, steps) pair to one probability per step, in [0, 1]; an answer line
(`#### x`) gets one too (the oracle grades the answer; a PRM trained on the task's step labels,
never on answer lines, repeats the score of the step before it; one trained on tree nodes,
answer lines included, scores it: `score_answers`). An outcome reward model (granularity 'orm') scores
the whole solution once: its array has a single entry, which every aggregation returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from reasonjax import models, sharding
from reasonjax.data import batching
from reasonjax.data.tasks import Problem, Task
from reasonjax.losses.tokens import token_logprobs
from reasonjax.sampling import bucket_length
from reasonjax.search.policy import is_answer

# A solution's score from its step scores s [n], n >= 1.
AGGREGATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "min": lambda s: float(np.min(s)),
    "prod": lambda s: float(np.prod(s)),
    "last": lambda s: float(s[-1]),
    "mean": lambda s: float(np.mean(s)),
}
GRANULARITIES = ("orm", "prm", "hrm")


def check_aggregation(name: str) -> None:
  if name not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {name!r}; valid: {sorted(AGGREGATIONS)}")


def aggregate(scores: np.ndarray, name: str) -> float:
  """A solution's score from its step scores: min, prod, last or mean (`AGGREGATIONS`); an
  empty solution scores 0."""
  check_aggregation(name)
  return AGGREGATIONS[name](np.asarray(scores)) if len(scores) else 0.0


class OracleScorer:
  """The task's ground truth: a step scores 1 when `task.check_steps` finds it correct, an
  answer line when `task.check_answer` accepts the solution. The upper bound any trained
  reward model is compared with."""

  name = "oracle"

  def __init__(self, task: Task):
    self.task = task

  def __call__(self, problems: Sequence[Problem], solutions: Sequence[Sequence[str]]
               ) -> list[np.ndarray]:
    out = []
    for problem, steps in zip(problems, solutions, strict=True):
      reasoning = [s for s in steps if not is_answer(s)]
      correct = iter(self.task.check_steps(problem, reasoning).correct)
      text = "\n".join(steps)
      out.append(np.asarray([float(self.task.check_answer(problem, text)) if is_answer(s)
                             else float(next(correct)) for s in steps], np.float32))
    return out


def score_fn(model: models.Model, batch_size: int):
  """`run(params, examples) -> [scores at each example's step_mask]`: the score head over
  examples padded to one length (`batching.pad_example`), `batch_size` rows per call (the last
  call padded with empty rows), so a shape compiles once."""
  score = jax.jit(lambda p, x: model.apply({"params": p}, x, method=models.Model.score))

  def run(params, examples):
    out = []
    for start in range(0, len(examples), batch_size):
      chunk = examples[start:start + batch_size]
      inputs = np.zeros((batch_size, len(chunk[0]["inputs"])), np.int32)
      inputs[:len(chunk)] = [e["inputs"] for e in chunk]
      scores = sharding.to_host(score(params, sharding.inputs_like(inputs, params)))
      for row, e in zip(scores, chunk):
        out.append(row[e["step_mask"] > 0])
    return out

  return run


def length_chunks(examples, batch_size: int):
  """(indices, width) of calls of at most `batch_size` examples, taken by length, each padded
  to the power of two above its longest: a few shapes compile, and short rows do not pay for
  the longest one."""
  order = sorted(range(len(examples)), key=lambda i: len(examples[i]["inputs"]))
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    yield chunk, bucket_length(max(len(examples[i]["inputs"]) for i in chunk))


def probabilities(score, params, examples, *, batch_size: int) -> list[np.ndarray]:
  """sigmoid of the score head at each example's step_mask ([L_j] float64 each), `score` from
  `score_fn`, in `length_chunks`."""
  out: list[np.ndarray] = [np.zeros(0)] * len(examples)
  for chunk, width in length_chunks(examples, batch_size):
    logits = score(params, [batching.pad_example(examples[i], width) for i in chunk])
    for i, x in zip(chunk, logits):
      out[i] = 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
  return out


class RewardModelScorer:
  """A reward model (a `Model` with a score head) as a scorer: sigmoid of its score at the last
  token of each step (prm, hrm), or of the whole solution (orm), rendered as
  `batching.prm_example` renders its training data. `score_answers`: answer lines are steps
  the model was trained on (tree data, `search.tree_data`), scored like the others."""

  def __init__(self, model: models.Model, params, task: Task, tokenizer, *,
               granularity: str = "prm", batch_size: int = 32, score_answers: bool = False):
    if granularity not in GRANULARITIES:
      raise ValueError(f"unknown reward model granularity {granularity!r}; valid: "
                       f"{GRANULARITIES}")
    self.params, self.task, self.tokenizer = params, task, tokenizer
    self.granularity, self.name = granularity, granularity
    self.score_answers = score_answers
    self._score, self.batch_size = score_fn(model, batch_size), batch_size

  @classmethod
  def load(cls, folder: str, task: Task, tokenizer, **kwargs) -> RewardModelScorer:
    """The reward model exported by a reward_model run (`workdir/hf`)."""
    cfg, params = models.load({"hf_path": folder, "lm_head": False, "score_head": True},
                              jax.random.key(0))
    return cls(models.Model(cfg), params, task, tokenizer, **kwargs)

  def __call__(self, problems: Sequence[Problem], solutions: Sequence[Sequence[str]]
               ) -> list[np.ndarray]:
    if not solutions:
      return []
    examples = []
    for problem, steps in zip(problems, solutions, strict=True):
      # What the reward model was trained on: the whole text (orm), or the reasoning steps
      # without the answer line (prm, hrm: `programs.reward_model.units`).
      units = (["\n".join(steps)] if self.granularity == "orm"
               else [s for s in steps if self.score_answers or not is_answer(s)])
      examples.append(batching.prm_example(self.tokenizer, self.task.prompt(problem), units,
                                           [0.0] * len(units)))
    probs = probabilities(self._score, self.params, examples, batch_size=self.batch_size)
    if self.granularity == "orm" or self.score_answers:
      return probs
    out = []
    for steps, p in zip(solutions, probs):
      # An answer line, never trained on, takes the score of the step before it (0.5 if none).
      scores, reasoning = [], iter(p)
      for step in steps:
        if is_answer(step):
          scores.append(scores[-1] if scores else 0.5)
        else:
          scores.append(next(reasoning))
      out.append(np.asarray(scores))
    return out


class ImplicitScorer:
  """A policy (a `Model` with an LM head) as its own process reward model. With a reference
  policy, the implicit process reward of Yuan et al. 2024 ("Free Process Rewards without
  Process Labels"): step k scores sigmoid(beta * sum over the tokens up to the end of step k
  of log pi(y_t) - log pi_ref(y_t)), e.g. an RL-trained policy against its SFT start (Feng et
  al. 2025 find RL training makes the policy a process judge of its own steps). Without one,
  the policy's confidence in each step: exp of its mean token log-probability. Steps are
  rendered as `batching.prm_example` renders them (each followed by the step delimiter), the
  answer line a step like the others."""

  name = "implicit"

  def __init__(self, model: models.Model, params, task: Task, tokenizer, *, reference=None,
               beta: float = 1.0, batch_size: int = 32):
    if beta <= 0:
      raise ValueError(f"ImplicitScorer: beta must be > 0, got {beta}")
    self.params, self.reference, self.task, self.tokenizer = params, reference, task, tokenizer
    self.beta, self.batch_size = beta, batch_size
    self._logp = jax.jit(lambda p, x: token_logprobs(
        model.apply({"params": p}, x)[:, :-1], x[:, 1:]))

  @classmethod
  def load(cls, folder: str, task: Task, tokenizer, *, reference: str = "",
           **kwargs) -> ImplicitScorer:
    """The policy exported at `folder` (and the reference policy at `reference`, if any)."""
    cfg, params = models.load({"hf_path": folder}, jax.random.key(0))
    ref = models.load({"hf_path": reference}, jax.random.key(0))[1] if reference else None
    return cls(models.Model(cfg), params, task, tokenizer, reference=ref, **kwargs)

  def _step_logprobs(self, params, examples, starts) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example: (sum of the step's token log-probs, its token count) for each step."""
    out: list = [None] * len(examples)
    for chunk, width in length_chunks(examples, self.batch_size):
      inputs = np.zeros((self.batch_size, width), np.int32)
      for row, i in enumerate(chunk):
        inputs[row, :len(examples[i]["inputs"])] = examples[i]["inputs"]
      logp = np.asarray(sharding.to_host(self._logp(params, sharding.inputs_like(inputs,
                                                                                  params))))
      for row, i in enumerate(chunk):
        # logp[row, t - 1] is the log-probability of token t; a step ends at each step_mask.
        ends = np.flatnonzero(examples[i]["step_mask"])
        bounds = np.concatenate([[starts[i] - 1], ends])
        cum = np.concatenate([[0.0], np.cumsum(logp[row].astype(np.float64))])
        out[i] = (cum[bounds[1:]] - cum[bounds[:-1]], np.diff(bounds))
    return out

  def __call__(self, problems: Sequence[Problem], solutions: Sequence[Sequence[str]]
               ) -> list[np.ndarray]:
    if not solutions:
      return []
    prompts = [self.task.prompt(p) for p in problems]
    examples = [batching.prm_example(self.tokenizer, prompt, list(steps), [0.0] * len(steps))
                for prompt, steps in zip(prompts, solutions, strict=True)]
    starts = [len(self.tokenizer.encode(prompt, add_bos=True)) for prompt in prompts]
    policy = self._step_logprobs(self.params, examples, starts)
    if self.reference is None:
      return [np.exp(sums / np.maximum(counts, 1)) for sums, counts in policy]
    reference = self._step_logprobs(self.reference, examples, starts)
    return [1.0 / (1.0 + np.exp(-self.beta * np.cumsum(mine - ref)))
            for (mine, _), (ref, _) in zip(policy, reference)]
