"""The language-model environment of MCTS, with a scripted policy (tests/search/test_methods.py)
and the oracle scorer: tree bookkeeping, values, and MCTS decoding."""

import jax
import numpy as np
import pytest

from reasonjax.search import language, mcts as mcts_lib, methods, scorers, tree as tree_lib
from reasonjax.search.policy import StepPolicy
from tests.search.test_methods import TASK, TOK, ScriptedPolicy


@pytest.fixture
def scripted(monkeypatch):
  def make(problems, p_correct, seed=0):
    fake = ScriptedPolicy(problems, p_correct, seed)
    monkeypatch.setattr(language, "expand", fake.expand)

    def complete(policy, prefixes, rng):
      """Rollouts: the scripted steps chained to the answer line."""
      out = []
      for ids in prefixes:
        steps = []
        while True:
          c = fake.expand(policy, [ids], 1, rng)[0][0]
          steps.append(c.text)
          ids = np.concatenate([ids, c.ids])
          if c.final:
            break
        out.append(("\n".join(steps), len(TOK.encode("\n".join(steps)))))
      return out
    monkeypatch.setattr(language, "complete", complete)
    monkeypatch.setattr(methods, "complete", complete)
    monkeypatch.setattr(methods, "sample_solutions", fake.sample_solutions)
    return fake
  return make


def _search(problems, **mcts):
  policy = StepPolicy(None, None, TOK, TASK, max_steps=5, max_step_tokens=16)
  return methods.Search(policy, scorers.OracleScorer(TASK), problems, jax.random.key(0),
                        mcts=mcts)


@pytest.mark.parametrize("evaluation", ["reward", "rollout", "mixed"])
def test_mcts_tree_holds_the_steps_and_values_it_was_given(scripted, evaluation):
  problems = TASK.generate(6, seed=7, split="test")
  scripted(problems, p_correct=0.5)
  search = _search(problems, evaluation=evaluation, simulations_per_n=4,
                   simulations_per_round=2, num_children=3)
  result = methods.mcts(search, 4)
  tree = result.info["tree"]
  assert (result.info["simulations"] >= 16).all() and not result.info["overflow"].any()
  # Every node's arena path decodes to the prompt and its steps, and its reward is the oracle's
  # verdict on its last step (none in rollout mode), mixed with the outcome when terminal.
  num_nodes = np.asarray(tree.num_nodes)
  for b, problem in enumerate(problems):
    for node in range(1, num_nodes[b]):
      ids, length = tree_lib.path(tree, np.full((len(problems),), node, np.int32), 512)
      text = TOK.decode(np.asarray(ids[b, :int(length[b])]).tolist())
      assert text.startswith(TASK.prompt(problem).strip())
      steps = [s for s in text[len(TASK.prompt(problem)):].split("\n") if s.strip()]
      score = scorers.OracleScorer(TASK)([problem], [steps])[0][-1]
      reward = float(tree.reward[b, node])
      if not tree.terminal[b, node]:
        assert reward == (0.0 if evaluation == "rollout" else score)
      elif evaluation == "reward":
        assert reward == score
      else:
        outcome = float(TASK.check_answer(problem, "\n".join(steps)))
        want = outcome if evaluation == "rollout" else 0.5 * score + 0.5 * outcome
        assert reward == pytest.approx(want)
  # Root visits count the simulations; values lie in [0, 1].
  np.testing.assert_array_equal(np.asarray(tree.visits[:, 0]), result.info["simulations"])
  assert (np.asarray(tree.q) >= 0).all() and (np.asarray(tree.q) <= 1).all()


def test_mcts_with_the_oracle_solves_what_one_sample_cannot(scripted):
  problems = TASK.generate(24, seed=8, split="test")
  scripted(problems, p_correct=0.5)
  search = _search(problems, evaluation="reward", simulations_per_n=24, num_children=4)
  one = np.mean([TASK.check_answer(p, t)
                 for p, t in zip(problems, methods.best_of_n(search, 1).texts)])
  result = methods.mcts(search, 4)
  found = np.mean([TASK.check_answer(p, t) for p, t in zip(problems, result.texts)])
  assert found >= 0.75 > one + 0.5  # (0.83 against 0.04 when written)
  assert (result.tokens > 0).all()


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match=r"\['depth'\] are unknown; valid: .*num_children"):
    language.check_settings({"depth": 3})
  with pytest.raises(ValueError, match="evaluation='oracle'; valid"):
    language.check_settings({"evaluation": "oracle"})
  with pytest.raises(ValueError, match="lam=2"):
    language.check_settings({"lam": 2})
  with pytest.raises(ValueError, match="rule"):
    language.check_settings({"rule": "ucb"})


def test_search_continues_from_a_kept_subtree(scripted):
  """After `LanguageEnv.keep_subtree`, the host records match the re-rooted arena and the next
  search expands the kept steps' continuations."""
  problems = TASK.generate(4, seed=9, split="test")
  scripted(problems, p_correct=0.7)
  search = _search(problems, evaluation="reward", simulations_per_n=3, num_children=3)
  tree, env, _ = methods.grow_trees(search, 12)
  chosen = np.asarray(mcts_lib.best_path(tree, max_depth=4))[:, 1]
  chosen_steps = [env.steps(b, int(node)) for b, node in enumerate(chosen)]
  depth = np.asarray(tree.depth)[np.arange(4), chosen]
  tree = env.keep_subtree(tree, chosen)
  np.testing.assert_array_equal(env.root_depth, depth)
  for b in range(4):
    assert env.steps(b, 0) == chosen_steps[b]
    for node in range(int(tree.num_nodes[b])):
      ids, length = tree_lib.path(tree, np.full((4,), node, np.int32), 512)
      np.testing.assert_array_equal(np.asarray(ids[b, :int(length[b])]), env.prefix(b, node))
      assert env.steps(b, node)[:len(chosen_steps[b])] == chosen_steps[b]
  config = mcts_lib.MCTSConfig(num_simulations=6, simulations_per_round=2, max_depth=3)
  tree, stats = mcts_lib.search(tree, env, config)
  assert (stats["simulations"] >= 6).all() and not stats["overflow"].any()
  for b in range(4):  # New nodes continue the kept steps.
    for node in range(1, int(tree.num_nodes[b])):
      assert env.steps(b, node)[:len(chosen_steps[b])] == chosen_steps[b]
