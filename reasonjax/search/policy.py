"""The policy as search sees it: whole solutions, or candidate next steps of many prefixes.

    policy = StepPolicy(model, params, tokenizer, task, temperature=1.0, max_step_tokens=32)
    texts, tokens = sample_solutions(policy, problems, n=8, rng=rng)     # [P][8] each
    cands = expand(policy, prefixes, k=4, rng=rng)                       # [len(prefixes)][4]

A prefix is token ids: the prompt (BOS first, as `sampling.encode_prompts` makes it) followed by
the chosen steps' own tokens, delimiter included, so a path is never re-tokenised. Sampler calls
hold a power of two of prefixes (up to `batch_size`, padded with copies of the first), so a
search compiles a few programs per prefix-length bucket, not one per number of open prefixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from reasonjax.data.tasks import ANSWER_PREFIX, Problem, Task
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.sampling.texts import (decode_rows, encode_prompts, generate_texts,
                                      sample_chunks)


@dataclasses.dataclass(frozen=True)
class StepPolicy:
  """A policy model with what search needs to sample from it.

  Attributes:
    model, params: a `models.Model` with an LM head and its parameters.
    tokenizer: a `data.tokenizers.Tokenizer`; its step delimiter ends a step.
    task: the `data.tasks.Task` whose prompts are sampled.
    temperature, top_p: sampling of solutions and steps.
    max_step_tokens: the longest step; a step that reaches it ends there (finish 'length').
    max_steps: the deepest path a step-level search grows.
    max_new_tokens: the longest whole solution (`sample_solutions`, rollouts).
    batch_size: prompts or prefixes per sampler call (each with all its samples).
  """

  model: Any
  params: Any
  tokenizer: Any
  task: Task
  temperature: float = 1.0
  top_p: float = 1.0
  max_step_tokens: int = 32
  max_steps: int = 8
  max_new_tokens: int = 128
  batch_size: int = 16

  def __post_init__(self):
    for name in ("max_step_tokens", "max_steps", "max_new_tokens", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"StepPolicy.{name} must be >= 1, got {getattr(self, name)}")

  def sampling(self, **changes) -> sampler_lib.SamplingConfig:
    return sampler_lib.SamplingConfig(
        max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
        eos_token_id=self.tokenizer.eos_id, pad_token_id=self.tokenizer.pad_id).replace(**changes)

  def prompt_ids(self, problem: Problem) -> np.ndarray:
    return encode_prompts(self.tokenizer, [self.task.prompt(problem)])[0][0]


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One sampled next step.

  ids: its tokens, the delimiter (or EOS) included; text: decoded, without delimiter and EOS;
  logprob: sum of its tokens' log-probabilities (under the sampling temperature); final: it
  ends the solution (EOS, or it is the answer line).
  """

  ids: np.ndarray
  text: str
  logprob: float
  final: bool


def is_answer(step: str) -> bool:
  return step.lstrip().startswith(ANSWER_PREFIX)


def solution_steps(task: Task, text: str) -> list[str]:
  """A whole solution as search scores it: its reasoning steps, then its answer line if any."""
  steps = task.parse_steps(text)
  # The last answer line: the one `parse_answer`, and so the grader, reads.
  answer = next((line.strip() for line in reversed(text.splitlines()) if is_answer(line)), None)
  return steps + ([answer] if answer else [])


def sample_solutions(policy: StepPolicy, problems: Sequence[Problem], n: int, rng: jax.Array
                     ) -> tuple[list[list[str]], np.ndarray]:
  """n whole solutions per problem. Returns (texts [P][n], generated tokens int [P, n])."""
  return generate_texts(policy.model, policy.params, policy.tokenizer,
                        [policy.task.prompt(p) for p in problems], rng,
                        policy.sampling(num_samples=n), batch_size=policy.batch_size,
                        return_lengths=True)


def _sample_prefixes(policy: StepPolicy, prefixes: Sequence[np.ndarray], k: int, rng: jax.Array,
                     config: sampler_lib.SamplingConfig) -> list[list[tuple]]:
  """k samples of each prefix (token ids) in sampler calls of at most `policy.batch_size`
  prefixes (padded with copies of the first to a power of two). Returns [len(prefixes)][k] tuples
  (ids, text, logprob, ended by EOS); text decoded without the EOS."""
  tok = policy.tokenizer
  tokens = np.full((len(prefixes), max(len(p) for p in prefixes)), tok.pad_id, np.int32)
  for row, ids in zip(tokens, prefixes):
    row[:len(ids)] = ids
  lengths = np.asarray([len(ids) for ids in prefixes], np.int32)
  out = []
  # Calls shrink to a power of two: a search round with few open prefixes pays for few rows.
  for real, result in sample_chunks(policy.model, policy.params, tokens, lengths, rng,
                                    config.replace(num_samples=k),
                                    batch_size=policy.batch_size, shrink=True):
    texts = decode_rows(tok, result)
    for b in range(real):
      row = []
      for j in range(b * k, (b + 1) * k):
        count = int(result.lengths[j])
        row.append((np.asarray(result.tokens[j, :count], np.int32), texts[j],
                    float(result.logprobs[j, :count].sum()),
                    bool(result.finish_reason[j] == sampler_lib.EOS)))
      out.append(row)
  return out


def expand(policy: StepPolicy, prefixes: Sequence[np.ndarray], k: int, rng: jax.Array
           ) -> list[list[Candidate]]:
  """k candidate next steps of each prefix (token ids), each up to its step delimiter, EOS or
  `max_step_tokens`. Returns [len(prefixes)][k] `Candidate`s; row order follows `prefixes`."""
  if not prefixes:
    return []
  config = policy.sampling(max_new_tokens=policy.max_step_tokens,
                           stop_sequences=policy.tokenizer.step_end_sequences())
  return [[Candidate(ids=ids, text=text.strip(), logprob=logprob,
                     final=eos or is_answer(text.strip()))
           for ids, text, logprob, eos in row]
          for row in _sample_prefixes(policy, prefixes, k, rng, config)]


def complete(policy: StepPolicy, prefixes: Sequence[np.ndarray], rng: jax.Array
             ) -> list[tuple[str, int]]:
  """One completion of each prefix to the end of the solution (EOS or `max_new_tokens`):
  [(text without EOS, generated tokens)], a Monte-Carlo rollout of search."""
  if not prefixes:
    return []
  return [(row[0][1], len(row[0][0]))
          for row in _sample_prefixes(policy, prefixes, 1, rng, policy.sampling())]
