"""Tree data for reward models: MC scores and HNC on hand-built trees worked by hand, node
selection counts, records against hand-written ones and a brute-force tokenisation, growth with
a scripted expansion and with a tiny random model, JSON round trips."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import tasks, tokenizers
from reasonjax.search import policy as policy_lib
from reasonjax.search import tree_data
from reasonjax.search.tree_data import StepExample, StepTree
from tests.conftest import random_params

TASK = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99)
TOK = tokenizers.load("synthetic")


def make_tree(nodes, problem=0, ids=False):
  """nodes: (parent, step, kind, correct) of nodes 1.. in breadth-first order; the root is
  added. With ids, node i's step ids are (100 + i,)."""
  return StepTree(problem=problem, parent=(-1,) + tuple(n[0] for n in nodes),
                  depth=_depths([-1] + [n[0] for n in nodes]),
                  steps=("",) + tuple(n[1] for n in nodes), kind=("",) + tuple(n[2] for n in nodes),
                  correct=(False,) + tuple(n[3] for n in nodes),
                  ids=((),) + tuple((100 + i,) for i in range(1, len(nodes) + 1)) if ids else None)


def _depths(parent):
  depth = [0] * len(parent)
  for i in range(1, len(parent)):
    depth[i] = depth[parent[i]] + 1
  return tuple(depth)


A, F, D, X = "answer", "failed", "depth", ""
# Root (4 children) -> a (4), b (3), c, d; a -> a1 (4), a2, a3, a4 (4); b -> b1, b2, b3;
# a1 -> a1w..a1z; a4 -> a4w..a4z.
HNC_TREE = make_tree([
    (0, "a", X, False), (0, "b", X, False), (0, "c", A, True), (0, "d", A, False),    # 1-4
    (1, "a1", X, False), (1, "a2", A, True), (1, "a3", A, False), (1, "a4", X, False),  # 5-8
    (2, "b1", A, True), (2, "b2", A, False), (2, "b3", D, False),                      # 9-11
    (5, "a1w", A, True), (5, "a1x", A, False), (5, "a1y", F, False), (5, "a1z", A, False),
    (8, "a4w", A, True), (8, "a4x", A, True), (8, "a4y", A, False), (8, "a4z", A, True),
], ids=True)


class ScriptedRng:
  """`random()` returns the scripted values in turn; running out fails the test."""

  def __init__(self, values):
    self.values = list(values)

  def random(self):
    assert self.values, "compress drew more random numbers than scripted"
    return self.values.pop(0)


def test_mc_scores_by_hand():
  # Correct leaves: c, a2, b1, a1w, a4w, a4x, a4z (7 of 15).
  want = [7 / 15, 5 / 10, 1 / 3, 1, 0, 1 / 4, 1, 0, 3 / 4, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1]
  np.testing.assert_allclose(tree_data.mc_scores(HNC_TREE), want, rtol=0, atol=1e-15)


def test_hnc_moves_scripted_children_by_hand():
  # Walk: root skipped (its children have no grandparent); a: draw 0.3 moves a1 (no more draws
  # for a); b has 3 children; a1 was moved; a4: 0.9, 0.6 keep a4w, a4x, 0.1 moves a4y.
  rng = ScriptedRng([0.3, 0.9, 0.6, 0.1])
  new, info = tree_data.compress(HNC_TREE, rng, min_children=4, probability=0.5)
  assert rng.values == []
  want = StepTree(
      problem=0,
      parent=(-1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 5, 5, 5, 5, 8, 8, 8),
      depth=(0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3),
      steps=("", "a", "b", "c", "d", "a a1", "a2", "a3", "a4", "a4 a4y", "b1", "b2", "b3",
             "a1w", "a1x", "a1y", "a1z", "a4w", "a4x", "a4z"),
      kind=(X, X, X, A, A, X, A, A, X, A, A, A, D, A, A, F, A, A, A, A),
      correct=(False, False, False, True, False, False, True, False, False, False, True, False,
               False, True, False, False, False, True, True, True),
      ids=((), (101,), (102,), (103,), (104,), (101, 105), (106,), (107,), (108,), (108, 118),
           (109,), (110,), (111,), (112,), (113,), (114,), (115,), (116,), (117,), (119,)))
  assert new == want
  assert info["moved"] == (5, 18)
  assert info["source"] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 18, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19)
  # a: 4 of its 6 leaves now right (was 5/10); a4: 3 of 3 (was 3/4); nothing else changes.
  want_scores = [7 / 15, 4 / 6, 1 / 3, 1, 0, 1 / 4, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1]
  np.testing.assert_allclose(tree_data.mc_scores(new), want_scores, rtol=0, atol=1e-15)
  assert info["changed"] == 2 and info["label_noise"] == pytest.approx(2 / 20)


def test_hnc_min_children_three_considers_b():
  # With min_children=3, b (3 children) is tried too: a keeps all four (4 draws), b moves b2.
  rng = ScriptedRng([0.9, 0.9, 0.9, 0.9, 0.8, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
  new, info = tree_data.compress(HNC_TREE, rng, min_children=3)
  # a1 and a4 (4 children each) draw 4 each after b: 14 draws in all.
  assert rng.values == []
  assert info["moved"] == (10,)
  assert new.steps[:6] == ("", "a", "b", "c", "d", "b b2")
  assert new.children(2) == (10, 11)  # b keeps b1, b3.
  assert [new.steps[i] for i in new.children(2)] == ["b1", "b3"]


def test_hnc_edge_probabilities_and_seeds():
  same, info = tree_data.compress(HNC_TREE, np.random.default_rng(0), probability=0.0)
  assert same == HNC_TREE and info["moved"] == () and info["label_noise"] == 0.0
  new, info = tree_data.compress(HNC_TREE, np.random.default_rng(0), probability=1.0)
  # The first child of a and of a4 moves; the root's children never do; a1 was moved.
  assert info["moved"] == (5, 16)
  assert [new.steps[i] for i in new.children(0)] == ["a", "b", "c", "d", "a a1"]
  assert [new.steps[i] for i in new.children(1)] == ["a2", "a3", "a4", "a4 a4w"]
  # The moved a1's children now sit at depth 2.
  assert [new.depth[i] for i in new.children(5)] == [2, 2, 2, 2]
  outcomes = set()
  for seed in range(20):
    a, info_a = tree_data.compress(HNC_TREE, np.random.default_rng(seed))
    b, _ = tree_data.compress(HNC_TREE, np.random.default_rng(seed))
    assert a == b
    outcomes.add(info_a["moved"])
  assert len(outcomes) > 1
  with pytest.raises(ValueError, match="min_children"):
    tree_data.compress(HNC_TREE, np.random.default_rng(0), min_children=1)


def selection_tree():
  """Root -> 83 nodes (level 1); node 1 -> 7 nodes (level 2); node 84 -> 2 nodes (level 3)."""
  nodes = [(0, f"s{i}", X if i in (1,) else A, False) for i in range(1, 84)]
  nodes += [(1, f"t{i}", X if i == 84 else A, False) for i in range(84, 91)]
  nodes += [(84, f"u{i}", A, False) for i in (91, 92)]
  return make_tree(nodes)


def selection_scores():
  level1 = np.random.default_rng(123).permutation([0.0] * 30 + [0.5] * 3 + [1.0] * 50)
  return np.concatenate([[0.3], level1, [0.25] * 7, [0.75] * 2])


@pytest.mark.parametrize("fraction, single, want", [
    (0.1, 5, {(1, 0.0): 3, (1, 0.5): 3, (1, 1.0): 5, (2, 0.25): 5, (3, 0.75): 2}),
    (0.5, 10, {(1, 0.0): 15, (1, 0.5): 3, (1, 1.0): 25, (2, 0.25): 7, (3, 0.75): 2}),
    (2.0, 1, {(1, 0.0): 30, (1, 0.5): 3, (1, 1.0): 50, (2, 0.25): 1, (3, 0.75): 1}),
])
def test_select_nodes_counts(fraction, single, want):
  tree, scores = selection_tree(), selection_scores()
  nodes = tree_data.select_nodes(tree, scores, np.random.default_rng(0), fraction=fraction,
                                 single_score_count=single)
  assert nodes == sorted(set(nodes)) and 0 not in nodes
  counts = {}
  for node in nodes:
    key = (tree.depth[node], float(scores[node]))
    counts[key] = counts.get(key, 0) + 1
  assert counts == want


def test_select_nodes_is_seeded():
  tree, scores = selection_tree(), selection_scores()
  pick = lambda seed: tree_data.select_nodes(tree, scores, np.random.default_rng(seed))  # noqa
  assert pick(0) == pick(0)
  assert len({tuple(pick(s)) for s in range(5)}) > 1


S = {"a": "7 + 5 = 12", "b": "12 * 3 = 36", "c": "#### 36", "d": "12 - 2 = 10",
     "e": "7 * 5 = 35", "f": "36 - 1 = 35"}
# Root -> a, e (right answer leaf); a -> b, d (wrong leaf); b -> c (right leaf), f (depth leaf).
RECORD_TREE = make_tree([(0, S["a"], X, False), (0, S["e"], A, True), (1, S["b"], X, False),
                         (1, S["d"], A, False), (3, S["c"], A, True), (3, S["f"], D, False)],
                        problem=7)


def test_records_by_hand():
  scores = tree_data.mc_scores(RECORD_TREE)
  np.testing.assert_allclose(scores, [2 / 4, 1 / 3, 1, 1 / 2, 0, 1, 0])
  a, b, c = S["a"], S["b"], S["c"]
  assert tree_data.prm_examples(RECORD_TREE, [1, 5], scores) == [
      StepExample(7, (), a, 1 / 3), StepExample(7, (a, b), c, 1.0)]
  assert tree_data.hrm_examples(RECORD_TREE, [1, 5], scores) == [
      StepExample(7, (), a, 1 / 3), StepExample(7, (a, b), c, 1.0),
      StepExample(7, (a,), f"{b} {c}", 1.0)]
  prm = tree_data.prm_examples(RECORD_TREE, [1, 3, 5], scores)
  hrm = tree_data.hrm_examples(RECORD_TREE, [3, 5], scores)
  assert tree_data.union(prm, hrm) == [
      StepExample(7, (), a, 1 / 3), StepExample(7, (a,), b, 0.5), StepExample(7, (a, b), c, 1.0),
      StepExample(7, (), f"{a} {b}", 0.5), StepExample(7, (a,), f"{b} {c}", 1.0)]
  assert tree_data.union(hrm, hrm) == hrm
  assert tree_data.orm_examples(RECORD_TREE) == [
      StepExample(7, (), S["e"], 1.0), StepExample(7, (a,), S["d"], 0.0),
      StepExample(7, (a, b), c, 1.0), StepExample(7, (a, b), S["f"], 0.0)]


def brute_force_example(prompt, previous, current, label):
  """BOS, the prompt, each earlier step and delimiter, then the judged unit and delimiter;
  one label at the unit's last token. Returns (inputs, mask, labels, the unit's start)."""
  ids = TOK.encode(prompt, add_bos=True)
  for step in previous:
    ids = ids + TOK.encode(step + "\n")
  start = len(ids)
  ids = ids + TOK.encode(current + "\n")
  mask = np.zeros(len(ids), np.float32)
  mask[-1] = 1.0
  return np.asarray(ids, np.int32), mask, mask * np.float32(label), start


def test_to_example_labels_only_the_judged_unit():
  problem = TASK.generate(1, seed=0)[0]
  prompt = TASK.prompt(problem)
  scores = tree_data.mc_scores(RECORD_TREE)
  records = tree_data.hrm_examples(RECORD_TREE, [3, 5, 6], scores)
  merged = [r for r in records if r.current == f"{S['b']} {S['c']}"]
  assert len(merged) == 1
  for record in records:
    got = tree_data.to_example(TOK, prompt, record)
    ids, mask, labels, start = brute_force_example(prompt, record.previous, record.current,
                                                   record.label)
    np.testing.assert_array_equal(got["inputs"], ids)
    np.testing.assert_array_equal(got["step_mask"], mask)
    np.testing.assert_array_equal(got["step_labels"], labels)
    if record is merged[0]:
      # The merged unit: exactly the two steps' text, one step end, labelled 1 there.
      assert TOK.decode(ids[start:].tolist()) == f"{S['b']} {S['c']}\n"
      assert got["step_mask"].sum() == 1 and got["step_labels"][-1] == 1.0


def test_tree_checks_breadth_first_order():
  with pytest.raises(ValueError, match="breadth-first"):
    make_tree([(0, "a", X, False), (1, "b", A, True), (0, "c", A, False)])
  with pytest.raises(ValueError, match="inner"):
    make_tree([(0, "a", X, False)])


class RecordingTask:
  """The arithmetic task's grader, recording the texts it grades."""

  def __init__(self):
    self.graded = []

  def check_answer(self, problem, text):
    self.graded.append(text)
    return TASK.check_answer(problem, text)


class FakePolicy:
  """Prompt ids: (1000 + problem index,)."""

  def __init__(self, problems):
    self.problems, self.task = problems, RecordingTask()

  def prompt_ids(self, problem):
    return np.asarray([1000 + self.problems.index(problem)], np.int32)


class FakeExpand:
  """Candidate j of a prefix has ids (j + 1,), so a prefix spells its problem and path.

  Problem 0: j=0 the right answer, j=1 empty, j=2 a wrong answer, j>=3 a step "step {d}.{j}".
  Problem 1: at the root, even j the right answer and odd j a step; below, "the end {j}" ended
  by EOS without an answer line, but j=4 an EOS at once (empty: failed, though final)."""

  def __init__(self, problems):
    self.problems, self.calls = problems, []

  def __call__(self, policy, prefixes, k, rng):
    self.calls.append(([tuple(p.tolist()) for p in prefixes], k, tuple(jax.random.key_data(rng)
                                                                     .ravel().tolist())))
    return [[self.candidate(int(p[0]) - 1000, [int(t) - 1 for t in p[1:]], j) for j in range(k)]
            for p in prefixes]

  def candidate(self, problem, path, j):
    answer = self.problems[problem].answer
    if problem == 0:
      text, final = {0: (f"#### {answer}", True), 1: ("", False),
                     2: (f"#### {int(answer) + 1}", True)}.get(j, (f"step {len(path)}.{j}", False))
    elif not path:
      text, final = (f"#### {answer}", True) if j % 2 == 0 else (f"x{j}", False)
    else:
      text, final = (f"the end {j}" if j < 4 else ""), True
    return policy_lib.Candidate(np.asarray([j + 1], np.int32), text, -1.0, final)


def grow_fake():
  problems = TASK.generate(2, seed=1)
  policy, expand = FakePolicy(problems), FakeExpand(problems)
  trees = tree_data.grow(policy, problems, jax.random.key(0), num_children=5, max_depth=3,
                         expand_fn=expand)
  return problems, policy, expand, trees


def test_grow_with_a_scripted_expansion():
  problems, policy, expand, (t0, t1) = grow_fake()
  # One call per level with every open node of both problems.
  assert [sorted(prefixes) for prefixes, _, _ in expand.calls] == [
      [(1000,), (1001,)],
      [(1000, 4), (1000, 5), (1001, 2), (1001, 4)],
      [(1000, 4, 4), (1000, 4, 5), (1000, 5, 4), (1000, 5, 5)]]
  assert [k for _, k, _ in expand.calls] == [5, 5, 5]
  assert len({key for *_, key in expand.calls}) == 3  # A new key per level.
  # Problem 0: each open node's 5 children are: right, failed, wrong, open, open (at depth 3
  # the last two are depth leaves).
  inner, last = (A, F, A, X, X), (A, F, A, D, D)
  assert t0.problem == 0 and t0.num_nodes == 36
  assert t0.parent == (-1,) + (0,) * 5 + (4,) * 5 + (5,) * 5 + (9,) * 5 + (10,) * 5 \
      + (14,) * 5 + (15,) * 5
  assert t0.depth == (0,) + (1,) * 5 + (2,) * 10 + (3,) * 20
  assert t0.kind == (X,) + inner * 3 + last * 4
  assert t0.correct == (False,) + (True, False, False, False, False) * 7
  assert t0.path_steps(35) == ["step 0.4", "step 1.4", "step 2.4"]
  assert t0.steps[2] == "" and t0.ids[35] == (5,) and t0.ids[0] == ()
  assert all(len(t0.children(i)) == 5 for i in range(36) if t0.kind[i] == X)
  # Problem 1: right answers at even j; below the two open nodes EOS endings, wrong, the last
  # one empty.
  assert t1.problem == 1 and t1.num_nodes == 16
  assert t1.parent == (-1,) + (0,) * 5 + (2,) * 5 + (4,) * 5
  assert t1.kind == (X, A, X, A, X, A) + (A, A, A, A, F) * 2
  assert t1.correct == (False, True, False, True, False, True) + (False,) * 10
  assert t1.steps[14:] == ("the end 3", "")
  # Graded: each leaf once, its path joined by newlines.
  assert len(policy.task.graded) == len(t0.leaves()) + len(t1.leaves())
  assert f"step 0.3\nstep 1.3\n#### {problems[0].answer}" in policy.task.graded
  assert "x1\nthe end 0" in policy.task.graded


def test_json_round_trip(tmp_path):
  _, _, _, trees = grow_fake()
  small, _ = tree_data.compress(trees[0], np.random.default_rng(0))
  for tree in trees + [small, HNC_TREE, RECORD_TREE]:
    assert StepTree.from_json(json.loads(json.dumps(tree.to_json()))) == tree
    bare = StepTree.from_json(json.loads(json.dumps(tree.to_json(ids=False))))
    assert bare.ids is None and bare == dataclasses.replace(tree, ids=None)
  path = str(tmp_path / "trees.jsonl")
  tree_data.save_trees(path, trees + [small])
  assert tree_data.load_trees(path) == trees + [small]


CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)


def test_grow_with_a_tiny_model_keeps_the_invariants():
  policy = policy_lib.StepPolicy(models.Model(CFG), random_params(CFG, 0, scale=0.3), TOK, TASK,
                                 max_step_tokens=6, batch_size=4)
  problems = TASK.generate(2, seed=0, split="test")
  trees = tree_data.grow(policy, problems, jax.random.key(1), num_children=2, max_depth=2)
  for p, tree in enumerate(trees):
    assert tree.problem == p and max(tree.depth) <= 2
    for node in range(tree.num_nodes):
      kind, text = tree.kind[node], tree.steps[node]
      assert len(tree.children(node)) == (2 if kind == X else 0)
      if node == 0:
        continue
      ids = list(tree.ids[node])
      assert 1 <= len(ids) <= 6
      assert text == TOK.decode([t for t in ids if t != TOK.eos_id]).strip()
      assert (kind == F) == (text == "")
      if kind == A:
        assert TOK.eos_id in ids or text.startswith("####")
      if kind in (X, D):  # Not the solution's end, so a step to build on.
        assert TOK.eos_id not in ids and not text.startswith("####")
      assert kind != (D if tree.depth[node] < 2 else X)
      if kind:
        solution = "\n".join(tree.path_steps(node))
        assert tree.correct[node] == TASK.check_answer(problems[p], solution)
    # HNC keeps every node's prompt + path tokens.
    small, info = tree_data.compress(tree, np.random.default_rng(0), min_children=2,
                                     probability=1.0)
    for new, old in enumerate(info["source"]):
      path = lambda t, n: sum((t.ids[i] for i in t.path(n)), ())  # noqa: E731
      assert path(small, new) == path(tree, old)
