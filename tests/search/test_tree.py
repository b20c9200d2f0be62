"""The array trees against a plain-Python tree written from the definitions, on random
operation sequences; capacity overflow; selection rules against the formulas."""

import collections
import math

import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax.search import tree as tree_lib

# One shape for every random-sequence test, so each jitted function compiles once.
B, N, C, A = 3, 14, 3, 22
W, K, L, P = 3, 2, 3, 4


class RefNode:

  def __init__(self, parent, depth, tokens, prior=0.0, reward=0.0, terminal=False):
    self.parent, self.depth, self.tokens = parent, depth, list(tokens)
    self.prior, self.reward, self.terminal = float(prior), float(reward), bool(terminal)
    self.children, self.visits, self.value_sum = [], 0, 0.0


class RefTree:
  """One tree as a list of nodes (id = index), following the documented rules one candidate at
  a time."""

  def __init__(self, root_tokens, capacity=N, max_children=C, arena_size=A):
    self.capacity, self.max_children, self.arena_size = capacity, max_children, arena_size
    self.nodes = [RefNode(-1, 0, root_tokens)]
    self.overflow = False

  @property
  def num_tokens(self):
    return sum(len(x.tokens) for x in self.nodes)

  def add_children(self, nodes, tokens, lengths, prior, reward, terminal, valid, seen):
    ids = [[-1] * len(tokens[0]) for _ in nodes]
    expanded, blocked = set(), False
    for w, node in enumerate(nodes):
      if not 0 <= node < len(self.nodes) or node in expanded:
        seen["repeat"] += node in expanded
        continue
      expanded.add(node)
      for j in range(len(tokens[w])):
        if not valid[w][j]:
          continue
        step = list(tokens[w][j][:lengths[w][j]])
        if len(self.nodes[node].children) >= self.max_children:
          self.overflow = True
          seen["children full"] += 1
          continue
        if (blocked or len(self.nodes) >= self.capacity
            or self.num_tokens + len(step) > self.arena_size):
          seen["nodes full" if len(self.nodes) >= self.capacity else "arena full"] += 1
          self.overflow = blocked = True
          continue
        ids[w][j] = len(self.nodes)
        self.nodes.append(RefNode(node, self.nodes[node].depth + 1, step, prior[w][j],
                                  reward[w][j], terminal[w][j]))
        self.nodes[node].children.append(ids[w][j])
    return ids

  def backup(self, nodes, values, mask):
    for node, value, m in zip(nodes, values, mask):
      if not m or not 0 <= node < len(self.nodes):
        continue
      while node >= 0:
        self.nodes[node].visits += 1
        self.nodes[node].value_sum += value
        node = self.nodes[node].parent

  def path_ids(self, node):
    out = []
    while node >= 0:
      out.append(node)
      node = self.nodes[node].parent
    return out[::-1]

  def path(self, node):
    return [t for i in self.path_ids(node) for t in self.nodes[i].tokens]

  def keep_subtree(self, node):
    frees = 1 <= node < len(self.nodes)  # Re-rooting below the root frees capacity.
    if not 0 <= node < len(self.nodes):
      node = 0
    kept = [i for i in range(len(self.nodes)) if node in self.path_ids(i)]
    new_id = {old: new for new, old in enumerate(kept)}
    root_tokens = self.path(node)
    new_nodes = []
    for old in kept:
      x = self.nodes[old]
      y = RefNode(new_id.get(x.parent, -1), x.depth - self.nodes[node].depth,
                  root_tokens if old == node else x.tokens, x.prior, x.reward, x.terminal)
      y.children = [new_id[c] for c in x.children]
      y.visits, y.value_sum = x.visits, x.value_sum
      new_nodes.append(y)
    self.nodes, self.overflow = new_nodes, self.overflow and not frees

  def leaves(self):
    return [i for i, x in enumerate(self.nodes) if not x.children]

  def depth_first(self):
    out, stack = [], [0]
    while stack:
      node = stack.pop()
      out.append(node)
      stack.extend(reversed(self.nodes[node].children))
    return out

  def breadth_first(self):
    out = [0]
    for node in out:
      out.extend(self.nodes[node].children)
    return out

  def q(self, i):
    x = self.nodes[i]
    return x.value_sum / max(x.visits, 1)

  def select(self, c, rule, first_play="parent"):
    node = 0
    while self.nodes[node].children and not self.nodes[node].terminal:
      parent_n = self.nodes[node].visits
      best, best_score = None, -math.inf
      for kid in self.nodes[node].children:
        x = self.nodes[kid]
        if rule == "puct":
          q = self.q(kid) if x.visits else (self.q(node) if first_play == "parent"
                                            else first_play)
          score = q + c * x.prior * math.sqrt(parent_n) / (1 + x.visits)
        else:
          score = (self.q(kid) + c * math.sqrt(math.log(max(parent_n, 1)) / x.visits)
                   if x.visits else math.inf)
        if score > best_score:  # strict: ties keep the first child
          best, best_score = kid, score
      node = best
    return node

  def select_many(self, num, c, rule, first_play, virtual_loss):
    saved = [(x.visits, x.value_sum) for x in self.nodes]
    out = []
    for _ in range(num):
      leaf = self.select(c, rule, first_play)
      out.append(leaf)
      self.backup([leaf], [-virtual_loss], [True])
    for x, (n, v) in zip(self.nodes, saved):
      x.visits, x.value_sum = n, v
    return out


def assert_same(tree, refs):
  """Every field of the array trees equals the reference trees'."""
  t = {k: np.asarray(v) for k, v in vars(tree).items()}
  for b, ref in enumerate(refs):
    n = len(ref.nodes)
    assert t["num_nodes"][b] == n
    assert t["num_tokens"][b] == ref.num_tokens
    assert t["overflow"][b] == ref.overflow
    for i, x in enumerate(ref.nodes):
      assert t["parent"][b, i] == x.parent, (b, i)
      assert t["depth"][b, i] == x.depth, (b, i)
      assert list(t["children"][b, i, :t["num_children"][b, i]]) == x.children, (b, i)
      assert np.all(t["children"][b, i, len(x.children):] == -1)
      assert t["visits"][b, i] == x.visits, (b, i)
      np.testing.assert_allclose(t["value_sum"][b, i], x.value_sum, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(t["prior"][b, i], x.prior, rtol=1e-6)
      np.testing.assert_allclose(t["reward"][b, i], x.reward, rtol=1e-6)
      assert t["terminal"][b, i] == x.terminal
      assert t["span_length"][b, i] == len(x.tokens)
      start = t["span_start"][b, i]
      assert list(t["tokens"][b, start:start + len(x.tokens)]) == x.tokens
    # Unused slots stay pristine, so a later add starts from a clean slot.
    assert np.all(t["parent"][b, n:] == -1) and np.all(t["children"][b, n:] == -1)
    assert np.all(t["visits"][b, n:] == 0) and np.all(t["num_children"][b, n:] == 0)
  # Paths of every node, leaves and traversal orders.
  for i in range(N):
    nodes = jnp.asarray([i if i < len(r.nodes) else -1 for r in refs], jnp.int32)
    tokens, lengths = tree_lib.path(tree, nodes, A + 5)
    ids = tree_lib.path_nodes(tree, nodes)
    for b, ref in enumerate(refs):
      want = ref.path(i) if i < len(ref.nodes) else []
      assert list(np.asarray(tokens[b, :lengths[b]])) == want, (b, i)
      assert np.all(np.asarray(tokens[b, lengths[b]:]) == 0)
      want_ids = ref.path_ids(i) if i < len(ref.nodes) else []
      assert list(np.asarray(ids[b])) == want_ids + [-1] * (N - len(want_ids))
  leaves = np.asarray(tree_lib.leaves(tree))
  dfs, bfs = np.asarray(tree_lib.depth_first(tree)), np.asarray(tree_lib.breadth_first(tree))
  for b, ref in enumerate(refs):
    assert list(np.flatnonzero(leaves[b])) == ref.leaves()
    pad = [-1] * (N - len(ref.nodes))
    assert list(dfs[b]) == ref.depth_first() + pad
    assert list(bfs[b]) == ref.breadth_first() + pad


def random_add(rng, refs, tree, seen):
  """One random add_children: nodes with repeats, -1 and out-of-range ids, random validity."""
  nodes = np.full((B, W), -1, np.int32)
  for b, ref in enumerate(refs):
    for w in range(W):
      r = rng.random()
      nodes[b, w] = (-1 if r < 0.1 else N + 1 if r < 0.15
                     else nodes[b, w - 1] if (r < 0.3 and w) else rng.integers(len(ref.nodes)))
  tokens = rng.integers(1, 100, (B, W, K, L)).astype(np.int32)
  lengths = rng.integers(0, L + 1, (B, W, K)).astype(np.int32)
  prior = rng.random((B, W, K)).astype(np.float32)
  reward = rng.random((B, W, K)).astype(np.float32)
  terminal = rng.random((B, W, K)) < 0.2
  valid = rng.random((B, W, K)) < 0.8
  tree, ids = tree_lib.add_children(tree, nodes, tokens, lengths, prior=prior, reward=reward,
                                    terminal=terminal, valid=valid)
  for b, ref in enumerate(refs):
    want = ref.add_children(nodes[b].tolist(), tokens[b].tolist(), lengths[b].tolist(),
                            prior[b].tolist(), reward[b].tolist(), terminal[b].tolist(),
                            valid[b].tolist(), seen)
    assert np.asarray(ids[b]).tolist() == want
  return tree


def random_backup(rng, refs, tree, seen):
  nodes = np.stack([rng.integers(-1, len(r.nodes), W) for r in refs]).astype(np.int32)
  values = rng.normal(size=(B, W)).astype(np.float32)
  mask = rng.random((B, W)) < 0.8
  for b, ref in enumerate(refs):
    ref.backup(nodes[b].tolist(), values[b].tolist(), mask[b].tolist())
  return tree_lib.backup(tree, nodes, values, mask=mask)


def random_keep(rng, refs, tree, seen):
  nodes = np.asarray([rng.integers(-1, len(r.nodes)) if rng.random() < 0.7 else 0
                      for r in refs], np.int32)
  seen["keep below root"] += int(np.sum(nodes > 0))
  for b, ref in enumerate(refs):
    ref.keep_subtree(int(nodes[b]))
  return tree_lib.keep_subtree(tree, nodes)


def fresh(rng):
  lengths = rng.integers(0, P + 1, B)
  roots = rng.integers(1, 100, (B, P)) * (np.arange(P)[None] < lengths[:, None])
  tree = tree_lib.init(B, capacity=N, max_children=C, arena_size=A,
                       root_tokens=jnp.asarray(roots, jnp.int32),
                       root_lengths=jnp.asarray(lengths, jnp.int32))
  return tree, [RefTree(list(roots[b, :lengths[b]])) for b in range(B)]


def test_random_operations_match_reference():
  """4 random sequences of 14 operations, every field compared after each; the sequences must
  reach overflow (of each kind), repeated nodes and re-rooting below the root."""
  seen = collections.Counter()
  ops = {"add": random_add, "backup": random_backup, "keep": random_keep}
  for seed in range(4):
    rng = np.random.default_rng(seed)
    tree, refs = fresh(rng)
    assert_same(tree, refs)
    for step in range(14):
      name = rng.choice(["add", "add", "add", "backup", "backup", "keep"]) if step > 1 else "add"
      tree = ops[name](rng, refs, tree, seen)
      assert_same(tree, refs)
  assert all(seen[k] > 0 for k in ("nodes full", "children full", "arena full", "repeat",
                                   "keep below root")), seen


def single(tokens=(7, 8), capacity=4, max_children=2, arena_size=6):
  return tree_lib.init(1, capacity=capacity, max_children=max_children, arena_size=arena_size,
                       root_tokens=jnp.asarray([tokens], jnp.int32))


def steps(*rows):
  """tokens [1, 1, k, L], lengths [1, 1, k] of k steps given as token lists."""
  width = max(1, max(len(r) for r in rows))
  tokens = np.zeros((1, 1, len(rows), width), np.int32)
  for j, r in enumerate(rows):
    tokens[0, 0, j, :len(r)] = r
  return jnp.asarray(tokens), jnp.asarray([[[len(r) for r in rows]]], jnp.int32)


def test_overflow_node_capacity():
  tree = single(capacity=3, max_children=4, arena_size=20)
  tree, ids = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2], [3]))
  assert np.asarray(ids).tolist() == [[[1, 2, -1]]]
  assert bool(tree.overflow[0]) and int(tree.num_nodes[0]) == 3
  assert np.asarray(tree.children[0, 0]).tolist() == [1, 2, -1, -1]
  assert np.asarray(tree.tokens[0, :5]).tolist() == [7, 8, 1, 2, 0]


def test_keeping_a_full_tree_whole_keeps_its_overflow():
  tree = single(capacity=3, max_children=4, arena_size=20)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2], [3]))
  for node in (-1, 0, 7):  # Nothing freed: the flag stands.
    assert bool(tree_lib.keep_subtree(tree, jnp.asarray([node])).overflow[0])
  assert not bool(tree_lib.keep_subtree(tree, jnp.asarray([1])).overflow[0])


def test_init_rejects_root_lengths_outside_the_prompt():
  prompts = jnp.ones((2, 4), jnp.int32)
  for lengths in ([1, 5], [-1, 2], [1, 2, 3]):
    with pytest.raises(ValueError, match="root_lengths must be"):
      tree_lib.init(2, capacity=4, max_children=2, arena_size=8, root_tokens=prompts,
                    root_lengths=jnp.asarray(lengths))


def test_overflow_child_slots_do_not_block_other_nodes():
  tree = single(capacity=8, max_children=2, arena_size=20)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2]))
  assert not bool(tree.overflow[0])
  tokens = jnp.asarray(np.arange(1, 13, dtype=np.int32).reshape(1, 2, 3, 2))
  lengths = jnp.ones((1, 2, 3), jnp.int32)
  # Node 0 is full: its candidates are dropped; node 1 takes two and drops its third.
  tree, ids = tree_lib.add_children(tree, jnp.asarray([[0, 1]]), tokens, lengths)
  assert np.asarray(ids).tolist() == [[[-1, -1, -1], [3, 4, -1]]]
  assert bool(tree.overflow[0])
  assert np.asarray(tree.children[0, :2]).tolist() == [[1, 2], [3, 4]]


def test_overflow_arena_stops_at_first_misfit():
  tree = single(capacity=8, max_children=4, arena_size=6)
  # 2 root tokens + 3 fit; the 2-token step does not; the 1-token one after it is dropped too.
  tree, ids = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1, 2, 3], [4, 5], [6]))
  assert np.asarray(ids).tolist() == [[[1, -1, -1]]]
  assert bool(tree.overflow[0]) and int(tree.num_tokens[0]) == 5
  assert np.asarray(tree.tokens[0]).tolist() == [7, 8, 1, 2, 3, 0]
  # An invalid candidate is no overflow; a repeated or -1 node is none either.
  tree2 = single(capacity=8, max_children=4, arena_size=20)
  tokens, lengths = steps([1], [2])
  tokens = jnp.concatenate([tokens] * 3, axis=1)
  lengths = jnp.concatenate([lengths] * 3, axis=1)
  tree2, ids = tree_lib.add_children(tree2, jnp.asarray([[0, 0, -1]]), tokens, lengths,
                                     valid=jnp.asarray([[[True, False]] * 3]))
  assert np.asarray(ids).tolist() == [[[1, -1], [-1, -1], [-1, -1]]]
  assert not bool(tree2.overflow[0])


def test_keep_subtree_keeps_counts_and_paths():
  tree = single(capacity=8, max_children=2, arena_size=20)
  tree, ids = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2, 3]))
  tree, ids2 = tree_lib.add_children(tree, jnp.asarray([[2]]), *steps([4, 5], [6]))
  tree = tree_lib.backup(tree, jnp.asarray([[3, 4, 1]]), jnp.asarray([[1.0, 0.5, 0.25]]))
  kept = tree_lib.keep_subtree(tree, jnp.asarray([2]))
  assert int(kept.num_nodes[0]) == 3 and not bool(kept.overflow[0])
  assert np.asarray(kept.visits[0, :3]).tolist() == [2, 1, 1]
  np.testing.assert_allclose(np.asarray(kept.value_sum[0, :3]), [1.5, 1.0, 0.5])
  tokens, lengths = tree_lib.path(kept, jnp.asarray([1]), 10)
  assert np.asarray(tokens[0, :lengths[0]]).tolist() == [7, 8, 2, 3, 4, 5]
  tokens, lengths = tree_lib.path(kept, jnp.asarray([0]), 10)
  assert np.asarray(tokens[0, :lengths[0]]).tolist() == [7, 8, 2, 3]
  assert np.asarray(kept.depth[0, :3]).tolist() == [0, 1, 1]
  # The freed slots take new children again.
  kept, ids = tree_lib.add_children(kept, jnp.asarray([[1]]), *steps([9], [9]))
  assert np.asarray(ids).tolist() == [[[3, 4]]]


def test_keep_subtree_that_does_not_fit_is_left_unchanged():
  tree = single(capacity=4, max_children=2, arena_size=6)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1, 2], [3]))
  # Hand-made shared spans: both children point at the root's 2 tokens and node 1 at 4 more.
  # Re-rooting at node 1's child would need 2 + 2 + 4 > 6 tokens.
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[1]]), *steps([4]))
  tree = tree.replace(span_start=tree.span_start.at[0, 3].set(0),
                      span_length=tree.span_length.at[0, 1].set(4).at[0, 3].set(2))
  kept = tree_lib.keep_subtree(tree, jnp.asarray([3]))
  assert bool(kept.overflow[0])
  for name in ("parent", "tokens", "visits", "span_start", "num_nodes"):
    np.testing.assert_array_equal(np.asarray(getattr(kept, name)), np.asarray(getattr(tree, name)))


def random_stats_tree(seed, with_unvisited):
  """A random tree with random visits (consistent or not: selection reads only the fields)."""
  rng = np.random.default_rng(seed)
  tree, refs = fresh(rng)
  for _ in range(5):
    tree = random_add(rng, refs, tree, collections.Counter())
  visits = rng.integers(0 if with_unvisited else 1, 6, (B, N)).astype(np.int32)
  values = rng.normal(size=(B, N)).astype(np.float32)
  terminal = np.asarray(tree.terminal)
  tree = tree.replace(visits=jnp.asarray(visits), value_sum=jnp.asarray(values))
  for b, ref in enumerate(refs):
    for i, x in enumerate(ref.nodes):
      x.visits, x.value_sum = int(visits[b, i]), float(values[b, i])
      assert x.terminal == terminal[b, i]
  return tree, refs


@pytest.mark.parametrize("rule,first_play", [("puct", "parent"), ("puct", 0.25), ("uct", "parent")])
def test_select_matches_formula(rule, first_play):
  for seed in range(3):
    tree, refs = random_stats_tree(seed, with_unvisited=True)
    for c in (0.5, 2.0):
      got = np.asarray(tree_lib.select(tree, c=c, rule=rule, first_play=first_play))
      assert got.tolist() == [r.select(c, rule, first_play) for r in refs]


def test_select_ties_take_the_first_child():
  tree = single(capacity=6, max_children=3, arena_size=20)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2], [3]),
                                  prior=jnp.full((1, 1, 3), 1 / 3))
  for rule in tree_lib.RULES:
    assert int(tree_lib.select(tree, rule=rule)[0]) == 1
  tree = tree_lib.backup(tree, jnp.asarray([[1, 2, 3]]), jnp.asarray([[0.0, 0.5, 0.5]]))
  assert int(tree_lib.select(tree, c=0.0)[0]) == 2


@pytest.mark.parametrize("rule", tree_lib.RULES)
def test_select_many_virtual_loss_matches_sequential_reference(rule):
  for seed in range(2):
    tree, refs = random_stats_tree(seed + 10, with_unvisited=False)
    got = np.asarray(tree_lib.select_many(tree, num=4, c=1.0, rule=rule, virtual_loss=1.0))
    assert got.tolist() == [r.select_many(4, 1.0, rule, "parent", 1.0) for r in refs]
    assert got[:, 0].tolist() == np.asarray(tree_lib.select(tree, c=1.0, rule=rule)).tolist()
    # The selections spread: with virtual loss they are not all the same leaf.
    assert any(len(set(row)) > 1 for row in got.tolist())


def test_best_child_and_q():
  tree = single(capacity=6, max_children=3, arena_size=20)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), *steps([1], [2], [3]))
  tree = tree_lib.backup(tree, jnp.asarray([[1, 2, 2, 3]]), jnp.asarray([[0.9, 0.2, 0.4, 0.5]]))
  np.testing.assert_allclose(np.asarray(tree.q[0, :4]), [2.0 / 4, 0.9, 0.3, 0.5], rtol=1e-6)
  assert int(tree_lib.best_child(tree, jnp.asarray([0]), by="visits")[0]) == 2
  assert int(tree_lib.best_child(tree, jnp.asarray([0]), by="value")[0]) == 1
  assert int(tree_lib.best_child(tree, jnp.asarray([1]))[0]) == -1


@pytest.mark.parametrize("kwargs,match", [
    (dict(capacity=0, max_children=2, arena_size=4), "capacity must be an integer >= 1; got 0"),
    (dict(capacity=4, max_children=0, arena_size=4), "max_children must be .* got 0"),
    (dict(capacity=4, max_children=2, arena_size=1), "arena_size=1 is smaller than .* 2"),
])
def test_init_rejects_bad_sizes(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tree_lib.init(1, root_tokens=jnp.asarray([[1, 2]], jnp.int32), **kwargs)


def test_unknown_rule_is_rejected():
  tree = single()
  with pytest.raises(ValueError, match="unknown rule 'ucb'.*puct"):
    tree_lib.select(tree, rule="ucb")
  with pytest.raises(ValueError, match="unknown by='prior'"):
    tree_lib.best_child(tree, jnp.asarray([0]), by="prior")
