"""Search methods: with a scripted policy whose step success is known, and a real SFT policy."""

import collections
import zlib

import jax
import numpy as np
import pytest

from reasonjax import models
from reasonjax.data import tasks, tokenizers
from reasonjax.data.tasks.base import apply_op
from reasonjax.search import methods, scorers
from reasonjax.search.policy import Candidate, StepPolicy

TASK = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99,
                      ops="+-")
TOK = tokenizers.load("synthetic")


class ScriptedPolicy:
  """Candidate steps of arithmetic chains: the next equation from the path's last result, its
  result right with probability p_correct (drawn from a seed, the call and the problem), else
  off by one; after the last operation, the answer line. Records whether, at every depth where
  the path was still correct, some candidate was correct: whether the problem can be solved
  step by step."""

  def __init__(self, problems, p_correct, seed=0):
    self.by_prompt = {tuple(StepPolicy(None, None, TOK, TASK).prompt_ids(p)): p for p in problems}
    self.p, self.seed, self.calls = p_correct, seed, 0
    self.solvable = collections.defaultdict(lambda: True)

  def _steps(self, ids):
    for prompt, problem in self.by_prompt.items():
      if tuple(ids[:len(prompt)]) == prompt:
        text = TOK.decode(ids[len(prompt):].tolist())
        return problem, [s for s in text.split("\n") if s]
    raise AssertionError("unknown prefix")

  def expand(self, policy, prefixes, k, rng):
    del policy, rng
    self.calls += 1
    out = []
    for ids in prefixes:
      problem, steps = self._steps(np.asarray(ids))
      # The chain goes on from the path's own last result, right or wrong.
      ops = problem.data["operations"]
      value = int(steps[-1].split("=")[1]) if steps else problem.data["start"]
      on_track = TASK.check_steps(problem, steps).all_correct
      rng = np.random.default_rng([self.seed, self.calls, zlib.crc32(problem.question.encode())])
      cands = []
      if len(steps) == len(ops):
        texts = [f"#### {value}" if rng.random() < self.p else f"#### {value + 1}"
                 for _ in range(k)]
      else:
        op, x = ops[len(steps)]
        right = apply_op(value, op, x)
        texts = [f"{value} {op} {x} = {right if rng.random() < self.p else right + 1}"
                 for _ in range(k)]
      good = [t.endswith(f" {right}") if len(steps) < len(ops) else t == f"#### {value}"
              for t in texts]
      if on_track:
        self.solvable[problem.question] &= any(good)
      for t in texts:
        final = t.startswith("####")
        ids_t = np.asarray(TOK.encode(t + ("" if final else "\n")), np.int32)
        cands.append(Candidate(ids=ids_t, text=t, logprob=0.0, final=final))
      out.append(cands)
    return out

  def sample_solutions(self, policy, problems, n, rng):
    """Whole solutions: candidate steps chained, one draw per step."""
    texts = []
    for problem in problems:
      row = []
      for _ in range(n):
        ids = policy.prompt_ids(problem)
        steps = []
        while True:
          c = self.expand(policy, [ids], 1, rng)[0][0]
          steps.append(c.text)
          ids = np.concatenate([ids, c.ids])
          if c.final:
            break
        row.append("\n".join(steps))
      texts.append(row)
    return texts, np.asarray([[len(TOK.encode(t)) for t in row] for row in texts])


@pytest.fixture
def scripted(monkeypatch):
  def make(problems, p_correct, seed=0):
    fake = ScriptedPolicy(problems, p_correct, seed)
    monkeypatch.setattr(methods, "expand", fake.expand)
    monkeypatch.setattr(methods, "sample_solutions", fake.sample_solutions)
    return fake
  return make


def _policy():
  return StepPolicy(None, None, TOK, TASK, max_steps=5)


def _accuracy(problems, result):
  return np.mean([TASK.check_answer(p, t) for p, t in zip(problems, result.texts)])


def test_step_greedy_with_the_oracle_solves_every_problem_solvable_step_by_step(scripted):
  problems = TASK.generate(40, seed=1, split="test")
  fake = scripted(problems, p_correct=0.3)
  search = methods.Search(_policy(), scorers.OracleScorer(TASK), problems, jax.random.key(0))
  result = methods.step_greedy(search, 3)
  solvable = [fake.solvable[p.question] for p in problems]
  correct = [TASK.check_answer(p, t) for p, t in zip(problems, result.texts)]
  assert 0 < sum(solvable) < len(problems)  # The test distinguishes the two kinds.
  assert correct == solvable
  # One batched expansion per depth for all problems, not one per problem.
  assert fake.calls <= 4


def test_best_of_n_with_the_oracle_is_monotone_in_n_and_reaches_pass_at_n(scripted):
  problems = TASK.generate(30, seed=2, split="test")
  scripted(problems, p_correct=0.6)
  search = methods.Search(_policy(), scorers.OracleScorer(TASK), problems, jax.random.key(0))
  accuracies = [_accuracy(problems, methods.best_of_n(search, n)) for n in (1, 2, 4, 8)]
  assert accuracies == sorted(accuracies) and accuracies[-1] > accuracies[0]
  texts, _, _ = search.pool.take(8)
  pass_at_8 = np.mean([any(TASK.check_answer(p, t) for t in row)
                       for p, row in zip(problems, texts)])
  assert accuracies[-1] == pass_at_8


def test_pool_samples_are_nested_across_n(scripted):
  problems = TASK.generate(5, seed=3, split="test")
  scripted(problems, p_correct=0.5)
  pool = methods.SolutionPool(_policy(), problems, jax.random.key(0))
  small, _, _ = pool.take(3)
  large, tokens, _ = pool.take(8)
  assert [row[:3] for row in large] == small
  assert tokens.shape == (5, 8)


def test_votes_against_brute_force():
  texts = ["a\n#### 3", "b\n#### 4", "c\n#### 4", "d", "e\n#### 3"]
  assert methods._vote(texts, [1] * 5) == texts[0]  # 3 and 4 twice each: 3 was seen first.
  assert methods._vote(texts, [1, 2, 2, 9, 1]) == texts[1]  # "d" has no answer: no vote.
  assert methods._vote(["x", "y"], [1, 1]) == "x"
  for seed in range(20):
    rng = np.random.default_rng(seed)
    answers = rng.integers(0, 3, 7)
    weights = rng.random(7)
    texts = [f"s{j}\n#### {a}" for j, a in enumerate(answers)]
    totals = {a: weights[answers == a].sum() for a in set(answers.tolist())}
    best = max(totals.values())
    winners = [a for a in totals if totals[a] == best]
    first = min(int(np.argmax(answers == a)) for a in winners)
    assert methods._vote(texts, weights) == texts[first]


def test_majority_and_weighted_vote_pick_the_consensus(scripted):
  problems = TASK.generate(20, seed=4, split="test")
  scripted(problems, p_correct=0.9)
  search = methods.Search(_policy(), scorers.OracleScorer(TASK), problems, jax.random.key(0))
  one = _accuracy(problems, methods.majority_vote(search, 1))
  many = _accuracy(problems, methods.majority_vote(search, 15))
  weighted = _accuracy(problems, methods.weighted_vote(search, 15))
  assert many > one and weighted == 1.0  # The oracle gives wrong answers weight 0.


def test_beam_with_the_oracle_finds_solvable_problems(scripted):
  problems = TASK.generate(30, seed=5, split="test")
  fake = scripted(problems, p_correct=0.3)
  search = methods.Search(_policy(), scorers.OracleScorer(TASK), problems, jax.random.key(0),
                          beam_width=2)
  result = methods.beam(search, 4)
  # Two beams of two candidates cover at least what one greedy pick of four can reach.
  solvable = [fake.solvable[p.question] for p in problems]
  correct = [TASK.check_answer(p, t) for p, t in zip(problems, result.texts)]
  assert all(c for c, s in zip(correct, solvable) if s)
  assert result.tokens.shape == (30,) and (result.tokens > 0).all()


def test_bad_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="valid methods: .*best_of_n"):
    methods.get_method("best_of_everything")
  with pytest.raises(ValueError, match="valid: .*'min'"):
    methods.Search(_policy(), None, [], jax.random.key(0), aggregation="median")
  search = methods.Search(_policy(), None, TASK.generate(1), jax.random.key(0))
  with pytest.raises(ValueError, match="needs a scorer"):
    methods.best_of_n(search, 2)


def test_methods_with_a_real_policy(sft_workdir):
  """Every method (mcts aside, tested with the MCTS module) on the runlocal SFT policy."""
  folder = f"{sft_workdir}/hf"
  task = tasks.get_task("arithmetic", min_steps=1, max_steps=2, max_operand=9, max_value=30,
                        ops="+-")
  tok = tokenizers.load(folder)
  cfg, params = models.load({"hf_path": folder}, jax.random.key(0))
  policy = StepPolicy(models.Model(cfg), params, tok, task, temperature=0.7, max_step_tokens=16,
                      max_steps=4, max_new_tokens=48, batch_size=8)
  problems = task.generate(8, seed=0, split="test")
  search = methods.Search(policy, scorers.OracleScorer(task), problems, jax.random.key(0))
  accuracy = {}
  for name in ("best_of_n", "majority_vote", "weighted_vote", "step_greedy", "beam"):
    for n in (1, 2):
      result = methods.get_method(name)(search, n)
      assert len(result.texts) == 8 and result.tokens.shape == (8,)
      assert (result.tokens > 0).all() and (result.tokens <= n * 48 * 4).all()
      accuracy[name, n] = _accuracy(problems, result)
  assert accuracy["best_of_n", 2] >= accuracy["best_of_n", 1]
  # Oracle step-greedy: a problem whose chosen steps all scored 1 ends graded correct (the
  # scored candidates are the text that is graded).
  result = methods.step_greedy(search, 4)
  for problem, text, step_scores in zip(problems, result.texts, result.info["step_scores"]):
    if step_scores and min(step_scores) == 1.0 and text.splitlines()[-1].startswith("####"):
      assert task.check_answer(problem, text), text


def test_budget_forcing_extends_the_plain_sample(sft_workdir):
  """n = 1 is one plain completion of each prompt; with n = 3 the first extension is that same
  completion cut at its answer line, followed by the wait string, once per counted wait; every
  solution ends with an answer (forced when the budget ran out)."""
  folder = f"{sft_workdir}/hf"
  tok = tokenizers.load(folder)
  cfg, params = models.load({"hf_path": folder}, jax.random.key(0))
  policy = StepPolicy(models.Model(cfg), params, tok, TASK, temperature=1.0, max_new_tokens=48,
                      batch_size=8)
  problems = TASK.generate(6, seed=1, split="test")
  search = methods.Search(policy, None, problems, jax.random.key(3), wait="Wait,")
  one, three = methods.budget_forcing(search, 1), methods.budget_forcing(search, 3)
  plain = methods.complete(policy, [policy.prompt_ids(p) for p in problems],
                           jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 5), 0))
  assert one.info["waits"] == [0] * 6
  for i, (text, generated) in enumerate(plain):
    if i not in one.info["forced"]:
      assert one.texts[i] == text and one.tokens[i] == generated
    waits = three.info["waits"][i]
    assert 0 <= waits <= 2 and three.texts[i].count("Wait,") == waits
    assert "####" in three.texts[i] and three.tokens[i] >= generated
    if "####" in text:  # the first extension is the plain sample, its answer cut off
      assert three.texts[i].startswith(text[:text.rfind("####")] + "Wait,")
  assert sum(three.info["waits"]) > 0


def test_simulations_to_solve_stops_a_tree_at_its_first_right_answer(sft_workdir):
  """The same search grown by hand: a tree is solved exactly when one of its terminal nodes'
  paths is graded right by the task, a solved tree stopped within the budget, an unsolved one
  used it up (or ran out of leaves), and the counts are those of that search."""
  folder = f"{sft_workdir}/hf"
  tok = tokenizers.load(folder)
  cfg, params = models.load({"hf_path": folder}, jax.random.key(0))
  task = tasks.get_task("arithmetic", min_steps=1, max_steps=2, max_operand=9, max_value=30,
                        ops="+-")  # as the policy was trained: some problems get solved
  policy = StepPolicy(models.Model(cfg), params, tok, task, temperature=1.0, max_step_tokens=16,
                      max_steps=4, batch_size=8)
  problems = task.generate(6, seed=4, split="test")
  mcts = {"num_children": 3, "simulations_per_round": 2, "evaluation": "rollout"}
  sims, solved = methods.simulations_to_solve(
      methods.Search(policy, None, problems, jax.random.key(2), mcts=mcts), 12)
  tree, env, stats = methods.grow_trees(
      methods.Search(policy, None, problems, jax.random.key(2), mcts=mcts), 12, stop_reward=1.0)
  np.testing.assert_array_equal(sims, stats["simulations"])
  used, terminal = np.asarray(tree.used), np.asarray(tree.terminal)
  for b, problem in enumerate(problems):
    right = [task.check_answer(problem, "\n".join(env.steps(b, node)))
             for node in np.flatnonzero(used[b] & terminal[b])]
    assert solved[b] == any(right)
    assert solved[b] or sims[b] >= 12 or stats["exhausted"][b]
  assert solved.any() and 0 < sims.min()
