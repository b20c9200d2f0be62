"""Monte-Carlo step labels: how often the policy still reaches the right answer from a step.

    complete = mc_labels.policy_completer(model, params, tok, config, rng, batch_size=256)
    values = mc_labels.mc_step_values(task, problems, solutions, complete, k=8)
    hard = mc_labels.hard_labels(values)                     # Math-Shepherd's hard labels
    search = mc_labels.first_error_binary_search(task, problems, solutions, complete, k=8)
    mc_labels.first_error_agreement(task, problems, solutions, search.first_errors)

Definitions (Math-Shepherd, Wang et al. 2024): the *prefix* of step i of a solution is the
prompt followed by steps 0..i, each ended by the step delimiter. The policy completes it k times;
a completion is right when `task.check_answer(problem, steps_text + completion)` holds, where
steps_text is the solution part of the prefix (without the prompt). The soft value of step i is
the fraction of its k completions that are right, in {0, 1/k, ..., 1}; the hard label is
"value > 0" (some completion is right).

A prefix that already holds an answer line `#### x` (steps passed with their answer line, e.g. a
whole solution split on the delimiter) is graded as it stands: its value is 1 or 0 and it costs
no rollouts. The grader reads the last `####` of a text, so a completion after an answer could
only change the verdict by writing a second answer, which is not a continuation of that solution.

The first error of a solution is its first step of value 0. OmegaPRM (Luo et al. 2024) finds it
by binary search over the step index instead of valuing every step: if the prefix through the
midpoint has a right completion the first error lies after it, else at or before it. That is
exact when values, once 0, stay 0 (a wrong step is not repaired later); it then costs
ceil(log2(n + 1)) prefixes for n steps instead of n.

The policy is seen only through a *completer*, `complete(prefixes, k) -> k texts per prefix`,
so the label arithmetic runs without a model; `policy_completer` builds one from the sampler.
Every function batches over all solutions: the sweep is one completer call, and the binary
search one call per round.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tqdm

from reasonjax.data.tasks.base import Problem, Task, parse_answer
from reasonjax.sampling.sampler import SamplingConfig
from reasonjax.sampling.texts import generate_texts

# complete(prefixes, k) -> for each prefix string, k completion texts (continuations only).
Completer = Callable[[list[str], int], list[list[str]]]


def policy_completer(model, params, tokenizer, config: SamplingConfig, rng: jax.Array, *,
                     batch_size: int = 256, progress: str | None = "mc rollouts") -> Completer:
  """A completer that samples the policy with `generate_texts`.

  Args:
    model, params, tokenizer: the policy, as `generate_texts` takes them.
    config: decoding settings; its num_samples is replaced by each call's k. End rows at the
      tokenizer's EOS (`sampling_config` does), else every rollout runs to max_new_tokens.
    rng: PRNG key; call c uses fold_in(rng, c), so successive rounds draw different rollouts
      and the same sequence of calls gives the same rollouts.
    batch_size: sequences per sampler call (prompts per call x k).
    progress: tqdm description of each call's bar; None shows none.

  Returns:
    `complete(prefixes, k) -> list[list[str]]`.
  """
  if batch_size < 1:
    raise ValueError(f"policy_completer: batch_size must be >= 1, got {batch_size}")
  calls = itertools.count()

  def complete(prefixes: list[str], k: int) -> list[list[str]]:
    _check_k(k)
    key = jax.random.fold_in(rng, next(calls))  # Counted even when empty: rounds stay aligned.
    if not prefixes:
      return []
    return generate_texts(model, params, tokenizer, list(prefixes), key,
                          config.replace(num_samples=k), batch_size=max(1, batch_size // k),
                          progress=progress)

  return complete


@dataclasses.dataclass
class CountingCompleter:
  """Wraps a completer and counts what it was asked: calls, prefixes and rollouts (k each)."""

  complete: Completer
  calls: int = 0
  prefixes: int = 0
  rollouts: int = 0

  def __call__(self, prefixes: list[str], k: int) -> list[list[str]]:
    self.calls += 1
    self.prefixes += len(prefixes)
    self.rollouts += len(prefixes) * k
    return self.complete(prefixes, k)


def mc_step_values(task: Task, problems: Sequence[Problem], solutions: Sequence[Sequence[str]],
                   complete: Completer, *, k: int, delimiter: str = "\n") -> list[np.ndarray]:
  """Soft MC value of every step of every solution, from ONE completer call.

  Args:
    task: grades completions (`check_answer`) and writes prompts (`prompt`).
    problems: N problems.
    solutions: N lists of steps (e.g. `task.parse_steps(text)`); solution j solves problem j.
    complete: the completer; it is called once with every prefix that needs rollouts.
    k: completions per prefix.
    delimiter: ends each step in the prefix (the tokenizer's `step_delimiter`).

  Returns:
    N float64 arrays, [n_j] for n_j steps: the fraction of right completions of each prefix.
  """
  _check_inputs(problems, solutions, k)
  queries = [(j, i) for j, steps in enumerate(solutions) for i in range(len(steps))]
  flat = _prefix_values(task, problems, solutions, queries, complete, k, delimiter)
  out, at = [], 0
  for steps in solutions:
    out.append(flat[at:at + len(steps)])
    at += len(steps)
  return out


def hard_labels(values: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Math-Shepherd's hard labels: bool [n_j], some completion of the step's prefix is right."""
  return [np.asarray(v) > 0 for v in values]


def first_error_from_values(values: np.ndarray) -> int | None:
  """The index of the first step of value 0 (values [n]); None when every value is > 0."""
  zero = np.flatnonzero(np.asarray(values) <= 0)
  return int(zero[0]) if len(zero) else None


@dataclasses.dataclass(frozen=True)
class BinarySearchResult:
  """What `first_error_binary_search` found and what it cost.

  Attributes:
    first_errors: per solution, the index of its first step of value 0, or None.
    values: per solution, {step index: MC value} of the prefixes it measured (these are
      labels too: OmegaPRM keeps them).
    rounds: completer calls made (rounds in which some prefix needed rollouts).
    rollouts: completions asked for, k per prefix sent to the completer.
  """

  first_errors: list[int | None]
  values: list[dict[int, float]]
  rounds: int
  rollouts: int


def first_error_binary_search(task: Task, problems: Sequence[Problem],
                              solutions: Sequence[Sequence[str]], complete: Completer, *, k: int,
                              delimiter: str = "\n", progress: str | None = None
                              ) -> BinarySearchResult:
  """OmegaPRM's binary search for each solution's first step of MC value 0.

  Each solution keeps an interval [lo, hi] of step indices, hi = n_j standing for "no error".
  Per round, every unfinished solution's midpoint mid = (lo + hi) // 2 is valued (all of them
  in one completer call): value > 0 sets lo = mid + 1, value 0 sets hi = mid. A solution of n
  steps finishes within ceil(log2(n + 1)) rounds. The answer equals
  `first_error_from_values(mc_step_values(...))` whenever the values, once 0, stay 0.

  Args:
    task, problems, solutions, complete, k, delimiter: as in `mc_step_values`.
    progress: a tqdm description for the rounds; None shows no bar.

  Returns:
    A `BinarySearchResult`.
  """
  _check_inputs(problems, solutions, k)
  lo = [0] * len(solutions)
  hi = [len(steps) for steps in solutions]
  measured: list[dict[int, float]] = [{} for _ in solutions]
  counter = CountingCompleter(complete)
  most = max((len(s) for s in solutions), default=0)
  with tqdm.tqdm(total=math.ceil(math.log2(most + 1)), desc=progress, disable=progress is None,
                 leave=False) as bar:
    while True:
      queries = [(j, (lo[j] + hi[j]) // 2) for j in range(len(solutions)) if lo[j] < hi[j]]
      if not queries:
        break
      values = _prefix_values(task, problems, solutions, queries, counter, k, delimiter)
      for (j, mid), value in zip(queries, values):
        measured[j][mid] = float(value)
        if value > 0:
          lo[j] = mid + 1
        else:
          hi[j] = mid
      bar.update()
  first = [lo[j] if lo[j] < len(steps) else None for j, steps in enumerate(solutions)]
  return BinarySearchResult(first_errors=first, values=measured, rounds=counter.calls,
                            rollouts=counter.rollouts)


def first_error_agreement(task: Task, problems: Sequence[Problem],
                          solutions: Sequence[Sequence[str]],
                          predicted: Sequence[int | None]) -> dict[str, float]:
  """How well predicted first wrong steps match the task's ground truth.

  The true first error t_j of solution j is `task.check_steps(problem, steps).first_error`; the
  solution "has an error" when t_j is not None. With p_j the prediction (None: no error):

    precision = #{j: p_j is not None and p_j == t_j} / #{j: p_j is not None}
    recall    = #{j: t_j is not None and p_j == t_j} / #{j: t_j is not None}
    detection_accuracy = mean_j [(p_j is not None) == (t_j is not None)]
    exact_accuracy     = mean_j [p_j == t_j]   (None == None counts)

  A ratio with an empty denominator is nan.

  Returns:
    The four numbers above and the counts: solutions, true_errors, predicted_errors.
  """
  if not len(problems) == len(solutions) == len(predicted):
    raise ValueError(f"first_error_agreement: {len(problems)} problems, {len(solutions)} "
                     f"solutions and {len(predicted)} predictions; expected equal lengths")
  truth = [task.check_steps(p, list(s)).first_error for p, s in zip(problems, solutions)]
  pairs = list(zip(predicted, truth))
  said = [p == t for p, t in pairs if p is not None]
  real = [p == t for p, t in pairs if t is not None]
  return {
      "precision": float(np.mean(said)) if said else float("nan"),
      "recall": float(np.mean(real)) if real else float("nan"),
      "detection_accuracy": float(np.mean([(p is None) == (t is None) for p, t in pairs]))
      if pairs else float("nan"),
      "exact_accuracy": float(np.mean([p == t for p, t in pairs])) if pairs else float("nan"),
      "solutions": len(pairs), "true_errors": len(real), "predicted_errors": len(said),
  }


def _check_k(k) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k (completions per prefix) must be an integer >= 1, got {k!r}")


def _check_inputs(problems, solutions, k) -> None:
  _check_k(k)
  if len(problems) != len(solutions):
    raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions; solution j "
                     "must solve problem j")
  for j, steps in enumerate(solutions):
    # A string is a sequence too; its characters would pass as steps.
    if isinstance(steps, str) or not all(isinstance(s, str) for s in steps):
      raise ValueError(f"solution {j} must be a list of step strings (e.g. "
                       f"task.parse_steps(text)), got {type(steps).__name__}: {steps!r:.80}")


def _prefix_values(task: Task, problems, solutions, queries: list[tuple[int, int]],
                   complete: Completer, k: int, delimiter: str) -> np.ndarray:
  """MC values float64 [len(queries)] of the prefixes (solution j, through step i), with one
  completer call for those that do not already hold an answer (none when all do)."""
  values = np.zeros(len(queries))
  texts = ["".join(s + delimiter for s in solutions[j][:i + 1]) for j, i in queries]
  pending = []
  for q, ((j, _), text) in enumerate(zip(queries, texts)):
    if parse_answer(text) is not None:  # Answered already: graded as it stands (module doc).
      values[q] = float(task.check_answer(problems[j], text))
    else:
      pending.append(q)
  if not pending:
    return values
  prompts = [task.prompt(problems[queries[q][0]]) + texts[q] for q in pending]
  completions = complete(prompts, k)
  if not isinstance(completions, Sequence) or len(completions) != len(prompts):
    got = len(completions) if isinstance(completions, Sequence) else type(completions).__name__
    raise ValueError(f"the completer returned {got} lists for {len(prompts)} prefixes; it "
                     "must return k completions for each prefix, in order")
  for q, group in zip(pending, completions):
    if isinstance(group, str) or len(group) != k:
      got = "a string" if isinstance(group, str) else f"{len(group)} texts"
      raise ValueError(f"the completer returned {got} for a prefix; expected a list of k={k} "
                       "completion texts")
    problem, text = problems[queries[q][0]], texts[q]
    values[q] = np.mean([task.check_answer(problem, text + c) for c in group])
  return values
