"""Step scorers for search: the task's own step checker (an oracle) or a trained reward model.

    scorer = OracleScorer(task)                                   # 1.0 / 0.0 per step
    scorer = RewardModelScorer.load("runs/prm/hf", task, tokenizer, granularity="prm")
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


def probabilities(score, params, examples, *, batch_size: int) -> list[np.ndarray]:
  """sigmoid of the score head at each example's step_mask ([L_j] float64 each), `score` from
  `score_fn`. Examples go by length, each call padded to the power of two above its longest:
  a few shapes compile, and short rows do not pay for the longest one."""
  order = sorted(range(len(examples)), key=lambda i: len(examples[i]["inputs"]))
  out: list[np.ndarray] = [np.zeros(0)] * len(examples)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    width = bucket_length(max(len(examples[i]["inputs"]) for i in chunk))
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
