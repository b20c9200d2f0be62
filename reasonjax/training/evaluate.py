"""Task accuracy of a policy with the sampler: greedy accuracy and pass@k on held-out problems.

    result = evaluate.task_accuracy(model, params, tokenizer, task, problems, rng,
                                    max_new_tokens=64, num_samples=8, k=8)
    result.metrics     # {"accuracy": ..., "pass_at_8": ..., "sample_accuracy": ..., ...}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np

from reasonjax.data.tasks import ANSWER_PREFIX, Problem, Task
from reasonjax.sampling import generate_texts, sampling_config


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

  Chen et al. 2021, "Evaluating Large Language Models Trained on Code".
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """metrics: floats for logging; greedy: the greedy completion of each problem."""

  metrics: dict[str, float]
  greedy: list[str]


def task_accuracy(model, params, tokenizer, task: Task, problems: Sequence[Problem],
                  rng: jax.Array, *, max_new_tokens: int, num_samples: int = 0, k: int = 1,
                  temperature: float = 1.0, batch_size: int = 64) -> Evaluation:
  """Greedy accuracy and, with num_samples > 0, pass@k over num_samples samples per problem.

  Returns metrics: accuracy (greedy), pass_at_{k}, sample_accuracy (mean over samples),
  greedy_length (mean characters) and truncated (fraction of greedy completions without an answer line).
  """
  if num_samples and not 1 <= k <= num_samples:
    raise ValueError(f"pass@k needs 1 <= k <= num_samples, got k={k}, num_samples={num_samples}")
  prompts = [task.prompt(p) for p in problems]
  # Greedy first; the samples take the whole distribution (top_p 1.0): pass@k of the policy.
  base = sampling_config({"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0,
                          "num_samples": 1}, tokenizer)
  greedy = [t[0] for t in generate_texts(model, params, tokenizer, prompts, rng, base,
                                         batch_size=batch_size, progress="eval greedy",
                                         tool=task.tool)]
  correct = [task.check_answer(p, t) for p, t in zip(problems, greedy)]
  metrics = {"accuracy": float(np.mean(correct)),
             "greedy_length": float(np.mean([len(t) for t in greedy])),
             "truncated": float(np.mean([ANSWER_PREFIX not in t for t in greedy]))}
  if num_samples > 0:
    sampled = generate_texts(
        model, params, tokenizer, prompts, jax.random.fold_in(rng, 1),
        base.replace(num_samples=num_samples, temperature=temperature),
        batch_size=max(1, batch_size // num_samples), progress=f"eval pass@{k}",
        tool=task.tool)
    counts = [sum(task.check_answer(p, t) for t in texts) for p, texts in zip(problems, sampled)]
    metrics[f"pass_at_{k}"] = float(np.mean([pass_at_k(num_samples, c, k) for c in counts]))
    metrics["sample_accuracy"] = float(np.mean(counts) / num_samples)
  return Evaluation(metrics=metrics, greedy=greedy)
