"""Reward-model training data from full step trees, as in HRM (Wang et al. 2025, "Towards
Hierarchical Multi-Step Reward Models for Enhanced Reasoning in Large Language Models").

    trees = tree_data.grow(policy, problems, rng, num_children=5, max_depth=5)
    small, info = tree_data.compress(trees[0], np.random.default_rng(0))   # HNC
    scores = tree_data.mc_scores(small)
    nodes = tree_data.select_nodes(small, scores, np.random.default_rng(0))
    records = tree_data.hrm_examples(small, nodes, scores)       # or prm_ / orm_examples
    example = tree_data.to_example(tok, task.prompt(problems[r.problem]), records[0])

A tree is grown breadth-first and in full: every open node of every problem gets
`num_children` sampled next steps per level, all in one batched `policy.expand` call. A node's
Monte-Carlo (MC) score is the fraction of correct leaves below it. Hierarchical Node Compression
(HNC) merges some nodes' steps into their parents' and re-attaches them one level up, which
shifts the former parents' scores: the paper's intended label noise.

A `StepTree` holds its nodes in breadth-first order, a node's children being consecutive ids in
their order, so a child's id always exceeds its parent's. Trees are host data: tuples, JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from reasonjax.data import batching
from reasonjax.data.step_labels import merge_steps
from reasonjax.data.tasks import Problem
from reasonjax.search import policy as policy_lib

# A leaf's kind: the step ends the solution (answer line or EOS), the path reached max_depth, or
# the step could not be generated (empty). Inner nodes have kind "".
LEAF_KINDS = ("answer", "depth", "failed")


@dataclasses.dataclass(frozen=True)
class StepTree:
  """The step tree of one problem, nodes in breadth-first order (node 0 is the root).

  Attributes:
    problem: the problem's index in the list `grow` was given.
    parent: [N] parent ids; -1 for the root.
    depth: [N] steps from the root (root 0).
    steps: [N] step texts; the root's is "".
    kind: [N] "" for inner nodes, else one of `LEAF_KINDS`.
    correct: [N] a leaf's path is a right solution (`task.check_answer`); False for inner nodes.
    ids: [N] each step's own token ids (delimiter included; root: none) or None when not kept.
  """

  problem: int
  parent: tuple[int, ...]
  depth: tuple[int, ...]
  steps: tuple[str, ...]
  kind: tuple[str, ...]
  correct: tuple[bool, ...]
  ids: tuple[tuple[int, ...], ...] | None = None

  def __post_init__(self):
    n = len(self.parent)
    fields = [self.depth, self.steps, self.kind, self.correct] + ([self.ids] if self.ids else [])
    if n == 0 or any(len(f) != n for f in fields):
      raise ValueError(f"StepTree: fields of unequal length or empty (parent has {n})")
    if self.parent[0] != -1 or self.depth[0] != 0:
      raise ValueError("StepTree: node 0 must be the root (parent -1, depth 0)")
    for i in range(1, n):
      p = self.parent[i]
      # Breadth-first with consecutive siblings: parents in order, each before its children.
      if not (0 <= p < i and p >= self.parent[i - 1]) or self.depth[i] != self.depth[p] + 1:
        raise ValueError(f"StepTree: node {i} (parent {p}) breaks breadth-first order/depth")
    if any(k not in ("",) + LEAF_KINDS for k in self.kind):
      raise ValueError(f"StepTree: leaf kinds must be in {LEAF_KINDS}, got {set(self.kind)}")
    for i, k in enumerate(self.kind):
      if bool(k) == bool(self.children(i)):
        raise ValueError(f"StepTree: node {i} is {'a leaf' if k else 'inner'} but has "
                         f"{len(self.children(i))} children")

  @property
  def num_nodes(self) -> int:
    return len(self.parent)

  @functools.cached_property
  def _children(self) -> tuple[tuple[int, ...], ...]:
    kids: list[list[int]] = [[] for _ in self.parent]
    for i, p in enumerate(self.parent[1:], 1):
      kids[p].append(i)
    return tuple(map(tuple, kids))

  def children(self, node: int) -> tuple[int, ...]:
    return self._children[node]

  def path(self, node: int) -> list[int]:
    """The nodes from the root's child down to `node` ([] for the root)."""
    out = []
    while node > 0:
      out.append(node)
      node = self.parent[node]
    return out[::-1]

  def path_steps(self, node: int) -> list[str]:
    return [self.steps[i] for i in self.path(node)]

  def leaves(self) -> list[int]:
    return [i for i, k in enumerate(self.kind) if k]

  def to_json(self, *, ids: bool = True) -> dict[str, Any]:
    """A JSON-able dict; `from_json` gives the tree back (without ids when ids=False)."""
    out = {"problem": self.problem, "parent": list(self.parent), "depth": list(self.depth),
           "steps": list(self.steps), "kind": list(self.kind), "correct": list(self.correct)}
    if ids and self.ids is not None:
      out["ids"] = [list(x) for x in self.ids]
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> StepTree:
    ids = data.get("ids")
    return cls(problem=int(data["problem"]), parent=tuple(data["parent"]),
               depth=tuple(data["depth"]), steps=tuple(data["steps"]), kind=tuple(data["kind"]),
               correct=tuple(bool(c) for c in data["correct"]),
               ids=None if ids is None else tuple(tuple(x) for x in ids))


def save_trees(path: str, trees: Sequence[StepTree], *, ids: bool = True) -> None:
  """Writes one JSON tree per line, atomically (a stage's output is there whole or not at all)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for tree in trees:
      f.write(json.dumps(tree.to_json(ids=ids)) + "\n")
  os.replace(tmp, path)


def load_trees(path: str) -> list[StepTree]:
  with open(path) as f:
    return [StepTree.from_json(json.loads(line)) for line in f if line.strip()]


def grow(policy: policy_lib.StepPolicy, problems: Sequence[Problem], rng: jax.Array, *,
         num_children: int = 5, max_depth: int = 5,
         expand_fn: Callable[..., list[list[policy_lib.Candidate]]] = policy_lib.expand,
         progress: str | None = None) -> list[StepTree]:
  """Full breadth-first step trees, one per problem.

  Level by level, every open node of every problem gets `num_children` candidates from one
  `expand_fn(policy, prefixes, num_children, key)` call (prefix: prompt ids, then the path's
  step ids); level l uses the l-th key of `jax.random.split(rng, max_depth)`. A child is a
  leaf of kind "failed" when its text is empty (nothing to build on; a step cut at
  `max_step_tokens` is kept, as search keeps it), else "answer" when it ends the solution
  (`Candidate.final`), else "depth" at `max_depth`; other children stay open. A leaf's
  correctness is `task.check_answer(problem, path steps joined by "\\n")`, the solution text
  search grades (`search.methods`), so a path without an answer line is wrong.

  Args:
    policy: gives `prompt_ids(problem)` and `task`; passed on to `expand_fn`.
    problems: P problems; tree i has `problem=i`.
    rng: a jax PRNG key.
    num_children: children of each open node (the paper: 5).
    max_depth: steps of the deepest path (the paper: 5).
    expand_fn: `policy.expand` or a stand-in of its signature.
    progress: a tqdm description for a bar over levels; None shows none.

  Returns:
    P `StepTree`s with token ids kept.
  """
  if num_children < 1 or max_depth < 1:
    raise ValueError(f"grow: num_children={num_children} and max_depth={max_depth} must be >= 1")
  task = policy.task
  cols = [{"parent": [-1], "depth": [0], "steps": [""], "kind": [""], "correct": [False],
           "ids": [()]} for _ in problems]
  # Open nodes: (problem, node, prefix ids, path steps), in problem then breadth-first order.
  open_ = [(p, 0, np.asarray(policy.prompt_ids(problem), np.int32), [])
           for p, problem in enumerate(problems)]
  keys = jax.random.split(rng, max_depth)
  for level in tqdm.tqdm(range(max_depth), desc=progress, disable=progress is None,
                         leave=False):
    if not open_:
      break
    rows = expand_fn(policy, [ids for _, _, ids, _ in open_], num_children, keys[level])
    if len(rows) != len(open_) or any(len(row) != num_children for row in rows):
      raise ValueError(f"grow: expand_fn gave {sum(map(len, rows))} candidates in {len(rows)} "
                       f"rows for {len(open_)} prefixes; want {num_children} each")
    next_open = []
    for (p, node, prefix, path), row in zip(open_, rows):
      col = cols[p]
      for cand in row:
        child, depth = len(col["parent"]), level + 1
        kind = ("failed" if not cand.text.strip() else "answer" if cand.final
                else "depth" if depth >= max_depth else "")
        correct = bool(kind) and task.check_answer(problems[p], "\n".join(path + [cand.text]))
        ids = np.asarray(cand.ids, np.int32)
        for name, value in (("parent", node), ("depth", depth), ("steps", cand.text),
                            ("kind", kind), ("correct", correct),
                            ("ids", tuple(ids.tolist()))):
          col[name].append(value)
        if not kind:
          next_open.append((p, child, np.concatenate([prefix, ids]), path + [cand.text]))
    open_ = next_open
  return [StepTree(problem=p, **{k: tuple(v) for k, v in col.items()})
          for p, col in enumerate(cols)]


def mc_scores(tree: StepTree) -> np.ndarray:
  """float64 [N]: correct leaves / leaves in each node's subtree (a leaf: its own 0 or 1)."""
  leaves = np.asarray([bool(k) for k in tree.kind], np.float64)
  total, right = leaves.copy(), leaves * np.asarray(tree.correct, np.float64)
  for i in range(tree.num_nodes - 1, 0, -1):  # Children before parents: ids exceed parents'.
    total[tree.parent[i]] += total[i]
    right[tree.parent[i]] += right[i]
  return right / total


def compress(tree: StepTree, rng: np.random.Generator, *, min_children: int = 4,
             probability: float = 0.5) -> tuple[StepTree, dict[str, Any]]:
  """Hierarchical Node Compression (HNC): some steps merged into their parents' steps.

  Walking the tree breadth-first, each non-root node with >= `min_children` children that was
  not itself moved tries its children in order, one `rng.random()` each, and moves the first
  whose draw is < `probability` (at most one per node). A moved child's step becomes
  `merge_steps(parent step, its step)`, its token ids the two concatenated (so every node's
  prompt + path ids are unchanged), and it is re-attached to its grandparent after that
  node's children; its subtree moves up one level. Leaves and their correctness are kept;
  MC scores of the former parents change (the paper's intended label noise). The root's
  children are never moved: they have no grandparent.

  Args:
    tree: a `StepTree`.
    rng: only its `random()` is used; the same seed gives the same result.
    min_children: children a node needs for one of them to move (>= 2, so that the parent
      keeps a child and stays an inner node).
    probability: chance that each tried child moves.

  Returns:
    (the compressed tree, renumbered breadth-first; info) with info: `moved` (old ids of the
    moved nodes, in walk order), `source` (old id of each new node), `changed` (nodes whose MC
    score changed) and `label_noise` (changed / N: every node is in both trees).
  """
  if min_children < 2:
    raise ValueError(f"compress: min_children={min_children} must be >= 2")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"compress: probability={probability} must be in [0, 1]")
  parent, steps = list(tree.parent), list(tree.steps)
  ids = list(tree.ids) if tree.ids is not None else None
  moved: list[int] = []
  is_moved = [False] * tree.num_nodes
  for node in range(1, tree.num_nodes):  # Breadth-first order; the root is skipped.
    kids = tree.children(node)
    if is_moved[node] or len(kids) < min_children:
      continue
    for child in kids:
      if rng.random() < probability:
        # `node` was not moved, so its step and ids are still its own.
        parent[child] = tree.parent[node]
        steps[child] = merge_steps(steps[node], steps[child])
        if ids is not None:
          ids[child] = ids[node] + ids[child]
        is_moved[child] = True
        moved.append(child)
        break
  # Kept children in their order, then the moved ones in the order they came.
  kids_of: list[list[int]] = [[c for c in tree.children(i) if not is_moved[c]]
                              for i in range(tree.num_nodes)]
  for child in moved:
    kids_of[parent[child]].append(child)
  source = [0]
  for node in source:  # Breadth-first renumbering; the list grows while it is read.
    source.extend(kids_of[node])
  new_id = {old: new for new, old in enumerate(source)}
  new_parent = [-1] + [new_id[parent[old]] for old in source[1:]]
  depth = [0] * len(source)
  for i in range(1, len(source)):
    depth[i] = depth[new_parent[i]] + 1
  out = StepTree(problem=tree.problem, parent=tuple(new_parent), depth=tuple(depth),
                 steps=tuple(steps[o] for o in source),
                 kind=tuple(tree.kind[o] for o in source),
                 correct=tuple(tree.correct[o] for o in source),
                 ids=None if ids is None else tuple(ids[o] for o in source))
  changed = int(np.sum(mc_scores(out) != mc_scores(tree)[source]))
  return out, {"moved": tuple(moved), "source": tuple(source), "changed": changed,
               "label_noise": changed / tree.num_nodes}


def select_nodes(tree: StepTree, scores: np.ndarray, rng: np.random.Generator, *,
                 fraction: float = 0.1, single_score_count: int = 5) -> list[int]:
  """The nodes whose examples are kept, balanced over MC scores per tree level.

  The paper's "height" is read as the level (depth; the root is left out). A level's nodes are
  bucketed by distinct score; with several buckets, each gives max(smallest bucket's size,
  floor(fraction * its size)) nodes at random (at most all of it); with one bucket, the level
  gives min(single_score_count, its size).

  Args:
    tree: a `StepTree`.
    scores: [N] per-node scores (`mc_scores`); equal values share a bucket.
    rng: draws the nodes (`rng.choice`).
    fraction, single_score_count: as above (the paper: 0.1 and 5).

  Returns:
    The chosen node ids, sorted.
  """
  depth, scores = np.asarray(tree.depth), np.asarray(scores)
  chosen: list[int] = []
  for level in range(1, int(depth.max()) + 1):
    nodes = np.flatnonzero(depth == level)
    buckets = [nodes[scores[nodes] == s] for s in np.unique(scores[nodes])]
    if len(buckets) == 1:
      sizes = [min(single_score_count, len(nodes))]
    else:
      smallest = min(len(b) for b in buckets)
      # The epsilon keeps 0.1 * 30 at 3 whichever way the float product rounds.
      sizes = [min(len(b), max(smallest, math.floor(fraction * len(b) + 1e-9)))
               for b in buckets]
    for bucket, size in zip(buckets, sizes):
      chosen += rng.choice(bucket, size=size, replace=False).tolist()
  return sorted(chosen)


@dataclasses.dataclass(frozen=True)
class StepExample:
  """One reward-model record: the steps before, the step judged, its label in [0, 1]."""

  problem: int
  previous: tuple[str, ...]
  current: str
  label: float


def prm_examples(tree: StepTree, nodes: Sequence[int], scores: np.ndarray) -> list[StepExample]:
  """Each node's step after its path's earlier steps, labelled by its score."""
  out = []
  for node in nodes:
    steps = tree.path_steps(node)
    if not steps:
      raise ValueError("prm_examples: the root has no step to judge")
    out.append(StepExample(tree.problem, tuple(steps[:-1]), steps[-1], float(scores[node])))
  return out


def hrm_examples(tree: StepTree, nodes: Sequence[int], scores: np.ndarray) -> list[StepExample]:
  """Each node's PRM record, then (for paths of >= 2 steps) its last two steps merged into one
  unit after the rest, with the same label: the value after both steps."""
  out = []
  for record in prm_examples(tree, nodes, scores):
    out.append(record)
    if record.previous:
      out.append(dataclasses.replace(record, previous=record.previous[:-1],
                                     current=merge_steps(record.previous[-1], record.current)))
  return out


def union(*lists: Sequence[StepExample]) -> list[StepExample]:
  """The records of all lists, each identical record once, in order of first appearance."""
  return list(dict.fromkeys(r for records in lists for r in records))


def orm_examples(tree: StepTree) -> list[StepExample]:
  """One record per leaf: its last step after the rest, labelled by its correctness (0/1)."""
  return [StepExample(tree.problem, tuple(steps[:-1]), steps[-1], float(tree.correct[leaf]))
          for leaf in tree.leaves() for steps in [tree.path_steps(leaf)]]


def to_example(tokenizer, prompt: str, record: StepExample) -> batching.Example:
  """A `batching.prm_example` of the steps [*previous, current] with only the current step
  labelled: inputs int32 [L]; step_mask, step_labels float32 [L], nonzero at its last token."""
  steps = [*record.previous, record.current]
  example = batching.prm_example(tokenizer, prompt, steps,
                                 [0.0] * len(record.previous) + [record.label])
  last = int(np.flatnonzero(example["step_mask"])[-1])
  mask, labels = np.zeros_like(example["step_mask"]), np.zeros_like(example["step_labels"])
  mask[last], labels[last] = 1.0, record.label
  return example | {"step_mask": mask, "step_labels": labels}
