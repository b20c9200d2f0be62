"""Inference-time search methods, batched over problems, picked by name from `METHODS`.

    search = Search(policy, scorer, problems, rng, aggregation="min")
    result = METHODS["step_greedy"](search, n=8)
    accuracy = np.mean([task.check_answer(p, t) for p, t in zip(problems, result.texts)])

Every method takes the `Search` (the policy, a step scorer, the problems) and a budget n, and
returns each problem's chosen solution with the tokens it generated for it:

  best_of_n      n whole solutions; the one whose aggregated step score is highest.
  majority_vote  n whole solutions; the most frequent final answer (no scorer).
  weighted_vote  n whole solutions; the answer with the largest sum of solution scores.
  step_greedy    at each step, n candidate next steps of every open problem in one batched
                 sampler call; the scorer's best is kept (the HRM paper's protocol).
  beam           step-level beam search: `beam_width` beams, each expanded into
                 max(1, n // beam_width) candidates per step; the best `beam_width` children
                 by aggregated path score survive; finished beams leave the beam.
  mcts           step-level MCTS (`search.mcts`, `search.language.LanguageEnv`): n times
                 `simulations_per_n` simulations per problem.
  budget_forcing one solution whose answer is held back n - 1 times: each time the model
                 writes its answer line, the line is cut and `wait` appended, and it goes on
                 (s1's budget forcing, "Wait" injection); no scorer.

The three whole-solution methods share one `SolutionPool`: its samples are drawn in blocks of
1, 1, 2, 4, ... solutions, so that the first n of a problem are the same whatever larger n is
asked later. Best-of-n over one pool with an exact scorer is then monotone in n, and a sweep
over n = 1, 2, 4, ..., 64 samples 64 solutions per problem, not 127.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reasonjax.data.tasks import ANSWER_PREFIX, Problem, parse_answer
from reasonjax.sampling import encode_prompts
from reasonjax.search import language, mcts as mcts_lib, scorers as scorers_lib, tree as tree_lib
from reasonjax.search.policy import (StepPolicy, complete, expand, sample_solutions,
                                     solution_steps)

Scorer = Callable[[Sequence[Problem], Sequence[Sequence[str]]], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Result:
  """texts: the chosen solution of each problem; tokens: int [P], tokens the method generated
  for each problem; seconds: wall time; info: method-specific per-problem details."""

  texts: list[str]
  tokens: np.ndarray
  seconds: float
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class SolutionPool:
  """Whole solutions of each problem, drawn in nested blocks (see the module docstring), with
  their scores per scorer cached."""

  def __init__(self, policy: StepPolicy, problems: Sequence[Problem], rng: jax.Array):
    self.policy, self.problems, self.rng = policy, list(problems), rng
    self.texts: list[list[str]] = [[] for _ in self.problems]
    self.tokens = np.zeros((len(self.problems), 0), np.int32)
    self.block_seconds: list[tuple[int, float]] = []  # (block size, sampling seconds)
    # id(scorer) -> (scores [P][n], scoring seconds per solution column [n]).
    self._scores: dict[int, tuple[list[list[np.ndarray]], list[float]]] = {}

  def take(self, n: int) -> tuple[list[list[str]], np.ndarray, float]:
    """The first n solutions of every problem: (texts [P][n], tokens [P, n], seconds), the
    seconds being the sampling time of those n (a block used in part counts in proportion)."""
    while self.tokens.shape[1] < n:
      size = max(1, self.tokens.shape[1])
      start = time.perf_counter()
      texts, tokens = sample_solutions(self.policy, self.problems, size,
                                       jax.random.fold_in(self.rng, len(self.block_seconds)))
      self.block_seconds.append((size, time.perf_counter() - start))
      self.texts = [old + new for old, new in zip(self.texts, texts)]
      self.tokens = np.concatenate([self.tokens, tokens], axis=1)
    seconds, done = 0.0, 0
    for size, s in self.block_seconds:
      seconds += s * max(0, min(size, n - done)) / size
      done += size
    return [t[:n] for t in self.texts], self.tokens[:, :n], seconds

  def scores(self, scorer: Scorer, n: int) -> tuple[list[list[np.ndarray]], float]:
    """Step scores of the first n solutions of every problem ([P][n] arrays) and the seconds
    that scoring them takes (cached per scorer: only new solutions are scored, and each
    solution's share of its scoring call is counted for every n that includes it)."""
    cached, seconds = self._scores.setdefault(id(scorer), ([[] for _ in self.problems], []))
    texts, _, _ = self.take(n)
    have = len(seconds)
    if have < n:
      start = time.perf_counter()
      task = self.policy.task
      todo = [(i, solution_steps(task, t)) for i, row in enumerate(texts) for t in row[have:n]]
      new = scorer([self.problems[i] for i, _ in todo], [s for _, s in todo])
      for (i, _), s in zip(todo, new):
        cached[i].append(s)
      seconds += [(time.perf_counter() - start) / (n - have)] * (n - have)
    return [c[:n] for c in cached], sum(seconds[:n])


@dataclasses.dataclass
class Search:
  """What every method needs. `scorer` may be None for majority_vote only; `pool` is made on
  first use and shared by the whole-solution methods; `mcts` holds `search.language`'s MCTS
  settings (`language.SETTINGS` fields)."""

  policy: StepPolicy
  scorer: Scorer | None
  problems: list[Problem]
  rng: jax.Array
  aggregation: str = "min"
  beam_width: int = 4
  mcts: dict[str, Any] = dataclasses.field(default_factory=dict)
  pool: SolutionPool | None = None
  wait: str = "Wait,"

  def __post_init__(self):
    scorers_lib.check_aggregation(self.aggregation)
    if self.beam_width < 1:
      raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
    self.problems = list(self.problems)

  def solutions(self) -> SolutionPool:
    if self.pool is None:
      self.pool = SolutionPool(self.policy, self.problems, jax.random.fold_in(self.rng, 1))
    return self.pool

  def need_scorer(self, method: str) -> Scorer:
    if self.scorer is None:
      raise ValueError(f"search method {method!r} needs a scorer (a reward model or the "
                       "oracle); only majority_vote runs without one")
    return self.scorer


def best_of_n(search: Search, n: int) -> Result:
  """The solution with the highest aggregated step score among n (ties: the first)."""
  scorer = search.need_scorer("best_of_n")
  texts, tokens, sample_s = search.solutions().take(n)
  scores, score_s = search.solutions().scores(scorer, n)
  values = [[scorers_lib.aggregate(s, search.aggregation) for s in row] for row in scores]
  chosen = [int(np.argmax(v)) for v in values]
  return Result([row[j] for row, j in zip(texts, chosen)], tokens.sum(1), sample_s + score_s,
                {"chosen_score": [v[j] for v, j in zip(values, chosen)]})


def _vote(texts: list[str], weights: Sequence[float]) -> str:
  """The solution whose answer has the largest total weight (ties: the answer seen first); a
  solution without an answer votes for nothing; none with one: the first solution."""
  totals: dict[str, float] = collections.defaultdict(float)
  first: dict[str, int] = {}
  for j, (text, w) in enumerate(zip(texts, weights)):
    answer = parse_answer(text)
    if answer is not None:
      totals[answer] += w
      first.setdefault(answer, j)
  if not totals:
    return texts[0]
  best = max(totals, key=lambda a: (totals[a], -first[a]))
  return texts[first[best]]


def majority_vote(search: Search, n: int) -> Result:
  """The most frequent final answer among n solutions (self-consistency)."""
  texts, tokens, seconds = search.solutions().take(n)
  return Result([_vote(row, [1.0] * len(row)) for row in texts], tokens.sum(1), seconds)


def weighted_vote(search: Search, n: int) -> Result:
  """The answer with the largest sum of aggregated solution scores among n solutions."""
  scorer = search.need_scorer("weighted_vote")
  texts, tokens, sample_s = search.solutions().take(n)
  scores, score_s = search.solutions().scores(scorer, n)
  chosen = [_vote(row, [scorers_lib.aggregate(s, search.aggregation) for s in srow])
            for row, srow in zip(texts, scores)]
  return Result(chosen, tokens.sum(1), sample_s + score_s)


@dataclasses.dataclass
class _Path:
  """A partial solution: prefix token ids (prompt included), its steps and their scores."""

  ids: np.ndarray
  steps: list[str]
  scores: list[float]
  final: bool = False


def _grow(search: Search, paths: list[tuple[int, _Path]], k: int, rng: jax.Array,
          tokens: np.ndarray) -> list[list[_Path]]:
  """k scored children of each (problem index, path), from one batched expansion; adds the
  generated tokens to tokens[problem]."""
  candidates = expand(search.policy, [p.ids for _, p in paths], k, rng)
  flat = [(i, p, c) for (i, p), cands in zip(paths, candidates) for c in cands]
  scores = search.scorer([search.problems[i] for i, _, _ in flat],
                         [p.steps + [c.text] for _, p, c in flat])
  children = []
  for row, ((i, path), cands) in enumerate(zip(paths, candidates)):
    tokens[i] += sum(len(c.ids) for c in cands)
    children.append([
        _Path(np.concatenate([path.ids, c.ids]), path.steps + [c.text],
              path.scores + [float(scores[row * k + j][-1])], c.final)
        for j, c in enumerate(cands)])
  return children


def step_greedy(search: Search, n: int) -> Result:
  """At each step, n candidates per open problem; the scorer's best (ties: the first) is kept
  until it ends the solution or `policy.max_steps` steps are taken."""
  search.need_scorer("step_greedy")
  start = time.perf_counter()
  paths = [_Path(search.policy.prompt_ids(p), [], []) for p in search.problems]
  tokens = np.zeros(len(paths), np.int64)
  for depth in range(search.policy.max_steps):
    open_ = [(i, p) for i, p in enumerate(paths) if not p.final]
    if not open_:
      break
    for (i, _), children in zip(open_, _grow(search, open_, n,
                                              jax.random.fold_in(search.rng, depth), tokens)):
      paths[i] = children[int(np.argmax([c.scores[-1] for c in children]))]
  return Result(["\n".join(p.steps) for p in paths], tokens, time.perf_counter() - start,
                {"step_scores": [p.scores for p in paths]})


def beam(search: Search, n: int) -> Result:
  """Step-level beam search: beam_width beams of n // beam_width candidates each per step (the
  root's beam_width copies at the first step), ranked by aggregated path score."""
  search.need_scorer("beam")
  width = min(search.beam_width, n)
  k = max(1, n // width)
  start = time.perf_counter()
  value = lambda p: scorers_lib.aggregate(np.asarray(p.scores), search.aggregation)  # noqa: E731
  beams = [[_Path(search.policy.prompt_ids(p), [], [])] * width for p in search.problems]
  finished: list[list[_Path]] = [[] for _ in search.problems]
  tokens = np.zeros(len(beams), np.int64)
  for depth in range(search.policy.max_steps):
    live = [(i, p) for i, row in enumerate(beams) for p in row]
    if not live:
      break
    grown = _grow(search, live, k, jax.random.fold_in(search.rng, depth), tokens)
    children: dict[int, list[_Path]] = collections.defaultdict(list)
    for (i, _), kids in zip(live, grown):
      children[i] += kids
    for i in range(len(beams)):
      # Sorting is stable: ties keep the order of the beams and candidates.
      best = sorted(children.get(i, []), key=value, reverse=True)[:width]
      finished[i] += [p for p in best if p.final]
      beams[i] = [p for p in best if not p.final]
  chosen = [max(done or rest or [_Path(np.zeros(0), [], [])], key=value)
            for done, rest in zip(finished, beams)]
  return Result(["\n".join(p.steps) for p in chosen], tokens, time.perf_counter() - start)


def grow_trees(search: Search, simulations: int, *, stop_reward: float | None = None
               ) -> tuple[tree_lib.Tree, language.LanguageEnv, dict[str, Any]]:
  """One MCTS tree per problem of `search`, grown by `mcts.search` for `simulations` per tree
  with the settings `search.mcts` (`language.SETTINGS`); a tree stops early once it holds a
  terminal node of reward >= `stop_reward` (None: never). Returns (tree, env, stats)."""
  settings = language.check_settings(search.mcts)
  policy, problems = search.policy, search.problems
  k, w = settings["num_children"], settings["simulations_per_round"]
  env = language.LanguageEnv(policy, search.scorer, problems, jax.random.fold_in(search.rng, 2),
                             num_children=k, evaluation=settings["evaluation"],
                             lam=settings["lam"])
  roots, root_lengths = encode_prompts(policy.tokenizer, [policy.task.prompt(p) for p in problems])
  # A round may add W * k nodes past the budget; every node holds at most max_step_tokens.
  capacity = 1 + simulations + w * k
  tree = tree_lib.init(len(problems), capacity=capacity, max_children=k,
                       arena_size=roots.shape[1] + (capacity - 1) * policy.max_step_tokens,
                       root_tokens=jnp.asarray(roots), root_lengths=jnp.asarray(root_lengths))
  config = mcts_lib.MCTSConfig(num_simulations=simulations, simulations_per_round=w,
                               c=settings["c"], rule=settings["rule"],
                               max_depth=policy.max_steps, stop_reward=stop_reward)
  tree, stats = mcts_lib.search(tree, env, config)
  return tree, env, stats


def simulations_to_solve(search: Search, simulations: int) -> tuple[np.ndarray, np.ndarray]:
  """ThinkLite's difficulty of each problem (Wang et al. 2025, "SoTA with Less: MCTS-Guided
  Sample Selection for Data-Efficient Visual Reasoning Self-Improvement"): the MCTS simulations
  (`grow_trees`, at most `simulations`) until its tree holds a right answer, and whether it
  did. The search must grade answers itself (`search.mcts` evaluation "rollout" or "mixed", or
  a scorer that grades answer lines, such as the oracle), since solved means a terminal node of
  reward 1. Returns (simulations int [P], solved bool [P])."""
  _, _, stats = grow_trees(search, simulations, stop_reward=1.0)
  return np.asarray(stats["simulations"]), np.asarray(stats["solved"])


def mcts(search: Search, n: int) -> Result:
  """Step-level MCTS of every problem (`grow_trees`): n * simulations_per_n simulations per
  tree; the answer is the line of most visited (or best valued) children from the root,
  completed by one rollout when it stops before the solution's end."""
  settings = language.check_settings(search.mcts)
  policy = search.policy
  start = time.perf_counter()
  tree, env, stats = grow_trees(search, n * settings["simulations_per_n"])
  lines = np.asarray(mcts_lib.best_path(tree, by=settings["select_by"],
                                        max_depth=policy.max_steps))
  terminal = np.asarray(tree.terminal)
  texts, unfinished = [], []
  for b, line in enumerate(lines):
    end = int(line[line >= 0][-1])
    texts.append("\n".join(env.steps(b, end)))
    if not terminal[b, end]:
      unfinished.append((b, env.steps(b, end), env.prefix(b, end)))
  if unfinished:
    completions = complete(policy, [ids for *_, ids in unfinished], env.next_rng())
    for (b, steps, _), (text, count) in zip(unfinished, completions):
      env.tokens[b] += count
      texts[b] = "\n".join(solution_steps(policy.task, "\n".join(steps + [text])))
  return Result(texts, env.tokens.copy(), time.perf_counter() - start,
                {"simulations": stats["simulations"], "overflow": stats["overflow"],
                 "tree": tree})


def budget_forcing(search: Search, n: int) -> Result:
  """Test-time scaling in the sampler (Muennighoff et al. 2025, "s1: Simple test-time
  scaling"): each problem's solution is sampled to its end; while it has been extended fewer
  than n - 1 times, its answer line is cut off, `search.wait` appended, and sampling goes on
  from the prompt and that text. A solution that ends without an answer line (its budget,
  `max_new_tokens` per extension, ran out) is made to answer: the answer prefix is appended
  and completed. n = 1 is one ordinary sample. tokens: every token generated, the cut answers
  included; info["waits"]: the extensions of each problem."""
  policy, tok = search.policy, search.policy.tokenizer
  start = time.perf_counter()
  rng = jax.random.fold_in(search.rng, 5)
  count = len(search.problems)
  texts, tokens, waits = [""] * count, np.zeros(count, np.int64), np.zeros(count, np.int64)

  def prefix(i: int, extra: str = "") -> np.ndarray:
    ids = tok.encode(texts[i] + extra) if texts[i] + extra else []
    return np.concatenate([policy.prompt_ids(search.problems[i]), np.asarray(ids, np.int32)])

  active = list(range(count))
  for extension in range(n):
    rows = complete(policy, [prefix(i) for i in active], jax.random.fold_in(rng, extension))
    going = []
    for i, (text, generated) in zip(active, rows):
      texts[i] += text
      tokens[i] += generated
      cut = texts[i].rfind(ANSWER_PREFIX)
      if extension < n - 1 and cut >= 0:
        texts[i] = texts[i][:cut] + search.wait
        waits[i] += 1
        going.append(i)
    active = going
  # Forced to answer: the prompt, its text and the answer prefix, completed.
  mute = [i for i in range(count) if ANSWER_PREFIX not in texts[i]]
  cues = [("" if texts[i].endswith("\n") else "\n") + ANSWER_PREFIX for i in mute]
  forced = complete(policy, [prefix(i, cue) for i, cue in zip(mute, cues)],
                    jax.random.fold_in(rng, n))
  for i, cue, (text, generated) in zip(mute, cues, forced):
    texts[i] += cue + text
    tokens[i] += generated
  return Result(texts, tokens, time.perf_counter() - start,
                {"waits": waits.tolist(), "forced": mute})


METHODS: dict[str, Callable[[Search, int], Result]] = {
    "best_of_n": best_of_n,
    "majority_vote": majority_vote,
    "weighted_vote": weighted_vote,
    "step_greedy": step_greedy,
    "beam": beam,
    "mcts": mcts,
    "budget_forcing": budget_forcing,
}


def get_method(name: str) -> Callable[[Search, int], Result]:
  """The method `name`; an unknown name lists the valid ones."""
  if name not in METHODS:
    raise ValueError(f"unknown search method {name!r}; valid methods: {sorted(METHODS)}")
  return METHODS[name]
