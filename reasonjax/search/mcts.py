"""Step-level Monte Carlo tree search for LLM reasoning, over the array trees of `tree.py`.

    tree = tree_lib.init(B, capacity=256, max_children=4, arena_size=8192,
                         root_tokens=prompts, root_lengths=prompt_lengths)
    tree, stats = search(tree, env, MCTSConfig(num_simulations=64, simulations_per_round=4))
    nodes_BxD = best_path(tree)                            # the most visited line of steps
    tree = tree_lib.keep_subtree(tree, nodes_BxD[:, 1])    # warm start from the chosen step

A node is a reasoning step (a span of tokens). Each round selects W leaves per tree under
virtual loss (one jitted call), asks the environment for up to k candidate next steps of each
(`env.expand`: one batched sampler call over B * W prefixes), appends them (`add_children`),
asks for their values (`env.evaluate`: a value model, a PRM or the verifier of finished
solutions) and backs those up. The environment is host-side code; every tree update is a
jitted pure function of the `Tree` pytree, compiled once per shape and config.

Why not mctx. DeepMind's mctx gives the design this follows (the tree as batch-first arrays of
fixed capacity, search as pure functions over one pytree), but its policies
(`muzero_policy`, `gumbel_muzero_policy`, `stochastic_muzero_policy`) expand a fixed action set,
`num_actions` prior logits per node, through a `recurrent_fn(params, rng, action, embedding)`
that runs inside the compiled search loop. Here the actions are variable-length texts sampled
by an LLM sampler with its own compiled program and KV cache, scored by host-side verifiers;
neither fits inside mctx's loop, and its trees store an embedding per node rather than a token
arena. So mctx is not a dependency; the loop over rounds runs on the host and the tree
arithmetic is ours. Unlike mctx's q-transforms, Q is used as is (no min-max normalisation):
values here are verifier outcomes or reward-model scores in a known range such as [0, 1], and
`c` is in those units.

Simulations. Each new child counts as one simulation: it is backed up once with its value v
(its visits become 1, value_sum v, and every ancestor gets visits += 1, value_sum += v). A
selected leaf that is not expanded, because it is terminal or at `max_depth`, is one simulation
too: its own value is backed up again (its reward if terminal, else its mean value Q); each of
the W selections that reaches it counts. A leaf selected twice in a round for expansion is
expanded once and counted by its children. A leaf for which the environment gives no valid
candidate is a dead end: it is marked terminal and its reward backed up. So a node's visits =
its own evaluations + its children's visits, and N(root) counts the simulations of the tree
(plus the visits it held before, when warm-started).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from reasonjax.search import tree as tree_lib
from reasonjax.search.tree import Tree

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
  """How to search. Hashable: one compiled program per distinct config.

  Attributes:
    num_simulations: per tree; the search stops after the round that reaches it, so it may go
      over by at most W * k - 1 (a round's expansions are not cut short).
    simulations_per_round: W, leaves selected per tree per round (under virtual loss), so one
      `env.expand` call covers B * W prefixes.
    c: exploration constant of the selection rule, >= 0.
    rule: 'puct' or 'uct' (formulas in `tree.select`).
    first_play: PUCT's Q of an unvisited child: 'parent' (the node's mean value) or a number.
    virtual_loss: value charged per pending selection within a round, >= 0 (`select_many`).
    max_depth: >= 1; leaves at this depth (from the current root) are not expanded.
    stop_reward: stop a tree once it holds a terminal node with reward >= this; None: never.
  """

  num_simulations: int = 64
  simulations_per_round: int = 1
  c: float = 1.0
  rule: str = "puct"
  first_play: str | float = "parent"
  virtual_loss: float = 1.0
  max_depth: int = 16
  stop_reward: float | None = None

  def __post_init__(self):
    def integer(x):
      return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def number(x):
      return isinstance(x, numbers.Real) and not isinstance(x, bool) and np.isfinite(x)
    checks = [
        ("num_simulations", integer(self.num_simulations) and self.num_simulations >= 1,
         "an integer >= 1"),
        ("simulations_per_round",
         integer(self.simulations_per_round) and self.simulations_per_round >= 1,
         "an integer >= 1"),
        ("c", number(self.c) and self.c >= 0, "a finite number >= 0"),
        ("rule", self.rule in tree_lib.RULES, f"one of {tree_lib.RULES}"),
        ("first_play", self.first_play == "parent" or number(self.first_play),
         "'parent' or a finite number"),
        ("virtual_loss", number(self.virtual_loss) and self.virtual_loss >= 0,
         "a finite number >= 0"),
        ("max_depth", integer(self.max_depth) and self.max_depth >= 1, "an integer >= 1"),
        ("stop_reward", self.stop_reward is None or number(self.stop_reward),
         "None or a finite number"),
    ]
    for name, ok, valid in checks:
      if not ok:
        raise ValueError(f"MCTSConfig.{name} must be {valid}; got {getattr(self, name)!r}")

  def replace(self, **changes: Any) -> MCTSConfig:
    return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class Expansion:
  """Up to k candidate next steps for each of the W selected leaves of each tree.

  Attributes:
    tokens: int32 [B, W, k, L], the steps' tokens (right padded).
    lengths: int32 [B, W, k].
    prior: float32 [B, W, k], the policy's probability of each step (PUCT's P), e.g. the
      normalised sequence probability of the k samples.
    reward: float32 [B, W, k], stored on the node (e.g. the verifier outcome of a finished one).
    terminal: bool [B, W, k], the step ends the solution.
    valid: bool [B, W, k], False for missing candidates (rows whose node is -1, duplicates).
  """

  tokens: Array
  lengths: Array
  prior: Array
  reward: Array
  terminal: Array
  valid: Array


class Environment(Protocol):
  """What `search` asks of the outside world; host-side code (a sampler call, a verifier)."""

  def expand(self, tree: Tree, nodes: Array) -> Expansion:
    """Candidate next steps of nodes [B, W]; rows with node -1 need none (valid False)."""

  def evaluate(self, tree: Tree, nodes: Array) -> Array:
    """float32 [B, W, k], the value of each new child nodes [B, W, k] (ignored where -1); for a
    terminal child, e.g. its reward. `tree` already holds the children (their paths, rewards)."""


def _check_expansion(tree: Tree, nodes: Array, expansion: Expansion) -> None:
  """Shapes of the environment's answer, and k against the tree's capacities."""
  b, w = nodes.shape
  shape = expansion.tokens.shape
  if len(shape) != 4 or shape[:2] != (b, w):
    raise ValueError(f"Expansion.tokens must be [B={b}, W={w}, k, L]; got {shape}")
  k = shape[2]
  for name in ("lengths", "prior", "reward", "terminal", "valid"):
    got = getattr(expansion, name).shape
    if got != shape[:3]:
      raise ValueError(f"Expansion.{name} must be [B, W, k] = {shape[:3]}; got {got}")
  check_k(tree, k)


def check_k(tree: Tree, k: int) -> None:
  """Raises unless k candidates per expansion can fit: k <= max_children and k < capacity."""
  if k > tree.max_children:
    raise ValueError(f"the environment gives k={k} candidates per node but the tree holds at "
                     f"most max_children={tree.max_children} children per node")
  if k > tree.capacity - 1:
    raise ValueError(f"the environment gives k={k} candidates per node but the tree's "
                     f"capacity={tree.capacity} leaves room for {tree.capacity - 1} nodes "
                     "besides the root")


@functools.partial(jax.jit, static_argnames=("config",))
def _select_round(tree: Tree, active: Array, *, config: MCTSConfig
                  ) -> tuple[Array, Array, Array]:
  """The round's selections and what becomes of them.

  Returns:
    nodes int32 [B, W] (-1 for inactive trees), expand bool [B, W] (the first occurrence of each
    expandable leaf), revisit bool [B, W] (leaves that are terminal or at max_depth: backed up
    again).
  """
  w = config.simulations_per_round
  nodes_BxW = tree_lib.select_many(tree, num=w, c=config.c, rule=config.rule,
                                   first_play=config.first_play,
                                   virtual_loss=config.virtual_loss)
  nodes_BxW = jnp.where(active[:, None], nodes_BxW, -1)
  safe_BxW = jnp.maximum(nodes_BxW, 0)
  terminal_BxW = jnp.take_along_axis(tree.terminal, safe_BxW, axis=1)
  depth_BxW = jnp.take_along_axis(tree.depth, safe_BxW, axis=1)
  expandable_BxW = (nodes_BxW >= 0) & ~terminal_BxW & (depth_BxW < config.max_depth)
  earlier_WxW = jnp.tril(jnp.ones((w, w), bool), -1)
  repeat_BxW = jnp.any((nodes_BxW[:, :, None] == nodes_BxW[:, None, :]) & earlier_WxW, axis=2)
  # A repeat of a leaf being expanded is dropped (its expansion covers it); a repeat of a leaf
  # that cannot be expanded is one more backup of its value.
  return nodes_BxW, expandable_BxW & ~repeat_BxW, (nodes_BxW >= 0) & ~expandable_BxW


@functools.partial(jax.jit, static_argnames=("config",))
def _finish_round(tree: Tree, nodes: Array, expand: Array, revisit: Array, child_ids: Array,
                  child_values: Array, *, config: MCTSConfig) -> tuple[Tree, Array, Array]:
  """Backs up the new children and the revisited leaves.

  An expanded leaf that got no child although its tree did not overflow (the environment gave
  no valid candidate) is a dead end: it is marked terminal and backed up like a terminal leaf,
  so it is not selected for expansion again.

  Returns:
    (tree, simulations of the round int32 [B], done bool [B] by stop_reward).
  """
  b, w = nodes.shape
  got_none_BxW = ~jnp.any(child_ids >= 0, axis=2)
  dead_BxW = expand & got_none_BxW & ~tree.overflow[:, None]
  at_BxW = jnp.where(dead_BxW, nodes, tree.capacity)
  tree = tree.replace(
      terminal=tree.terminal.at[jnp.arange(b)[:, None], at_BxW].set(True, mode="drop"))
  revisit_BxW = revisit | dead_BxW
  safe_BxW = jnp.maximum(nodes, 0)
  leaf_value_BxW = jnp.where(jnp.take_along_axis(tree.terminal, safe_BxW, axis=1),
                             jnp.take_along_axis(tree.reward, safe_BxW, axis=1),
                             jnp.take_along_axis(tree.q, safe_BxW, axis=1))
  new_BxM = child_ids.reshape(b, -1)
  backed_nodes = jnp.concatenate([new_BxM, jnp.where(revisit_BxW, nodes, -1)], axis=1)
  backed_values = jnp.concatenate([child_values.reshape(b, -1), leaf_value_BxW], axis=1)
  tree = tree_lib.backup(tree, backed_nodes, backed_values)
  sims_B = jnp.sum(backed_nodes >= 0, axis=1).astype(jnp.int32)
  return tree, sims_B, _solved(tree, config.stop_reward)


def _solved(tree: Tree, stop_reward: float | None) -> Array:
  if stop_reward is None:
    return jnp.zeros((tree.batch_size,), bool)
  return jnp.any(tree.used & tree.terminal & (tree.reward >= stop_reward), axis=1)


@functools.partial(jax.jit, static_argnames=("max_depth",))
def _exhausted(tree: Tree, *, max_depth: int) -> Array:
  """bool [B]: no leaf can be expanded any more (all terminal or at max_depth)."""
  open_BxN = tree_lib.leaves(tree) & ~tree.terminal & (tree.depth < max_depth)
  return ~jnp.any(open_BxN, axis=1)


@functools.partial(jax.jit, static_argnames=("stop_reward",))
def _solved_jit(tree: Tree, *, stop_reward: float | None) -> Array:
  return _solved(tree, stop_reward)


def search(tree: Tree, env: Environment, config: MCTSConfig) -> tuple[Tree, dict[str, Any]]:
  """Grows each tree by rounds of select (W per tree) -> expand -> evaluate -> back up.

  A tree stops when it has done `num_simulations` simulations, when an add overflowed its
  capacity (nodes, child slots or arena: it stops expanding and keeps what it has), when no leaf
  can be expanded any more (every leaf terminal or at max_depth), or when it holds a terminal
  node with reward >= `stop_reward`. The search ends when every tree has stopped; stopped trees
  send node -1 rows to the environment. Simulations are counted as in the module docstring.

  Args:
    tree: the trees to grow (fresh from `tree.init`, or warm-started by `keep_subtree`).
    env: an `Environment`.
    config: an `MCTSConfig`.

  Returns:
    (tree, stats) where stats holds numpy arrays: simulations int32 [B] (done by this call),
    overflow bool [B], solved bool [B] (a terminal node with reward >= stop_reward),
    exhausted bool [B], and rounds (an int).
  """
  b = tree.batch_size
  sims_B = np.zeros((b,), np.int32)
  solved_B = np.asarray(_solved_jit(tree, stop_reward=config.stop_reward))
  exhausted_B = np.asarray(_exhausted(tree, max_depth=config.max_depth))
  overflow_B = np.asarray(tree.overflow)
  rounds = 0
  # Every round gives each active tree at least one simulation (an expansion, a dead end, a
  # revisit or an overflow that stops it), so num_simulations rounds always suffice.
  for _ in range(config.num_simulations):
    active_B = (sims_B < config.num_simulations) & ~overflow_B & ~solved_B & ~exhausted_B
    if not active_B.any():
      break
    nodes, expand, revisit = _select_round(tree, jnp.asarray(active_B), config=config)
    expand_nodes = jnp.where(expand, nodes, -1)
    if bool(jnp.any(expand)):
      expansion = env.expand(tree, expand_nodes)
      _check_expansion(tree, expand_nodes, expansion)
      tree, child_ids = tree_lib.add_children(
          tree, expand_nodes, expansion.tokens, expansion.lengths, prior=expansion.prior,
          reward=expansion.reward, terminal=expansion.terminal, valid=expansion.valid)
      child_values = jnp.asarray(env.evaluate(tree, child_ids), jnp.float32)
      if child_values.shape != child_ids.shape:
        raise ValueError(f"env.evaluate must return [B, W, k] = {child_ids.shape}; got "
                         f"{child_values.shape}")
    else:
      child_ids = jnp.full(nodes.shape + (0,), -1, jnp.int32)
      child_values = jnp.zeros(nodes.shape + (0,), jnp.float32)
    tree, round_sims, solved = _finish_round(tree, nodes, expand, revisit, child_ids,
                                             child_values, config=config)
    sims_B += np.asarray(round_sims)
    solved_B = np.asarray(solved)
    overflow_B = np.asarray(tree.overflow)
    exhausted_B = np.asarray(_exhausted(tree, max_depth=config.max_depth))
    rounds += 1
  stats = {"simulations": sims_B, "overflow": overflow_B, "solved": solved_B,
           "exhausted": exhausted_B, "rounds": rounds}
  return tree, stats


@functools.partial(jax.jit, static_argnames=("by", "max_depth"))
def best_path(tree: Tree, *, by: str = "visits", max_depth: int | None = None) -> Array:
  """The greedy line of steps from the root: at each node the child with the most visits
  ('visits') or the best mean value ('value'), as `tree.best_child`, until a node without
  children.

  Args:
    tree: the trees.
    by: 'visits' or 'value'.
    max_depth: D, deepest entry; None: N - 1.

  Returns:
    int32 [B, D + 1]: ids root..end of the line, -1 after.
  """
  length = tree.capacity if max_depth is None else max_depth + 1
  b = tree.batch_size

  def body(d, carry):
    cur_B, out_BxD = carry
    nxt_B = tree_lib.best_child(tree, cur_B, by=by)
    return nxt_B, out_BxD.at[:, d].set(nxt_B)
  out = jnp.full((b, length), -1, jnp.int32).at[:, 0].set(0)
  return jax.lax.fori_loop(1, length, body, (jnp.zeros((b,), jnp.int32), out))[1]
