"""Step-level MCTS over a language model's reasoning: the environment that grows the trees.

    env = LanguageEnv(policy, scorer, problems, rng, num_children=4, evaluation="mixed", lam=0.5)
    tree = tree_lib.init(B, capacity=..., max_children=4, arena_size=..., root_tokens=prompts)
    tree, stats = mcts.search(tree, env, mcts.MCTSConfig(num_simulations=32, ...))

A node is a step. `expand` gives the k candidate next steps of every selected leaf of every tree
in one batched sampler call (`policy.expand`); the policy's prior of a candidate is the softmax
over its siblings of their mean token log-probability (length-normalised, so that short steps
are not preferred for being short). A candidate is terminal when it ends the solution (EOS or
the answer line) or reaches `policy.max_steps`. New nodes are valued by `evaluation`:

  reward   the scorer's score of the step (a PRM / HRM, or the task's checker).
  rollout  one completion of the node's path to an answer (one batched sampler call), graded by
           the task's answer check: 1 or 0. A terminal node is graded as it stands.
  mixed    (1 - lam) * reward + lam * rollout (rStar's and AlphaZero's mix of a value estimate
           and an outcome).

The rollout and mixed modes read the problems' gold answers: they are for building training
data (MC-labelled trees) or as an upper bound, not a deployable decoder without a verifier.
The environment keeps each node's step text and tokens on the host (keyed by tree and node
id), so paths are rebuilt without reading the device arena back; `LanguageEnv.keep_subtree`
re-roots the trees and renumbers those records alike, so a search continues from chosen steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reasonjax.data.tasks import Problem
from reasonjax.search import mcts as mcts_lib, tree as tree_lib
from reasonjax.search.policy import StepPolicy, complete, expand

EVALUATIONS = ("reward", "rollout", "mixed")
# The settings of `methods.mcts` / `methods.grow_trees` (config.search.mcts) and their defaults.
SETTINGS = {"num_children": 4, "c": 1.0, "rule": "puct", "simulations_per_round": 4,
            "evaluation": "reward", "lam": 0.5, "select_by": "visits", "simulations_per_n": 4}


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
  """`SETTINGS` overridden by `settings`; raises ValueError naming a bad or unknown field."""
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    raise ValueError(f"MCTS settings {unknown} are unknown; valid: {sorted(SETTINGS)}")
  out = SETTINGS | dict(settings)
  if out["evaluation"] not in EVALUATIONS:
    raise ValueError(f"MCTS evaluation={out['evaluation']!r}; valid: {EVALUATIONS}")
  if not 0.0 <= out["lam"] <= 1.0:
    raise ValueError(f"MCTS lam={out['lam']} must be in [0, 1]")
  if out["select_by"] not in ("visits", "value"):
    raise ValueError(f"MCTS select_by={out['select_by']!r}; valid: ('visits', 'value')")
  for name in ("num_children", "simulations_per_round", "simulations_per_n"):
    if int(out[name]) != out[name] or out[name] < 1:
      raise ValueError(f"MCTS {name}={out[name]!r} must be an integer >= 1")
  # The config's own checks (c, rule) with a placeholder budget.
  mcts_lib.MCTSConfig(num_simulations=1, simulations_per_round=out["simulations_per_round"],
                      c=out["c"], rule=out["rule"])
  return out


def step_priors(candidates) -> np.ndarray:
  """PUCT's prior of sibling candidate steps: softmax of their mean token log-probabilities.
  float64 [k]."""
  mean = np.asarray([c.logprob / max(len(c.ids), 1) for c in candidates], np.float64)
  p = np.exp(mean - mean.max())
  return p / p.sum()


class LanguageEnv:
  """`mcts.Environment` for B problems: tree b searches problems[b].

  Attributes:
    tokens: int [B], tokens generated so far for each tree (steps and rollouts).
    nodes: per tree, {node id: (parent id, token ids, step text)}; the root holds the prompt.
  """

  def __init__(self, policy: StepPolicy, scorer, problems: Sequence[Problem], rng: jax.Array,
               *, num_children: int, evaluation: str = "reward", lam: float = 0.5):
    if evaluation not in EVALUATIONS:
      raise ValueError(f"evaluation={evaluation!r}; valid: {EVALUATIONS}")
    if evaluation != "rollout" and scorer is None:
      raise ValueError(f"evaluation={evaluation!r} needs a scorer")
    self.policy, self.scorer, self.problems = policy, scorer, list(problems)
    self.rng, self.k, self.evaluation, self.lam = rng, num_children, evaluation, lam
    self.tokens = np.zeros(len(self.problems), np.int64)
    self.nodes = [{0: (-1, policy.prompt_ids(p), "")} for p in self.problems]
    # After `keep_subtree`: the steps above each tree's root, and its depth in the solution.
    self.root_steps: list[list[str]] = [[] for _ in self.problems]
    self.root_depth = np.zeros(len(self.problems), np.int64)
    self._calls = 0
    self._pending: dict[tuple[int, int, int], tuple] = {}

  def steps(self, b: int, node: int) -> list[str]:
    """The step texts of the solution up to `node` of tree b (those above a kept root too)."""
    out = []
    while node > 0:
      node, _, text = self.nodes[b][node]
      out.append(text)
    return self.root_steps[b] + out[::-1]

  def prefix(self, b: int, node: int) -> np.ndarray:
    """Token ids of the prompt and the steps to `node` of tree b."""
    parts = []
    while node >= 0:
      node, ids, _ = self.nodes[b][node]
      parts.append(ids)
    return np.concatenate(parts[::-1]).astype(np.int32)

  def keep_subtree(self, tree: tree_lib.Tree, nodes) -> tree_lib.Tree:
    """`tree.keep_subtree(tree, nodes)`, with this environment's records renumbered alike, so
    that a search continues from the chosen steps. nodes: int [B]; -1 keeps a tree whole. The
    caller's `MCTSConfig.max_depth` counts from the new root (`root_depth` says how deep it is)."""
    nodes_B = np.asarray(nodes)
    used_B, parent_BxN = np.asarray(tree.num_nodes), np.asarray(tree.parent)
    depth_BxN = np.asarray(tree.depth)
    for b, node in enumerate(nodes_B.tolist()):
      if not 1 <= node < used_B[b]:
        continue

      def below(i, node=node, b=b):
        while i > node:
          i = parent_BxN[b, i]
        return i == node
      # New ids are the ranks of the kept old ids, as `tree.keep_subtree` numbers them.
      kept = [i for i in range(node, used_B[b]) if below(i)]
      new_id = {old: rank for rank, old in enumerate(kept)}
      records = {0: (-1, self.prefix(b, node), "")}
      for old in kept[1:]:
        parent, ids, text = self.nodes[b][old]
        records[new_id[old]] = (new_id[parent], ids, text)
      self.root_steps[b] = self.steps(b, node)
      self.root_depth[b] += depth_BxN[b, node]
      self.nodes[b] = records
    return tree_lib.keep_subtree(tree, nodes_B)

  def next_rng(self) -> jax.Array:
    self._calls += 1
    return jax.random.fold_in(self.rng, self._calls)

  def _rollouts(self, rows: list[tuple[int, list[str], np.ndarray]]) -> list[float]:
    """Grades one completion of each (tree, steps, prefix ids)."""
    texts = complete(self.policy, [ids for _, _, ids in rows], self.next_rng())
    out = []
    for (b, steps, _), (text, count) in zip(rows, texts):
      self.tokens[b] += count
      solution = "\n".join(steps + [text])
      out.append(float(self.policy.task.check_answer(self.problems[b], solution)))
    return out

  def expand(self, tree: tree_lib.Tree, nodes: jax.Array) -> mcts_lib.Expansion:
    nodes_BxW = np.asarray(nodes)
    b_size, w = nodes_BxW.shape
    k, length = self.k, self.policy.max_step_tokens
    rows = [(b, j) for b in range(b_size) for j in range(w) if nodes_BxW[b, j] >= 0]
    depth = np.asarray(tree.depth)
    cands = expand(self.policy, [self.prefix(b, int(nodes_BxW[b, j])) for b, j in rows], k,
                   self.next_rng())
    tokens = np.zeros((b_size, w, k, length), np.int32)
    lengths = np.zeros((b_size, w, k), np.int32)
    prior = np.zeros((b_size, w, k), np.float32)
    terminal = np.zeros((b_size, w, k), bool)
    valid = np.zeros((b_size, w, k), bool)
    scored = []  # (b, j, c, steps)
    for (b, j), row in zip(rows, cands):
      node = int(nodes_BxW[b, j])
      steps = self.steps(b, node)
      prior[b, j] = step_priors(row)
      for c, cand in enumerate(row):
        self.tokens[b] += len(cand.ids)
        tokens[b, j, c, :len(cand.ids)] = cand.ids
        lengths[b, j, c] = len(cand.ids)
        steps_after = self.root_depth[b] + depth[b, node] + 1
        terminal[b, j, c] = cand.final or steps_after >= self.policy.max_steps
        valid[b, j, c] = True
        self._pending[b, j, c] = (node, cand)
        scored.append((b, j, c, steps + [cand.text]))
    reward = np.zeros((b_size, w, k), np.float32)
    if self.evaluation != "rollout" and scored:
      scores = self.scorer([self.problems[b] for b, *_ in scored], [s for *_, s in scored])
      for (b, j, c, _), s in zip(scored, scores):
        reward[b, j, c] = s[-1]
    if self.evaluation != "reward":  # A terminal node's outcome needs no rollout.
      for b, j, c, steps in scored:
        if terminal[b, j, c]:
          outcome = float(self.policy.task.check_answer(self.problems[b], "\n".join(steps)))
          reward[b, j, c] = self._mix(reward[b, j, c], outcome)
    return mcts_lib.Expansion(tokens=jnp.asarray(tokens), lengths=jnp.asarray(lengths),
                              prior=jnp.asarray(prior), reward=jnp.asarray(reward),
                              terminal=jnp.asarray(terminal), valid=jnp.asarray(valid))

  def _mix(self, reward: float, outcome: float) -> float:
    if self.evaluation == "rollout":
      return outcome
    return (1 - self.lam) * reward + self.lam * outcome

  def evaluate(self, tree: tree_lib.Tree, nodes: jax.Array) -> jax.Array:
    ids_BxWxk = np.asarray(nodes)
    reward = np.asarray(tree.reward)
    terminal = np.asarray(tree.terminal)
    values = np.zeros(ids_BxWxk.shape, np.float32)
    rollouts = []
    for (b, j, c), (parent, cand) in self._pending.items():
      node = int(ids_BxWxk[b, j, c])
      if node < 0:
        continue
      self.nodes[b][node] = (parent, cand.ids, cand.text)
      if terminal[b, node] or self.evaluation == "reward":
        values[b, j, c] = reward[b, node]
      else:
        rollouts.append((b, j, c, node))
    self._pending = {}
    if rollouts:
      outcomes = self._rollouts([(b, self.steps(b, node), self.prefix(b, node))
                                 for b, _, _, node in rollouts])
      for (b, j, c, node), outcome in zip(rollouts, outcomes):
        values[b, j, c] = self._mix(reward[b, node], outcome)
    return jnp.asarray(values)
