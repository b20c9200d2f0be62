"""A trained reward model's score as the RL reward, the verifier kept only as a metric.

    rm = scorers.RewardModelScorer.load("runs/prm/hf", task, tokenizer, granularity="prm")
    reward = RewardModelReward(rm, task, scoring.Scorer(verifier, {"correctness": 1.0}))
    rewards, metrics = reward(problems, completions, group_size=8)

A completion's reward is the reward model's solution score, a probability in [0, 1]: the sigmoid
of the score head at each step's last token, aggregated over the steps with `aggregation`
(`search.scorers.AGGREGATIONS`; prm, hrm), or at the whole solution's (orm). Texts are split
into steps as search splits them (`search.policy.solution_steps`), so a reward is the score that
best-of-N ranks by. The verifier never enters the reward: its grading is reported as
`true_accuracy`, so that a run shows reward hacking, the reward model's reward rising while the
true accuracy does not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from reasonjax import models
from reasonjax.data.tasks import Problem, Task
from reasonjax.search import policy, scorers


def check_section(section, name: str = "config.reward_model") -> None:
  """Raises ValueError naming the bad field of a reward-model section: {path (a reward_model
  run's export, or "" for none), granularity, aggregation, batch_size, score_answers}."""
  for field, valid in (("granularity", scorers.GRANULARITIES),
                       ("aggregation", scorers.AGGREGATIONS)):
    if section[field] not in valid:
      raise ValueError(f"{name}.{field}={section[field]!r}; expected one of {sorted(valid)}")
  if section.path and not os.path.isfile(os.path.join(section.path, "config.json")):
    raise ValueError(f"{name}.path={section.path!r}: no config.json there; expected a "
                     "reward_model run's export (its workdir/hf), or '' for verifier rewards")
  if section.batch_size < 1:
    raise ValueError(f"{name}.batch_size={section.batch_size!r}; expected a positive integer "
                     "(completions per reward model forward pass)")


class RewardModelReward:
  """Rewards float32 [N] in [0, 1] from a reward model, with the call of `scoring.Scorer`.

  Args:
    rm: the reward model as a step scorer (`search.scorers.RewardModelScorer`); each forward
      pass scores its `batch_size` completions.
    task: splits a text into steps (`search.policy.solution_steps`).
    truth: the run's verifier (a `scoring.Scorer`): graded for the metrics only.
    aggregation: a solution's score from its step scores (prm, hrm); an orm has one score.
  """

  def __init__(self, rm: scorers.RewardModelScorer, task: Task, truth, *,
               aggregation: str = "min"):
    scorers.check_aggregation(aggregation)
    self.rm, self.task, self.truth = rm, task, truth
    # An ORM's one score is the solution's, whatever the aggregation.
    self.aggregation = "last" if rm.granularity == "orm" else aggregation

  @classmethod
  def from_section(cls, section, task: Task, tokenizer, truth=None) -> RewardModelReward | None:
    """The reward model of a `config.reward_model` section (`check_section`), or None when its
    path is empty; `truth` may be None where only `scores` is called."""
    if not section.path:
      return None
    return cls.load(section.path, task, tokenizer, truth, granularity=section.granularity,
                    aggregation=section.aggregation, batch_size=section.batch_size,
                    score_answers=section.score_answers)

  @classmethod
  def load(cls, folder: str, task: Task, tokenizer, truth, *, granularity: str = "prm",
           aggregation: str = "min", batch_size: int = 64,
           score_answers: bool = False) -> RewardModelReward:
    """The reward model exported by a reward_model run (`workdir/hf`), scoring texts of
    `tokenizer` (the policy's, which the reward model was trained on); `score_answers`: it was
    trained on answer lines too (`search.scorers.RewardModelScorer`)."""
    vocab = models.read_config(folder).vocab_size
    if vocab < tokenizer.vocab_size:  # ids past the embedding would be clamped, not caught
      raise ValueError(f"reward model {os.path.abspath(folder)}: vocab_size={vocab} is smaller "
                       f"than the tokenizer's {tokenizer.vocab_size}; it was trained on another "
                       "tokenizer")
    rm = scorers.RewardModelScorer.load(folder, task, tokenizer, granularity=granularity,
                                        batch_size=batch_size, score_answers=score_answers)
    return cls(rm, task, truth, aggregation=aggregation)

  def scores(self, problems: Sequence[Problem], completions: Sequence[str]) -> np.ndarray:
    """float32 [N]: each completion's solution score (0 for one without steps)."""
    solutions = [policy.solution_steps(self.task, text) for text in completions]
    steps = self.rm(problems, solutions)
    return np.asarray([scorers.aggregate(s, self.aggregation) for s in steps], np.float32)

  def __call__(self, problems: Sequence[Problem], completions: Sequence[str], *,
               group_size: int = 1) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards float32 [N] and metrics: `true_accuracy` and `true_format` (the verifier's
    fraction correct and well formed), the verifier's timeouts and errors."""
    if len(problems) != len(completions):
      raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    rewards = self.scores(problems, completions)
    _, graded = self.truth(problems, completions, group_size=group_size)
    metrics = {"true_accuracy": graded["reward/correctness"],
               "true_format": graded["reward/format"],
               "verifier/timeouts": graded["reward/timeouts"],
               "verifier/errors": graded["reward/errors"]}
    return rewards, metrics

  def close(self):
    """Ends the verifier's grading workers."""
    self.truth.close()
