"""MCTS on toy environments (no language model) against a plain-Python MCTS written from the
formulas; a game with one rewarding leaf; overflow, warm starts and bad input."""

import math
import random

import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax.search import mcts
from reasonjax.search import tree as tree_lib

PROMPT = 3
BASE = 10  # step j of a game is the token BASE + j, repeated 1 + j % 2 times


def parse(tokens):
  """The game state (tuple of choices) of a token path, prompt excluded."""
  out, i = [], PROMPT
  while i < len(tokens):
    j = int(tokens[i]) - BASE
    out.append(j)
    i += 1 + j % 2
  return tuple(out)


class Game:
  """A deterministic game of depth `depth` with k moves per state; priors, values and rewards
  come from a seeded hash of (tree index, state). With `target`, only that leaf has reward 1,
  and the value of an inner state is 0.7 on the target's path, else random in [0.1, 0.5]."""

  def __init__(self, k, depth, seed=0, target=None, drop=0.0):
    self.k, self.depth, self.seed, self.target, self.drop = k, depth, seed, target, drop

  def _rng(self, b, state):
    return random.Random(f"{self.seed}/{b}/{state}")

  def moves(self, b, state):
    """(priors, valid) of the k moves of `state`."""
    rng = self._rng(b, state)
    raw = [rng.random() + 0.05 for _ in range(self.k)]
    valid = [rng.random() >= self.drop for _ in range(self.k)]
    return [p / sum(raw) for p in raw], valid

  def terminal(self, state):
    return len(state) >= self.depth

  def reward(self, b, state):
    if self.target is not None:
      return float(state == self.target)
    return round(self._rng(b, ("r",) + state).random(), 3) if self.terminal(state) else 0.0

  def value(self, b, state):
    if self.terminal(state):
      return self.reward(b, state)
    if self.target is not None:  # a noisy heuristic: some wrong steps look better
      on = state == self.target[:len(state)]
      return 0.7 if on else round(0.1 + 0.4 * self._rng(b, ("v",) + state).random(), 3)
    return round(self._rng(b, ("v",) + state).random(), 3)


class ToyEnv:
  """The Environment of a `Game`; records the states it is asked to expand, per tree."""

  def __init__(self, game, width=32):
    self.game, self.width = game, width
    self.expanded = None

  def states(self, tree, nodes_BxM):
    out = []
    for m in range(nodes_BxM.shape[1]):
      tokens, lengths = tree_lib.path(tree, jnp.asarray(nodes_BxM[:, m]), self.width)
      out.append([parse(list(np.asarray(tokens[b, :lengths[b]])))
                  for b in range(nodes_BxM.shape[0])])
    return [list(row) for row in zip(*out)]  # [B][M]

  def expand(self, tree, nodes):
    nodes = np.asarray(nodes)
    b_, w_ = nodes.shape
    k = self.game.k
    if self.expanded is None:
      self.expanded = [[] for _ in range(b_)]
    tokens = np.zeros((b_, w_, k, 2), np.int32)
    lengths = np.zeros((b_, w_, k), np.int32)
    prior = np.zeros((b_, w_, k), np.float32)
    reward = np.zeros((b_, w_, k), np.float32)
    terminal = np.zeros((b_, w_, k), bool)
    valid = np.zeros((b_, w_, k), bool)
    states = self.states(tree, nodes)
    for b in range(b_):
      for w in range(w_):
        if nodes[b, w] < 0:
          continue
        state = states[b][w]
        self.expanded[b].append(state)
        priors, ok = self.game.moves(b, state)
        for j in range(k):
          tokens[b, w, j, :1 + j % 2] = BASE + j
          lengths[b, w, j] = 1 + j % 2
          prior[b, w, j] = priors[j]
          reward[b, w, j] = self.game.reward(b, state + (j,))
          terminal[b, w, j] = self.game.terminal(state + (j,))
          valid[b, w, j] = ok[j]
    return mcts.Expansion(tokens=jnp.asarray(tokens), lengths=jnp.asarray(lengths),
                          prior=jnp.asarray(prior), reward=jnp.asarray(reward),
                          terminal=jnp.asarray(terminal), valid=jnp.asarray(valid))

  def evaluate(self, tree, nodes):
    nodes = np.asarray(nodes)
    b_, w_, k = nodes.shape
    states = self.states(tree, nodes.reshape(b_, -1))
    values = np.zeros((b_, w_ * k), np.float32)
    for b in range(b_):
      for m in range(w_ * k):
        if nodes.reshape(b_, -1)[b, m] >= 0:
          values[b, m] = self.game.value(b, states[b][m])
    return values.reshape(b_, w_, k)


class RefMCTS:
  """Plain-Python step-level MCTS with W = 1, written from the module docstring's rules."""

  def __init__(self, game, b, config):
    self.game, self.b, self.cfg = game, b, config
    self.n, self.v, self.kids = {(): 0}, {(): 0.0}, {(): []}
    self.prior, self.term, self.rew = {(): 0.0}, {(): False}, {(): 0.0}
    self.expanded, self.sims = [], 0

  def q(self, s):
    return self.v[s] / max(self.n[s], 1)

  def select(self):
    s, c = (), self.cfg.c
    while self.kids[s] and not self.term[s]:
      best, best_score = None, -math.inf
      for kid in self.kids[s]:
        if self.cfg.rule == "puct":
          q = self.q(kid) if self.n[kid] else self.q(s)
          score = q + c * self.prior[kid] * math.sqrt(self.n[s]) / (1 + self.n[kid])
        else:
          score = (self.q(kid) + c * math.sqrt(math.log(max(self.n[s], 1)) / self.n[kid])
                   if self.n[kid] else math.inf)
        if score > best_score:
          best, best_score = kid, score
      s = best
    return s

  def backup(self, s, value):
    for i in range(len(s) + 1):
      self.n[s[:i]] += 1
      self.v[s[:i]] += value

  def open_leaves(self):
    return [s for s in self.n if not self.kids[s] and not self.term[s]
            and len(s) < self.cfg.max_depth]

  def run(self):
    while self.sims < self.cfg.num_simulations and self.open_leaves():
      leaf = self.select()
      if self.term[leaf] or len(leaf) >= self.cfg.max_depth:
        self.backup(leaf, self.rew[leaf] if self.term[leaf] else self.q(leaf))
        self.sims += 1
        continue
      self.expanded.append(leaf)
      priors, valid = self.game.moves(self.b, leaf)
      for j in range(self.game.k):
        if not valid[j]:
          continue
        s = leaf + (j,)
        self.kids[leaf].append(s)
        self.n[s], self.v[s], self.kids[s] = 0, 0.0, []
        self.prior[s], self.term[s] = priors[j], self.game.terminal(s)
        self.rew[s] = self.game.reward(self.b, s)
      if not self.kids[leaf]:  # a dead end: terminal from now on
        self.term[leaf] = True
        self.backup(leaf, self.rew[leaf])
        self.sims += 1
      for s in self.kids[leaf]:
        self.backup(s, self.game.value(self.b, s))
        self.sims += 1


def fresh_tree(b, capacity=64, max_children=3, arena_size=256):
  prompts = jnp.asarray(np.arange(1, 1 + b * PROMPT).reshape(b, PROMPT), jnp.int32)
  return tree_lib.init(b, capacity=capacity, max_children=max_children, arena_size=arena_size,
                       root_tokens=prompts)


def node_stats(tree, env, b):
  """{state: (visits, value_sum)} of tree b's used nodes."""
  n = int(tree.num_nodes[b])
  ids = np.full((tree.batch_size, n), -1, np.int32)
  ids[b] = np.arange(n)
  states = env.states(tree, ids)[b]
  visits, values = np.asarray(tree.visits[b]), np.asarray(tree.value_sum[b])
  return {s: (int(visits[i]), float(values[i])) for i, s in enumerate(states)}


@pytest.mark.parametrize("rule,max_depth,drop", [("puct", 8, 0.0), ("puct", 2, 0.3),
                                                  ("uct", 8, 0.3)])
def test_search_matches_reference_mcts(rule, max_depth, drop):
  game = Game(k=3, depth=4, seed=1, drop=drop)
  config = mcts.MCTSConfig(num_simulations=30, simulations_per_round=1, c=1.5, rule=rule,
                           max_depth=max_depth)
  env = ToyEnv(game)
  tree, stats = mcts.search(fresh_tree(2), env, config)
  for b in range(2):
    ref = RefMCTS(game, b, config)
    ref.run()
    assert env.expanded[b] == ref.expanded  # the selection order
    assert stats["simulations"][b] == ref.sims
    got = node_stats(tree, env, b)
    assert set(got) == set(ref.n)
    for s, (visits, value_sum) in got.items():
      assert visits == ref.n[s], s
      assert value_sum == pytest.approx(ref.v[s], abs=1e-4), s
    assert int(tree.visits[b, 0]) == ref.sims  # N(root) counts the simulations
  assert not stats["overflow"].any()
  # Enough expansions that the order is a real check (max_depth 2 leaves 1 + 3 to expand).
  assert min(len(e) for e in env.expanded) >= (3 if max_depth == 2 else 6)


def reward_path(tree, env, b):
  """The state of tree b's node with reward 1 (None if there is none)."""
  hits = np.flatnonzero(np.asarray(tree.used[b] & tree.terminal[b] & (tree.reward[b] == 1.0)))
  if not len(hits):
    return None
  nodes = np.zeros((tree.batch_size, 1), np.int32)
  nodes[b] = hits[0]
  return env.states(tree, nodes)[b][0]


@pytest.mark.parametrize("width", [1, 4])
def test_search_finds_the_single_rewarding_leaf(width):
  target = (2, 0, 1, 2)
  config = mcts.MCTSConfig(num_simulations=64, simulations_per_round=width, c=1.0,
                           stop_reward=1.0)
  for seed in range(3):
    env = ToyEnv(Game(k=3, depth=4, target=target, seed=seed))
    tree, stats = mcts.search(fresh_tree(2), env, config)
    assert stats["solved"].all() and (stats["simulations"] < 64).all()
    assert [reward_path(tree, env, b) for b in range(2)] == [target, target]
    # 81 leaves under 40 inner states: an exhaustive search expands all 40.
    assert max(len(e) for e in env.expanded) <= 21
    if width > 1:  # virtual loss spreads a round over several leaves
      assert max(len(e) for e in env.expanded) > stats["rounds"]


def test_without_a_stop_the_budget_or_exhaustion_ends_the_search():
  game = Game(k=3, depth=4, target=(2, 0, 1, 2), seed=2)
  config = mcts.MCTSConfig(num_simulations=30, simulations_per_round=1)
  tree, stats = mcts.search(fresh_tree(2), ToyEnv(game), config)
  # A round is not cut short: up to W * k - 1 = 2 over the budget.
  assert ((stats["simulations"] >= 30) & (stats["simulations"] <= 32)).all()
  assert (np.asarray(tree.visits[:, 0]) == stats["simulations"]).all()
  assert not stats["solved"].any() and not stats["exhausted"].any()
  small = Game(k=2, depth=2, seed=3)
  tree, stats = mcts.search(fresh_tree(1), ToyEnv(small), config.replace(num_simulations=200))
  assert stats["exhausted"].all() and int(tree.num_nodes[0]) == 7
  # 6 children, plus the terminal leaves selected again before the last one was expanded.
  assert 6 <= stats["simulations"][0] < 200


def test_best_path_follows_visits_or_values():
  tree = fresh_tree(1, capacity=8)
  step = jnp.full((1, 1, 3, 1), BASE, jnp.int32)
  ones = jnp.ones((1, 1, 3), jnp.int32)
  tree, ids = tree_lib.add_children(tree, jnp.asarray([[0]]), step, ones)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[2]]), step, ones)
  # Node 1: 1 visit of 0.9; node 2: 4 visits (its children 4, 5, 6: 1, 2, 1 visits);
  # node 3: 2 visits of 0.5.
  tree = tree_lib.backup(tree, jnp.asarray([[1, 4, 5, 5, 6, 3, 3]]),
                         jnp.asarray([[0.9, 0.1, 0.2, 0.2, 0.2, 0.5, 0.5]]))
  assert np.asarray(mcts.best_path(tree, max_depth=3)).tolist() == [[0, 2, 5, -1]]
  assert np.asarray(mcts.best_path(tree, by="value", max_depth=3)).tolist() == [[0, 1, -1, -1]]
  assert mcts.best_path(tree).shape == (1, 8)


def test_each_selection_of_a_terminal_leaf_is_a_simulation():
  """W = 3 selections of the same terminal leaf back its reward up 3 times; no expansion."""
  tree = fresh_tree(1, capacity=8)
  tokens = jnp.full((1, 1, 2, 1), BASE, jnp.int32)
  tree, _ = tree_lib.add_children(tree, jnp.asarray([[0]]), tokens, jnp.ones((1, 1, 2), jnp.int32),
                                  reward=jnp.asarray([[[1.0, 0.0]]]),
                                  terminal=jnp.asarray([[[True, False]]]))
  tree = tree_lib.backup(tree, jnp.asarray([[1, 2]]), jnp.asarray([[1.0, 0.0]]))

  class NoExpansion(ToyEnv):
    def expand(self, tree, nodes):
      raise AssertionError(f"nothing to expand; asked for {nodes}")
  config = mcts.MCTSConfig(num_simulations=3, simulations_per_round=3, c=0.0, virtual_loss=0.0)
  tree, stats = mcts.search(tree, NoExpansion(Game(k=2, depth=3)), config)
  assert stats["simulations"].tolist() == [3] and stats["rounds"] == 1
  assert np.asarray(tree.visits[0, :3]).tolist() == [5, 4, 1]
  np.testing.assert_allclose(np.asarray(tree.value_sum[0, :3]), [4.0, 4.0, 0.0])


def test_overflow_stops_the_tree():
  game = Game(k=3, depth=6, seed=2)
  config = mcts.MCTSConfig(num_simulations=50, simulations_per_round=2)
  tree, stats = mcts.search(fresh_tree(2, capacity=9), ToyEnv(game), config)
  assert stats["overflow"].all() and (stats["simulations"] < 50).all()
  assert np.asarray(tree.num_nodes).tolist() == [9, 9]
  # The tree is consistent: every used non-root node's parent lists it; counts add up.
  for b in range(2):
    for i in range(1, 9):
      p = int(tree.parent[b, i])
      assert i in np.asarray(tree.children[b, p]).tolist()
    assert int(tree.visits[b, 0]) == stats["simulations"][b]


def test_warm_start_from_kept_subtree():
  game = Game(k=3, depth=5, seed=4)
  config = mcts.MCTSConfig(num_simulations=20, simulations_per_round=2)
  env = ToyEnv(game)
  tree, _ = mcts.search(fresh_tree(2), env, config)
  step = np.asarray(mcts.best_path(tree))[:, 1]
  kept_visits = np.asarray(tree.visits)[np.arange(2), step]
  prefix, _ = tree_lib.path(tree, jnp.asarray(step), 32)
  tree = tree_lib.keep_subtree(tree, jnp.asarray(step))
  assert np.asarray(tree.visits[:, 0]).tolist() == kept_visits.tolist()
  root, _ = tree_lib.path(tree, jnp.zeros((2,), jnp.int32), 32)
  np.testing.assert_array_equal(np.asarray(root), np.asarray(prefix))
  tree, stats = mcts.search(tree, env, config)
  assert (np.asarray(tree.visits[:, 0]) == kept_visits + stats["simulations"]).all()
  assert (np.asarray(tree.depth[:, 1]) == 1).all()


@pytest.mark.parametrize("field,value,match", [
    ("num_simulations", 0, "num_simulations must be an integer >= 1; got 0"),
    ("simulations_per_round", 0, "simulations_per_round must be an integer >= 1"),
    ("c", -1.0, "c must be a finite number >= 0; got -1.0"),
    ("rule", "ucb", r"rule must be one of \('puct', 'uct'\); got 'ucb'"),
    ("first_play", "max", "first_play must be 'parent' or a finite number"),
    ("virtual_loss", -0.5, "virtual_loss must be"),
    ("max_depth", 0, "max_depth must be an integer >= 1; got 0"),
])
def test_config_rejects_bad_values(field, value, match):
  with pytest.raises(ValueError, match=f"MCTSConfig.{match}"):
    mcts.MCTSConfig(**{field: value})


def test_k_larger_than_the_tree_holds_is_rejected():
  config = mcts.MCTSConfig(num_simulations=4)
  with pytest.raises(ValueError, match="k=3 .* max_children=2"):
    mcts.search(fresh_tree(1, max_children=2), ToyEnv(Game(k=3, depth=3)), config)
  with pytest.raises(ValueError, match="k=3 .* capacity=3"):
    mcts.search(fresh_tree(1, capacity=3), ToyEnv(Game(k=3, depth=3)), config)
  with pytest.raises(ValueError, match="capacity must be an integer >= 1; got 0"):
    fresh_tree(1, capacity=0)
