"""A batch of B search trees as fixed-capacity arrays, and the jitted pure functions over them.

    tree = init(B, capacity=256, max_children=8, arena_size=4096,
                root_tokens=prompt_BxP, root_lengths=prompt_len_B)
    leaf_B = select(tree, c=1.0)                          # descend by PUCT
    tree, child_BxWxk = add_children(tree, leaf_BxW, step_BxWxkxL, step_len_BxWxk, ...)
    tree = backup(tree, child_BxWxk.reshape(B, -1), value_BxWk, mask=child >= 0)
    tree = keep_subtree(tree, best_B)                     # warm-start the next search

Each node is one reasoning step: a span of tokens in the tree's token arena `tokens[b]`. The
root's span is the prompt (or, after `keep_subtree`, the whole token path of the kept node), so
the text of node i is the concatenation of the spans on the path root..i (`path`).

Invariants every function keeps (and the tests check against a plain-Python tree):
  * node ids are allocated in order: a child's id is larger than its parent's, the root is 0 and
    the used nodes are 0..num_nodes-1; unused slots hold parent -1, no children, zeros.
  * spans are disjoint and laid out in id order in the arena; num_tokens of it are used.
  * nothing is written out of bounds: an add that does not fit is dropped and sets `overflow`.

Visits are int32. Virtual loss (`select_many`) works on a scratch copy of visits and values
inside one call and is never stored in the tree, so counts stay exact integers.
"""

from __future__ import annotations

import functools
import numbers

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

RULES = ("puct", "uct")
ORDERS = ("visits", "value")


@flax.struct.dataclass
class Tree:
  """B trees of at most N nodes, C children per node and A arena tokens; batch first.

  Attributes:
    parent: int32 [B, N], parent id; -1 for the root (node 0) and unused slots.
    depth: int32 [B, N], edges from the root (root 0).
    children: int32 [B, N, C], child ids in insertion order, -1 where unused.
    num_children: int32 [B, N].
    visits: int32 [B, N], backups that passed through the node.
    value_sum: float32 [B, N], sum of the values backed up through the node.
    prior: float32 [B, N], the policy's probability of the step (PUCT's P).
    reward: float32 [B, N], e.g. the verifier outcome of a terminal node or a reward-model score.
    terminal: bool [B, N], the step ends the solution; selection stops there.
    span_start: int32 [B, N], where the node's step tokens start in `tokens`.
    span_length: int32 [B, N], how many tokens the step has (0 allowed).
    tokens: int32 [B, A], the token arena; the root's span is the prompt.
    num_nodes: int32 [B], used nodes (ids 0..num_nodes-1).
    num_tokens: int32 [B], used arena tokens (positions 0..num_tokens-1).
    overflow: bool [B], an add did not fit (node capacity, child capacity or arena).
  """

  parent: Array
  depth: Array
  children: Array
  num_children: Array
  visits: Array
  value_sum: Array
  prior: Array
  reward: Array
  terminal: Array
  span_start: Array
  span_length: Array
  tokens: Array
  num_nodes: Array
  num_tokens: Array
  overflow: Array

  @property
  def batch_size(self) -> int:
    return self.parent.shape[0]

  @property
  def capacity(self) -> int:
    """N, the node slots per tree."""
    return self.parent.shape[1]

  @property
  def max_children(self) -> int:
    """C, the child slots per node."""
    return self.children.shape[2]

  @property
  def arena_size(self) -> int:
    """A, the token slots per tree."""
    return self.tokens.shape[1]

  @property
  def q(self) -> Array:
    """Mean value, value_sum / max(visits, 1). float32 [B, N]; 0 for unvisited nodes."""
    return self.value_sum / jnp.maximum(self.visits, 1).astype(jnp.float32)

  @property
  def used(self) -> Array:
    """bool [B, N], slots that hold a node."""
    return jnp.arange(self.capacity)[None] < self.num_nodes[:, None]


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def init(batch_size: int, *, capacity: int, max_children: int, arena_size: int,
         root_tokens: Array | None = None, root_lengths: Array | None = None) -> Tree:
  """B trees that hold only a root whose span is the prompt.

  Args:
    batch_size: B.
    capacity: N >= 1, node slots per tree, the root included.
    max_children: C >= 1, child slots per node.
    arena_size: A, token slots per tree; at least the prompt width P.
    root_tokens: int32 [B, P], the prompts (right padded); None: empty roots.
    root_lengths: int32 [B], prompt lengths <= P; None: P for every tree.

  Returns:
    The `Tree`: num_nodes 1, num_tokens = root_lengths, everything else zero / -1.
  """
  _check_positive(batch_size=batch_size, capacity=capacity, max_children=max_children)
  if not isinstance(arena_size, numbers.Integral) or arena_size < 0:
    raise ValueError(f"arena_size must be an integer >= 0; got {arena_size!r}")
  if root_tokens is None:
    if root_lengths is not None:
      raise ValueError("root_lengths given without root_tokens")
    root_tokens = jnp.zeros((batch_size, 0), jnp.int32)
  if root_tokens.ndim != 2 or root_tokens.shape[0] != batch_size:
    raise ValueError(f"root_tokens must be [batch_size={batch_size}, P]; got shape "
                     f"{root_tokens.shape}")
  width = root_tokens.shape[1]
  if width > arena_size:
    raise ValueError(f"arena_size={arena_size} is smaller than the root tokens' width {width}")
  if root_lengths is None:
    root_lengths = jnp.full((batch_size,), width, jnp.int32)
  elif not isinstance(root_lengths, jax.core.Tracer):
    lengths = np.asarray(root_lengths)
    if lengths.shape != (batch_size,) or lengths.min() < 0 or lengths.max() > width:
      raise ValueError(f"root_lengths must be [batch_size={batch_size}] values in [0, {width}] "
                       f"(the root tokens' width); got {lengths.tolist()}")
  return _init(root_tokens, root_lengths, capacity=capacity, max_children=max_children,
               arena_size=arena_size)


@functools.partial(jax.jit, static_argnames=("capacity", "max_children", "arena_size"))
def _init(root_tokens, root_lengths, *, capacity, max_children, arena_size) -> Tree:
  b, width = root_tokens.shape
  lengths_B = jnp.clip(jnp.asarray(root_lengths, jnp.int32), 0, width)
  keep_BxP = jnp.arange(width)[None] < lengths_B[:, None]
  tokens = jnp.zeros((b, arena_size), jnp.int32)
  tokens = tokens.at[:, :width].set(jnp.where(keep_BxP, root_tokens.astype(jnp.int32), 0))
  zeros_i = jnp.zeros((b, capacity), jnp.int32)
  zeros_f = jnp.zeros((b, capacity), jnp.float32)
  return Tree(
      parent=jnp.full((b, capacity), -1, jnp.int32), depth=zeros_i,
      children=jnp.full((b, capacity, max_children), -1, jnp.int32), num_children=zeros_i,
      visits=zeros_i, value_sum=zeros_f, prior=zeros_f, reward=zeros_f,
      terminal=jnp.zeros((b, capacity), bool), span_start=zeros_i,
      span_length=zeros_i.at[:, 0].set(lengths_B), tokens=tokens,
      num_nodes=jnp.ones((b,), jnp.int32), num_tokens=lengths_B,
      overflow=jnp.zeros((b,), bool))


# --------------------------------------------------------------------------------- helpers
# Single-tree functions (fields without the batch axis), vmapped by the public functions.


def _safe(ids: Array, size: int) -> Array:
  """ids with -1 (or any out-of-range id) mapped to `size`, which mode='drop' scatters skip.
  Needed because jax wraps negative indices numpy-style."""
  return jnp.where((ids >= 0) & (ids < size), ids, size)


def _take(x: Array, ids: Array, fill) -> Array:
  """x[ids] with `fill` where ids == -1."""
  return jnp.where(ids >= 0, x[jnp.maximum(ids, 0)], fill)


def _path_nodes_one(t: Tree, node: Array, length: int) -> Array:
  """int32 [length]: ids root..node at index = depth, -1 after (and all -1 for node -1)."""
  def body(carry):
    cur, out = carry
    out = out.at[jnp.where(t.depth[cur] < length, t.depth[cur], length)].set(cur, mode="drop")
    return t.parent[cur], out
  _, out = jax.lax.while_loop(lambda carry: carry[0] >= 0, body,
                              (node, jnp.full((length,), -1, jnp.int32)))
  return out


def _gather_spans(tokens_A: Array, starts_M: Array, lengths_M: Array, out_len: int
                  ) -> tuple[Array, Array]:
  """The concatenation of M arena spans, in order, as int32 [out_len] (0 after the end, cut at
  out_len), and its full length. Output position t belongs to the first span whose end > t."""
  ends_M = jnp.cumsum(lengths_M)
  pos_T = jnp.arange(out_len)
  seg_T = jnp.minimum(jnp.searchsorted(ends_M, pos_T, side="right"), lengths_M.shape[0] - 1)
  src_T = starts_M[seg_T] + pos_T - (ends_M[seg_T] - lengths_M[seg_T])
  total = ends_M[-1]
  out = jnp.where(pos_T < total, tokens_A[jnp.clip(src_T, 0, tokens_A.shape[0] - 1)], 0)
  return out, total


def _child_scores(t: Tree, node: Array, c, rule: str, first_play) -> Array:
  """float32 [C]: the selection score of each child slot of `node`; -inf for empty slots."""
  kids_C = t.children[node]
  has_C = kids_C >= 0
  kid_C = jnp.maximum(kids_C, 0)
  n_C = t.visits[kid_C].astype(jnp.float32)
  q_C = t.value_sum[kid_C] / jnp.maximum(n_C, 1.0)
  parent_n = t.visits[node].astype(jnp.float32)
  if rule == "puct":
    if first_play == "parent":
      fpu = t.value_sum[node] / jnp.maximum(parent_n, 1.0)
    else:
      fpu = jnp.float32(first_play)
    q_C = jnp.where(n_C > 0, q_C, fpu)
    score_C = q_C + c * t.prior[kid_C] * jnp.sqrt(parent_n) / (1.0 + n_C)
  elif rule == "uct":
    explore_C = jnp.sqrt(jnp.log(jnp.maximum(parent_n, 1.0)) / jnp.maximum(n_C, 1.0))
    score_C = jnp.where(n_C > 0, q_C + c * explore_C, jnp.inf)
  else:
    raise ValueError(f"unknown rule {rule!r}; valid: {RULES}")
  return jnp.where(has_C, score_C, -jnp.inf)


def _select_one(t: Tree, c, rule: str, first_play) -> Array:
  """int32 []: the leaf reached by descending from the root by argmax score."""
  def stop(node):
    return (t.num_children[node] == 0) | t.terminal[node]

  def body(node):
    # argmax takes the first maximum: ties go to the lowest child slot (insertion order).
    slot = jnp.argmax(_child_scores(t, node, c, rule, first_play))
    return t.children[node, slot]
  return jax.lax.while_loop(lambda node: ~stop(node), body, jnp.int32(0))


def _add_to_path(x_N: Array, parent_N: Array, node: Array, amount) -> Array:
  """x with `amount` added at node and at each of its ancestors (nothing for node -1)."""
  def body(carry):
    cur, x = carry
    return parent_N[cur], x.at[cur].add(amount)
  _, x_N = jax.lax.while_loop(lambda carry: carry[0] >= 0, body, (node, x_N))
  return x_N


def _check_rule(rule: str, first_play) -> None:
  if rule not in RULES:
    raise ValueError(f"unknown rule {rule!r}; valid: {RULES}")
  if first_play != "parent" and not isinstance(first_play, (int, float)):
    raise ValueError(f"first_play must be 'parent' or a number; got {first_play!r}")


# ------------------------------------------------------------------------------ selection


@functools.partial(jax.jit, static_argnames=("rule", "first_play"))
def select(tree: Tree, *, c=1.0, rule: str = "puct", first_play="parent") -> Array:
  """The leaf of each tree reached by descending from the root by the best child score.

  At each node the child with the largest score is taken (ties: the lowest child slot), until a
  node with no children or a terminal node:

    puct: Q(s) + c * P(s) * sqrt(N(node)) / (1 + N(s))
    uct:  Q(s) + c * sqrt(ln N(node) / N(s)),  and +inf for N(s) = 0 (unvisited children first)

  with Q(s) = value_sum(s) / N(s). An unvisited child has no Q; PUCT uses the first-play value
  `first_play` instead: 'parent' (the default) takes the node's own mean value Q(node), so an
  untried step counts as good as its parent's average, neither optimistic (exploring every
  sibling before deepening) nor pessimistic (never trying them); a number takes that constant
  (e.g. 0.0 for the AlphaZero convention, 1.0 for optimism with values in [0, 1]).

  Args:
    tree: the trees.
    c: exploration constant (a traced scalar).
    rule: 'puct' or 'uct'.
    first_play: PUCT's Q of unvisited children: 'parent' or a number.

  Returns:
    int32 [B], the selected node of each tree.
  """
  _check_rule(rule, first_play)
  return jax.vmap(lambda t: _select_one(t, c, rule, first_play))(tree)


@functools.partial(jax.jit, static_argnames=("num", "rule", "first_play"))
def select_many(tree: Tree, *, num: int, c=1.0, rule: str = "puct", first_play="parent",
                virtual_loss=1.0) -> Array:
  """`num` leaves per tree, selected one after the other under virtual loss.

  After each selection every node on the selected path gets, on a scratch copy, one more visit
  and a value of -virtual_loss:  N += 1,  value_sum -= virtual_loss.  The next selection then
  sees those paths as more visited and worse, and spreads over other leaves; the tree itself is
  not changed. With virtual_loss 0 only the visit is added (it still lowers the exploration
  bonus). The same leaf can come back (e.g. when it is the only one); `add_children` expands a
  repeated node once.

  Args:
    tree: the trees.
    num: W, leaves per tree.
    c, rule, first_play: as in `select`.
    virtual_loss: value charged per pending visit (a traced scalar, >= 0 in practice).

  Returns:
    int32 [B, W], the selections of each tree in order; column 0 is `select(tree)`.
  """
  _check_rule(rule, first_play)

  def one(t):
    def body(w, carry):
      visits, value_sum, out = carry
      leaf = _select_one(t.replace(visits=visits, value_sum=value_sum), c, rule, first_play)
      visits = _add_to_path(visits, t.parent, leaf, 1)
      value_sum = _add_to_path(value_sum, t.parent, leaf, -jnp.float32(virtual_loss))
      return visits, value_sum, out.at[w].set(leaf)
    init_carry = (t.visits, t.value_sum, jnp.zeros((num,), jnp.int32))
    return jax.lax.fori_loop(0, num, body, init_carry)[2]
  return jax.vmap(one)(tree)


# ------------------------------------------------------------------------------ growth


@jax.jit
def add_children(tree: Tree, nodes: Array, tokens: Array, lengths: Array, *,
                 prior: Array | None = None, reward: Array | None = None,
                 terminal: Array | None = None, valid: Array | None = None
                 ) -> tuple[Tree, Array]:
  """Appends up to k children to each of W nodes per tree (one batched expansion).

  Candidate j of row w is a step of `lengths[b, w, j]` tokens, `tokens[b, w, j, :length]`.
  Which are added:
    * rows whose node is -1, not a used node, or a repeat of an earlier row's node (two
      selections hit the same leaf) add nothing: only the first occurrence is expanded;
    * invalid candidates are skipped;
    * a node takes its valid candidates in order while it has free child slots (C); the rest
      are dropped;
    * the remaining candidates are then added in order (w, then j) until the first one that
      does not fit in the free node slots or the free arena; it and all later ones are dropped.
  A valid candidate of an expanded row that is dropped sets `overflow`; a repeated or -1 row
  does not. Nothing is ever written out of bounds.

  New nodes: ids num_nodes, num_nodes + 1, ... in candidate order, depth = parent's + 1, visits
  and value_sum 0, the given prior / reward / terminal; spans appended to the arena in id order.
  A terminal node can take children here (the search never asks it to).

  Args:
    tree: the trees.
    nodes: int32 [B, W], the node each row expands.
    tokens: int32 [B, W, k, L], candidate steps (right padded).
    lengths: int32 [B, W, k], step lengths, clipped to [0, L].
    prior: float32 [B, W, k], P of each candidate; None: 0.
    reward: float32 [B, W, k]; None: 0.
    terminal: bool [B, W, k]; None: False.
    valid: bool [B, W, k], candidates to consider; None: all.

  Returns:
    (tree, child_ids int32 [B, W, k]: the new node id of each candidate, -1 if not added).
  """
  b, w, k, length = tokens.shape
  shape = (b, w, k)
  prior = jnp.zeros(shape, jnp.float32) if prior is None else prior
  reward = jnp.zeros(shape, jnp.float32) if reward is None else reward
  terminal = jnp.zeros(shape, bool) if terminal is None else terminal
  valid = jnp.ones(shape, bool) if valid is None else valid
  lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, length)
  return jax.vmap(_add_children_one)(
      tree, jnp.asarray(nodes, jnp.int32), jnp.asarray(tokens, jnp.int32), lengths,
      jnp.asarray(prior, jnp.float32), jnp.asarray(reward, jnp.float32),
      jnp.asarray(terminal, bool), jnp.asarray(valid, bool))


def _add_children_one(t: Tree, nodes_W, tokens_WxkxL, lengths_Wxk, prior_Wxk, reward_Wxk,
                      terminal_Wxk, valid_Wxk) -> tuple[Tree, Array]:
  n, c, a = t.parent.shape[0], t.children.shape[1], t.tokens.shape[0]
  w, k, length = tokens_WxkxL.shape
  m = w * k
  used_W = (nodes_W >= 0) & (nodes_W < t.num_nodes)
  earlier_WxW = jnp.tril(jnp.ones((w, w), bool), -1)
  repeat_W = jnp.any((nodes_W[:, None] == nodes_W[None, :]) & earlier_WxW, axis=1)
  expand_W = used_W & ~repeat_W

  parent_M = jnp.repeat(nodes_W, k)
  cand_M = (valid_Wxk & expand_W[:, None]).reshape(m)
  len_M = lengths_Wxk.reshape(m)
  # Child slots: a candidate's slot is its parent's count plus the earlier candidates of the same
  # parent (only the first row of each node survives, so these are the same row's).
  earlier_MxM = jnp.tril(jnp.ones((m, m), bool), -1)
  rank_M = jnp.sum((parent_M[:, None] == parent_M[None, :]) & earlier_MxM & cand_M[None, :],
                   axis=1)
  slot_M = t.num_children[jnp.maximum(parent_M, 0)] + rank_M
  slot_ok_M = cand_M & (slot_M < c)
  # Node slots and arena: in order until the first misfit, so kept steps never skip a sibling.
  # The running totals count every candidate before, added or not; they only grow, so once one
  # candidate does not fit no later one does (a short step after a long misfit is dropped too).
  cum_nodes_M = jnp.cumsum(slot_ok_M)
  cum_tokens_M = jnp.cumsum(jnp.where(slot_ok_M, len_M, 0))
  fits_M = (cum_nodes_M <= n - t.num_nodes) & (cum_tokens_M <= a - t.num_tokens)
  added_M = slot_ok_M & fits_M

  ids_M = jnp.where(added_M, t.num_nodes + cum_nodes_M - 1, -1)
  start_M = t.num_tokens + cum_tokens_M - len_M
  at_M = _safe(ids_M, n)
  parent_safe = jnp.maximum(parent_M, 0)

  pos_MxL = start_M[:, None] + jnp.arange(length)[None]
  write_MxL = added_M[:, None] & (jnp.arange(length)[None] < len_M[:, None])
  tokens = t.tokens.at[jnp.where(write_MxL, pos_MxL, a)].set(
      tokens_WxkxL.reshape(m, length), mode="drop")
  new = t.replace(
      parent=t.parent.at[at_M].set(parent_M, mode="drop"),
      depth=t.depth.at[at_M].set(t.depth[parent_safe] + 1, mode="drop"),
      children=t.children.at[jnp.where(added_M, parent_M, n), slot_M].set(ids_M, mode="drop"),
      num_children=t.num_children.at[jnp.where(added_M, parent_M, n)].add(1, mode="drop"),
      visits=t.visits.at[at_M].set(0, mode="drop"),
      value_sum=t.value_sum.at[at_M].set(0.0, mode="drop"),
      prior=t.prior.at[at_M].set(prior_Wxk.reshape(m), mode="drop"),
      reward=t.reward.at[at_M].set(reward_Wxk.reshape(m), mode="drop"),
      terminal=t.terminal.at[at_M].set(terminal_Wxk.reshape(m), mode="drop"),
      span_start=t.span_start.at[at_M].set(start_M, mode="drop"),
      span_length=t.span_length.at[at_M].set(len_M, mode="drop"),
      tokens=tokens,
      num_nodes=t.num_nodes + jnp.sum(added_M),
      num_tokens=t.num_tokens + jnp.sum(jnp.where(added_M, len_M, 0)),
      overflow=t.overflow | jnp.any(cand_M & ~added_M))
  return new, ids_M.reshape(w, k)


@jax.jit
def backup(tree: Tree, nodes: Array, values: Array, *, mask: Array | None = None) -> Tree:
  """Adds each value to every node on its path: for each (b, w) with mask and nodes >= 0,

    visits[b, i] += 1  and  value_sum[b, i] += values[b, w]   for i on root..nodes[b, w].

  Rows of the same tree accumulate (a node may appear several times).

  Args:
    tree: the trees.
    nodes: int32 [B, W], -1 for none.
    values: float32 [B, W].
    mask: bool [B, W], rows to back up; None: all.

  Returns:
    The tree with updated visits and value_sum.
  """
  nodes = jnp.asarray(nodes, jnp.int32)
  mask = jnp.ones(nodes.shape, bool) if mask is None else mask
  ok = mask & (nodes >= 0) & (nodes < tree.num_nodes[:, None])
  start_BxW = jnp.where(ok, nodes, -1)
  values = jnp.asarray(values, jnp.float32)
  n = tree.capacity

  def one(t, cur_W, v_W):
    # One level per iteration for all W rows; scatter-add accumulates shared ancestors.
    def body(carry):
      cur, visits, value_sum = carry
      at = _safe(cur, n)
      visits = visits.at[at].add(1, mode="drop")
      value_sum = value_sum.at[at].add(v_W, mode="drop")
      return _take(t.parent, cur, -1), visits, value_sum
    _, visits, value_sum = jax.lax.while_loop(lambda carry: jnp.any(carry[0] >= 0), body,
                                              (cur_W, t.visits, t.value_sum))
    return t.replace(visits=visits, value_sum=value_sum)
  return jax.vmap(one)(tree, start_BxW, values)


# ------------------------------------------------------------------------------ re-rooting


@jax.jit
def keep_subtree(tree: Tree, nodes: Array) -> Tree:
  """Keeps the subtree of `nodes[b]` as tree b, with that node as the new root.

  Kept nodes keep their order (new ids are ranks of the old ids, so the new root is 0), visits,
  values, priors, rewards, terminal flags and children; depths drop by the new root's depth.
  The new root's span is the full token path of the old node, so the path of every kept node is
  unchanged. The arena is compacted: new root span, then the kept steps in id order.
  A node of -1 (or an id that is not a used node) keeps tree b whole.

  Trees built by `init` / `add_children` always fit (the path and the subtree are disjoint
  pieces of the old arena); a tree that would not (spans shared by hand) is left unchanged with
  `overflow` set. A tree re-rooted below its root has `overflow` cleared (capacity was freed);
  one kept whole (node 0, -1 or unused) keeps its flag.

  Args:
    tree: the trees.
    nodes: int32 [B], the new roots.

  Returns:
    The re-rooted trees.
  """
  return jax.vmap(_keep_subtree_one)(tree, jnp.asarray(nodes, jnp.int32))


def _keep_subtree_one(t: Tree, node: Array) -> Tree:
  n, a = t.parent.shape[0], t.tokens.shape[0]
  # Only re-rooting below the root frees capacity: otherwise an overflow still stands.
  frees = (node >= 1) & (node < t.num_nodes)
  node = jnp.where((node >= 0) & (node < t.num_nodes), node, 0)
  # kept: node is on the path of i. Walk every slot up one level at a time.
  def body(carry):
    cur, kept = carry
    cur = _take(t.parent, cur, -1)
    return cur, kept | (cur == node)
  ids_N = jnp.arange(n, dtype=jnp.int32)
  _, kept_N = jax.lax.while_loop(lambda carry: jnp.any(carry[0] >= 0), body,
                                 (ids_N, ids_N == node))
  new_id_N = jnp.where(kept_N, jnp.cumsum(kept_N) - 1, -1)
  num_kept = jnp.sum(kept_N)
  old_N = jnp.full((n,), -1, jnp.int32).at[_safe(new_id_N, n)].set(ids_N, mode="drop")
  used_N = ids_N < num_kept

  path_N = _path_nodes_one(t, node, n)
  path_len_N = _take(t.span_length, path_N, 0)
  root_len = jnp.sum(path_len_N)
  length_N = _take(t.span_length, old_N, 0).at[0].set(root_len)
  start_N = jnp.cumsum(length_N) - length_N
  # The new arena is the root path's spans, then the kept non-root spans in new id order.
  starts_2N = jnp.concatenate([_take(t.span_start, path_N, 0), _take(t.span_start, old_N, 0)])
  lengths_2N = jnp.concatenate([path_len_N, length_N.at[0].set(0)])
  tokens_A, needed = _gather_spans(t.tokens, starts_2N, lengths_2N, a)

  def remap(ids):  # old ids -> new ids; ids outside the subtree (the old parent) -> -1
    return _take(new_id_N, ids, -1)
  new = Tree(
      parent=remap(_take(t.parent, old_N, -1)),
      depth=jnp.where(used_N, _take(t.depth, old_N, 0) - t.depth[node], 0),
      children=remap(jnp.where(used_N[:, None], t.children[jnp.maximum(old_N, 0)], -1)),
      num_children=_take(t.num_children, old_N, 0),
      visits=_take(t.visits, old_N, 0),
      value_sum=_take(t.value_sum, old_N, 0.0),
      prior=_take(t.prior, old_N, 0.0),
      reward=_take(t.reward, old_N, 0.0),
      terminal=_take(t.terminal, old_N, False),
      span_start=jnp.where(used_N, start_N, 0),
      span_length=length_N,
      tokens=tokens_A,
      num_nodes=num_kept.astype(jnp.int32),
      num_tokens=needed.astype(jnp.int32),
      overflow=jnp.where(frees, False, t.overflow))
  fits = needed <= a
  old = t.replace(overflow=jnp.bool_(True))
  return jax.tree.map(lambda x, y: jnp.where(fits, x, y), new, old)


# ------------------------------------------------------------------------------ reading


@functools.partial(jax.jit, static_argnames=("max_depth",))
def path_nodes(tree: Tree, nodes: Array, *, max_depth: int | None = None) -> Array:
  """The ids on the path root..node of each tree.

  Args:
    tree: the trees.
    nodes: int32 [B], -1 for none (an all -1 row).
    max_depth: D, deepest entry kept; None: N - 1 (the deepest any node can be).

  Returns:
    int32 [B, D + 1]: entry d is the node's ancestor at depth d, -1 past the node's depth.
  """
  length = tree.capacity if max_depth is None else max_depth + 1
  return jax.vmap(lambda t, x: _path_nodes_one(t, x, length))(tree, jnp.asarray(nodes, jnp.int32))


@functools.partial(jax.jit, static_argnames=("max_length",))
def path(tree: Tree, nodes: Array, max_length: int) -> tuple[Array, Array]:
  """The token sequence of each node: the spans on root..node concatenated (prompt included).

  Args:
    tree: the trees.
    nodes: int32 [B]; -1 gives an empty sequence.
    max_length: T, width of the output; longer paths are cut.

  Returns:
    (tokens int32 [B, T], 0 after the end; lengths int32 [B] = min(path length, T)).
  """
  def one(t, node):
    ids_N = _path_nodes_one(t, node, t.parent.shape[0])
    out, total = _gather_spans(t.tokens, _take(t.span_start, ids_N, 0),
                               _take(t.span_length, ids_N, 0), max_length)
    return out, jnp.minimum(total, max_length)
  return jax.vmap(one)(tree, jnp.asarray(nodes, jnp.int32))


@jax.jit
def path_length(tree: Tree, nodes: Array) -> Array:
  """int32 [B], the full token length of each node's path (0 for -1)."""
  def one(t, node):
    return jnp.sum(_take(t.span_length, _path_nodes_one(t, node, t.parent.shape[0]), 0))
  return jax.vmap(one)(tree, jnp.asarray(nodes, jnp.int32))


@jax.jit
def leaves(tree: Tree) -> Array:
  """bool [B, N]: used nodes without children."""
  return tree.used & (tree.num_children == 0)


@jax.jit
def depth_first(tree: Tree) -> Array:
  """int32 [B, N]: node ids in depth-first preorder (children in insertion order), -1 after."""
  n, c = tree.capacity, tree.max_children

  def one(t):
    # A stack of pending ids; a node's children go on in reverse so the first child pops next.
    def body(carry):
      i, top, stack, out = carry
      node = stack[top - 1]
      out = out.at[i].set(node)
      kids_C = t.children[node]
      count = t.num_children[node]
      rev_C = jnp.where(jnp.arange(c) < count, kids_C[jnp.maximum(count - 1 - jnp.arange(c), 0)],
                        -1)
      stack = jax.lax.dynamic_update_slice(stack, rev_C, (top - 1,))
      return i + 1, top - 1 + count, stack, out
    stack = jnp.full((n + c,), -1, jnp.int32).at[0].set(0)
    carry = (jnp.int32(0), jnp.int32(1), stack, jnp.full((n,), -1, jnp.int32))
    return jax.lax.while_loop(lambda carry: carry[1] > 0, body, carry)[3]
  return jax.vmap(one)(tree)


@jax.jit
def breadth_first(tree: Tree) -> Array:
  """int32 [B, N]: node ids in breadth-first order (children in insertion order), -1 after."""
  n, c = tree.capacity, tree.max_children

  def one(t):
    # The output is the queue: node `head` appends its children at `tail`.
    def body(carry):
      head, tail, queue = carry
      node = queue[head]
      queue = jax.lax.dynamic_update_slice(queue, t.children[node], (tail,))
      return head + 1, tail + t.num_children[node], queue
    queue = jnp.full((n + c,), -1, jnp.int32).at[0].set(0)
    _, tail, queue = jax.lax.while_loop(lambda carry: carry[0] < carry[1], body,
                                        (jnp.int32(0), jnp.int32(1), queue))
    return jnp.where(jnp.arange(n) < tail, queue[:n], -1)
  return jax.vmap(one)(tree)


@functools.partial(jax.jit, static_argnames=("by",))
def best_child(tree: Tree, nodes: Array, *, by: str = "visits") -> Array:
  """The child of each node with the most visits ('visits') or the best mean value ('value',
  among visited children; unvisited ones only if none is visited); ties: lowest child slot.

  Args:
    tree: the trees.
    nodes: int32 [B].
    by: 'visits' or 'value'.

  Returns:
    int32 [B], -1 where the node has no children (or is -1).
  """
  if by not in ORDERS:
    raise ValueError(f"unknown by={by!r}; valid: {ORDERS}")

  def one(t, node):
    safe = jnp.maximum(node, 0)
    kids_C = t.children[safe]
    kid_C = jnp.maximum(kids_C, 0)
    n_C = t.visits[kid_C]
    if by == "visits":
      score_C = n_C.astype(jnp.float32)
    else:
      q_C = t.value_sum[kid_C] / jnp.maximum(n_C, 1).astype(jnp.float32)
      score_C = jnp.where(n_C > 0, q_C, -jnp.finfo(jnp.float32).max)
    score_C = jnp.where(kids_C >= 0, score_C, -jnp.inf)
    best = kids_C[jnp.argmax(score_C)]
    return jnp.where(node >= 0, best, -1)
  return jax.vmap(one)(tree, jnp.asarray(nodes, jnp.int32))
