"""Expert iteration (ReST-EM, STaR, B-STaR, CoSC): config checks, the selection and B-STaR's balance
score and monitoring against brute force, and the runlocal runs end to end."""

import collections
import json
import os
import re

import jax
import numpy as np
import pytest

from configs import b_star_arith, cosc_arith, rest_em_arith, star_arith
from reasonjax import models, sampling
from reasonjax.data import tasks, tokenizers
from reasonjax.programs import expert_iteration
from reasonjax.rewards import reward_model, sandbox
from tests.conftest import random_params, run_main


@pytest.mark.parametrize("field, value, message", [
    ("rounds", 0, "rounds=0: expected >= 1"),
    ("restart", "scratch", "restart='scratch'; expected one of"),
    ("max_per_problem", -1, "max_per_problem and steps_growth must be >= 0"),
    ("hint", " (answer)", "has no {answer}"),
    ("verified_only", False, "verified_only=False selects by a reward model alone"),
    ("balance.temperatures", (0.7, 0.0), "balance.temperatures=(0.7, 0.0): expected positive"),
    ("balance.target", 0, "balance.target and probe_problems must be >= 1"),
])
def test_bad_fields_fail_with_the_field_named(field, value, message, tmp_path):
  config = star_arith.get_config("runlocal")
  config.init_from = str(tmp_path)  # checked first: a folder with a config.json
  (tmp_path / "config.json").write_text("{}")
  *parents, key = field.split(".")
  section = config.expert_iteration
  for name in parents:
    section = section[name]
  section[key] = value
  with pytest.raises(ValueError) as error:
    expert_iteration.check_config(config)
  assert "config.expert_iteration." in str(error.value) and message in str(error.value)


def test_the_hint_gives_the_answer_in_the_prompt():
  task = tasks.get_task("arithmetic")
  problem = task.generate(1, seed=3)[0]
  prompt = task.prompt(problem.hinted(" (The answer is {answer}.)"))
  assert prompt == task.prompt(problem).rstrip("\n") + f" (The answer is {problem.answer}.)\n"


def _brute_balance(right, texts, selected, target):
  """The balance score of each problem with sets, one sample at a time."""
  out = []
  for r, t, s in zip(right, texts, selected):
    chosen = [j for j in range(len(t)) if s[j]]
    distinct = len({t[j] for j in chosen if r[j]})
    out.append(0.0 if not chosen else min(distinct / target, 1.0) * distinct / len(chosen))
  return np.asarray(out)


@pytest.mark.parametrize("seed", range(5))
def test_selection_balance_and_monitoring_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  n, k, target = 7, 6, 3
  texts = [[f"s{v}" for v in rng.integers(0, 4, k)] for _ in range(n)]
  right = np.asarray([[int(t[1:]) % 2 == 0 for t in row] for row in texts])  # same text, same
  rewards = np.asarray([[int(t[1:]) / 4 for t in row] for row in texts])  # grade and reward
  first = expert_iteration.first_occurrences(texts)
  assert [[texts[i].index(t) == j for j, t in enumerate(texts[i])] for i in range(n)] == \
      first.tolist()
  for threshold, verified in [(0.5, True), (0.5, False), (0.0, False), (1.0, True)]:
    selected = expert_iteration.select(right, rewards, threshold, verified)
    expected = [[rewards[i, j] >= threshold and (right[i, j] or not verified)
                 for j in range(k)] for i in range(n)]
    assert selected.tolist() == expected
    got = expert_iteration.balance_scores(right, first, selected, target)
    np.testing.assert_allclose(got, _brute_balance(right, texts, selected, target), rtol=1e-12)
    stats = expert_iteration.monitor(right, first, selected, rewards)
    assert stats["pass_at_k"] == np.mean([any(r) for r in right])
    assert stats["distinct_right"] == np.mean(
        [len({t for t, ok in zip(row, r) if ok}) for row, r in zip(texts, right)])
    picked = [(i, j) for i in range(n) for j in range(k) if expected[i][j]]
    assert stats["selected_precision"] == (
        sum(right[i, j] for i, j in picked) / len(picked) if picked else 0.0)
    assert stats["reward_best_of_k"] == np.mean(
        [right[i, int(np.argmax(rewards[i]))] for i in range(n)])


def test_balance_prefers_enough_distinct_right_and_a_clean_selection():
  """Target 2: two distinct right in four selected scores 1 * 2/4, whether the other two are
  repeats or wrong; one right repeated four times scores 1/2 * 1/4."""
  right = np.asarray([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
  texts = [["a", "b", "a", "b"], ["a", "a", "a", "a"], ["a", "b", "c", "d"]]
  first = expert_iteration.first_occurrences(texts)
  scores = expert_iteration.balance_scores(right, first, np.ones_like(right), 2)
  np.testing.assert_allclose(scores, [0.5, 0.5 * 0.25, 0.5])
  assert "reward_best_of_k" not in expert_iteration.monitor(right, first, right, None)


def _check_round(directory, problems, task, *, cap: int, rationalize: bool, samples: int):
  """A round's samples.json against the task's own grading of its solutions."""
  with open(os.path.join(directory, "samples.json")) as f:
    data = json.load(f)
  kept = data["kept"]
  assert all(task.check_answer(problems[i], text) for i, text, _ in kept)
  assert len({(i, text) for i, text, _ in kept}) == len(kept)  # distinct
  plain = collections.Counter(i for i, _, hint in kept if not hint)
  hinted = collections.Counter(i for i, _, hint in kept if hint)
  assert max(list(plain.values()) + list(hinted.values()) + [0]) <= cap
  assert data["solved"] == len(plain) and data["rationalised"] == len(hinted)
  assert not set(plain) & set(hinted) and (rationalize or not hinted)
  unsolved = len(problems) - len(plain)
  assert data["samples"] == (len(problems) + (unsolved if rationalize else 0)) * samples
  return data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rest_em_arith", "star_arith"])
def test_runlocal_rounds_keep_only_verified_solutions_and_resume(name, sft_workdir, tmp_path):
  module = {"rest_em_arith": rest_em_arith, "star_arith": star_arith}[name]
  config = module.get_config("runlocal")
  flags = [f"--config=configs/{name}.py:runlocal", f"--config.init_from={sft_workdir}/hf"]
  out = run_main(*flags, workdir=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  task = tasks.get_task(config.task.name, **config.task.knobs)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  e = config.expert_iteration
  assert [r["round"] for r in results["rounds"]] == list(range(e.rounds))
  for r in results["rounds"]:
    directory = os.path.join(tmp_path, f"round_{r['round']}")
    data = _check_round(directory, problems, task, cap=e.max_per_problem,
                        rationalize=e.rationalize, samples=config.rollouts.num_samples)
    assert r["kept"] == len(data["kept"])
    assert r["train_steps"] == round(config.train.steps * (1 + e.steps_growth) ** r["round"])
    # Each round fine-tunes the starting policy (restart="base") for its steps.
    assert r["started_from"] == f"{sft_workdir}/hf"
    if data["kept"]:
      with open(os.path.join(directory, "metrics.jsonl")) as f:
        assert max(json.loads(line)["step"] for line in f) == r["train_steps"]
      assert 0.0 <= r["evaluation"]["accuracy"] <= 1.0
    # Without B-STaR: the configured temperature, the right samples (pass@k counts them).
    assert (r["temperature"], r["threshold"], r["probe"]) == (config.rollouts.temperature, 1.0, [])
    assert r["solved"] == round(r["pass_at_k"] * len(problems))
  assert "| round | temperature | threshold | solved (train) |" in out.stdout
  # A rerun finds every stage done (no training step logged again) and reports the same.
  logs = [os.path.join(tmp_path, f"round_{i}", "metrics.jsonl") for i in range(e.rounds)]
  before = [open(p).read() if os.path.exists(p) else None for p in logs]
  again = run_main(*flags, workdir=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f) == results
  assert [open(p).read() if os.path.exists(p) else None for p in logs] == before


@pytest.mark.slow
def test_b_star_runlocal_picks_the_best_balanced_setting_each_round(sft_workdir, tmp_path):
  """B-STaR from the SFT policy, selecting by a random reward model's score on top of the
  answer check: each round's temperature and threshold are the first best of its probe grid,
  its kept solutions are right, distinct and scored at least the threshold, and its
  monitoring is in range."""
  policy = f"{sft_workdir}/hf"
  cfg = models.read_config(policy).replace(lm_head=False, score_head=True)
  models.save_hf(cfg, random_params(cfg, 1), str(tmp_path / "rm"))
  config = b_star_arith.get_config("runlocal")
  out = run_main("--config=configs/b_star_arith.py:runlocal", f"--config.init_from={policy}",
                 f"--config.reward_model.path={tmp_path}/rm",
                 "--config.reward_model.granularity=orm",
                 "--config.expert_iteration.balance.thresholds=(0.0, 0.5)",
                 workdir=tmp_path / "run")
  assert out.returncode == 0, out.stderr[-3000:]
  task = tasks.get_task(config.task.name, **config.task.knobs)
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  rm = reward_model.RewardModelReward.load(str(tmp_path / "rm"), task,
                                           tokenizers.load(config.tokenizer), None,
                                           granularity="orm")
  with open(tmp_path / "run" / "results.json") as f:
    results = json.load(f)
  e = config.expert_iteration
  for r in results["rounds"]:
    grid = [(p["temperature"], p["threshold"]) for p in r["probe"]]
    assert grid == [(t, tau) for t in e.balance.temperatures for tau in (0.0, 0.5)]
    best = max(r["probe"], key=lambda p: p["balance"])
    assert (r["temperature"], r["threshold"]) == (best["temperature"], best["threshold"])
    assert all(0.0 <= p["balance"] <= 1.0 for p in r["probe"])
    data = _check_round(tmp_path / "run" / f"round_{r['round']}", problems, task,
                        cap=e.max_per_problem, rationalize=False,
                        samples=config.rollouts.num_samples)
    if data["kept"]:
      scores = rm.scores([problems[i] for i, _, _ in data["kept"]],
                         [text for _, text, _ in data["kept"]])
      assert scores.min() >= r["threshold"] - 1e-5
    for key in ("pass_at_k", "selected_precision", "reward_best_of_k"):
      assert 0.0 <= r[key] <= 1.0
    assert r["selected_precision"] == (1.0 if data["kept"] else 0.0)  # verified_only
    assert r["distinct_right"] * len(problems) + 1e-9 >= r["kept"]
  # Each round continues from the last policy (the start's when a round kept nothing).
  first = results["rounds"][0]
  assert results["rounds"][1]["started_from"] == (
      str(tmp_path / "run" / "round_0" / "hf") if first["kept"] else policy)
  assert "| round | temperature | threshold |" in out.stdout


@pytest.mark.slow
def test_cosc_runlocal_runs_the_policys_programs_and_keeps_verified_traces(sft_workdir,
                                                                            tmp_path):
  """CoSC from the SFT policy: stage 1 fine-tunes it on the seed traces, stage 2 samples it
  with the tool. The stage-1 policy's greedy traces show, after each program, what the sandbox
  prints for it (the programs were run, not imagined); kept traces are right by the base task's
  answer check and show real outputs too."""
  config = cosc_arith.get_config("runlocal")
  out = run_main("--config=configs/cosc_arith.py:runlocal",
                 f"--config.sft.init_from={sft_workdir}/hf", workdir=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  base = tasks.get_task(config.task.name, **config.task.knobs)
  problems = base.generate(config.task.num_train, seed=config.seed, split="train")
  with open(tmp_path / "results.json") as f:
    (row,) = json.load(f)["rounds"]
  with open(tmp_path / "round_0" / "samples.json") as f:
    data = json.load(f)
  assert row["programs_per_sample"] > 0  # stage 2's samples called the tool
  assert row["started_from"] == str(tmp_path / "sft" / "hf")  # restart="continue"
  calls = re.compile(r"<code>\n(.*?)</code>\n<output>\n(.*?)\n</output>\n", re.S)

  def check_outputs(text):
    for program, output in calls.findall(text):
      result = sandbox.run_python(program, 5.0, 256)
      printed = result.stdout.strip() if result.ok else result.stderr.strip().splitlines()[-1]
      assert printed == output[:config.task.code.max_output_chars]

  for i, text, _ in data["kept"]:
    assert tasks.parse_answer(text) == problems[i].answer
    check_outputs(text)
  policy = str(tmp_path / "sft" / "hf")
  task = tasks.with_code(base, **config.task.code)
  tok = tokenizers.load(policy)
  cfg, params = models.load({"hf_path": policy}, jax.random.key(0))
  greedy = sampling.generate_texts(
      models.Model(cfg), params, tok, [task.prompt(p) for p in problems[:8]], jax.random.key(0),
      sampling.sampling_config({"max_new_tokens": 96, "temperature": 0.0, "top_p": 1.0,
                                "num_samples": 1}, tok), tool=task.tool)
  assert sum(task.tool.calls(t[0]) for t in greedy) >= 4
  for (text,) in greedy:
    check_outputs(text)
