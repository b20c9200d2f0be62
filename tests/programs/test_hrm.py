"""The HRM reproduction program: config checks, the claims' verdicts, and the runlocal run end to
end (every method, scorer and N in the table; a rerun skips every stage)."""

import json
import os

import numpy as np
import pytest

from configs import hrm_arith
from reasonjax import programs
from reasonjax.data import tasks
from reasonjax.programs import hrm, hrm_report, stages
from reasonjax.search import tree_data
from tests.conftest import run_main
from tests.search.test_tree_data import HNC_TREE, A, X, make_tree


@pytest.mark.parametrize("override,message", [
    ({"reward_models.names": ("prm", "xrm")}, r"reward_models.names has unknown reward"),
    ({"reward_models.names": ("prm",)}, r"reward_models=.*uses models that .* does not train"),
    ({"evaluation.aggregation": "max"}, r"unknown aggregation 'max'"),
    ({"evaluation.n_values": (0, 2)}, r"evaluation.n_values=.*positive integers"),
    ({"reward_models.label_kind": "hinge"}, r"label_kind='hinge'"),
    ({"kl_weights": (-1.0,)}, r"kl_weights=.*>= 0"),
])
def test_bad_fields_fail_with_the_field_named(override, message):
  config = hrm_arith.get_config("runlocal")
  for key, value in override.items():
    *path, last = key.split(".")
    node = config
    for k in path:
      node = node[k]
    node[last] = value
  with pytest.raises(ValueError, match=message):
    programs.check_config(config)


def test_the_nested_runs_are_checked_too():
  config = hrm_arith.get_config("runlocal")
  config.hacking.aggregation = "mean"
  with pytest.raises(ValueError, match=r"config.aggregation='mean'"):
    programs.check_config(config)
  config = hrm_arith.get_config("runlocal")
  config.self_training.optimizer.learning_rate = float("nan")
  with pytest.raises(ValueError, match="learning_rate"):
    programs.check_config(config)


def test_records_have_no_duplicates_and_hnc_adds_to_hrm():
  # Two identical siblings (the same step sampled twice) give identical records.
  twins = make_tree([(0, "a", X, False), (0, "a", X, False), (1, "#### 1", A, True),
                     (2, "#### 1", A, True)], problem=1)
  config = hrm_arith.get_config("runlocal")
  compressed = [tree_data.compress(t, np.random.default_rng(0), probability=1.0)[0]
                for t in (twins, HNC_TREE)]
  rows = hrm.records(config, [twins, HNC_TREE], compressed)
  for name, records in rows.items():
    keys = [json.dumps(r) for r in records]
    assert len(keys) == len(set(keys)), name
  hrm_keys = {json.dumps(r) for r in rows["hrm"]}
  hnc_keys = {json.dumps(r) for r in rows["hrm_hnc"]}
  assert hrm_keys < hnc_keys  # HNC's merged steps add records that the plain trees lack
  orm = [r for r in rows["orm"] if r[0] == 1]
  assert orm == [[1, ["a"], "#### 1", 1.0]]  # the twins' two leaves: one record


class _ByLength:
  """A scorer whose step scores are 1 / (number of steps): shorter paths score higher."""

  def __call__(self, problems, solutions):
    return [np.full(len(s), 1.0 / len(s)) for s in solutions]


def test_best_paths_prefer_answers_then_the_scorer():
  tree = make_tree([(0, "a", X, False), (0, "b", "depth", False), (1, "#### 1", A, True)])
  config = hrm_arith.get_config("runlocal")
  config.paths_per_problem = 1
  config.self_training_reward_models = ("hrm",)
  paths = hrm.best_paths(config, [tree], ["p"], {"hrm": (_ByLength(), "min")})
  # "b" alone scores 1.0 against 0.5, but ends in no answer.
  assert paths == {"hrm": [[0, "a\n#### 1"]]}
  config.paths_per_problem = 2
  paths = hrm.best_paths(config, [tree], ["p"], {"hrm": (_ByLength(), "min")})
  assert paths == {"hrm": [[0, "a\n#### 1"], [0, "b"]]}


class _Pool:
  """What `hrm.ranking` reads of a `SolutionPool`: the task, problems, texts and scores."""

  def __init__(self, task, problems, texts):
    self.policy = type("Policy", (), {"task": task})
    self.problems, self.texts = problems, texts

  def take(self, n):
    return [row[:n] for row in self.texts], None, 0.0

  def scores(self, scorer, n):
    return [scorer([p] * n, [[t] for t in row[:n]]) for p, row in
            zip(self.problems, self.texts)], 0.0


def test_ranking_against_a_pair_count():
  task = tasks.get_task("arithmetic", min_steps=2, max_steps=2, max_operand=9, max_value=30,
                        ops="+-")
  problems = task.generate(3, seed=0)
  texts, table = [], {}
  for i, p in enumerate(problems):
    steps = p.solution.splitlines()[:-1]
    right = "\n".join(steps + [f"#### {p.answer}"])
    wrong = "\n".join(steps + [f"#### {int(p.answer) + 1}"])
    texts.append([right, wrong, wrong, right])
    # Problem 0 ranks its right solutions first, problem 1 ties, problem 2 ranks its wrong
    # ones first.
    high, low = [0.9, 0.8, 0.6 - 0.1 * i], [0.9, 0.8, 0.4 + 0.1 * i]
    table[right], table[wrong] = np.array(high), np.array(low)

  def scorer(_, solutions):
    return [table["\n".join(s)] for s in solutions]

  # The solution's text as one "step": `ranking` splits it with solution_steps itself.
  [got] = hrm.ranking(_Pool(task, problems, texts), {"rm": (scorer, "last")}, 4)
  pairs = lambda pos, neg: np.mean([1.0 if a > b else 0.5 if a == b else 0.0
                                    for a in pos for b in neg])
  last = {i: (0.6 - 0.1 * i, 0.4 + 0.1 * i) for i in range(3)}  # (right, wrong) scores
  rights = [last[i][0] for i in range(3) for _ in range(2)]
  wrongs = [last[i][1] for i in range(3) for _ in range(2)]
  assert got["solution_auc"] == pytest.approx(pairs(rights, wrongs))
  assert got["within_auc"] == pytest.approx(np.mean([1.0, 0.5, 0.0]))
  assert got["problems_with_both"] == 3
  # Steps: every reasoning step is right (scores 0.9, 0.8); answer lines as the solutions.
  assert got["step_auc"] == pytest.approx(pairs([0.9, 0.8] * 12 + rights, wrongs))

  class AnswersOnly(type(task)):  # like GSM8K: final answers graded, steps not
    def check_steps(self, problem, steps):
      raise NotImplementedError

  [got] = hrm.ranking(_Pool(AnswersOnly(**task.__dict__), problems, texts),
                      {"prm": (scorer, "last")}, 4)
  assert got["step_auc"] is None
  assert got["within_auc"] == pytest.approx(np.mean([1.0, 0.5, 0.0]))
  table = hrm_report.ranking_table({"ranking": [got]})
  assert "| PRM |  | — | " in table


def test_the_diagnosis_names_chance_level_ranking():
  rows = [{"scorer": s, "seed": seed, "step_auc": 0.7, "solution_auc": 0.65,
           "within_auc": 0.45 + 0.01 * seed} for s in ("prm", "hrm") for seed in (0, 1, 2)]
  text = " ".join(hrm_report.diagnosis({"ranking": rows}))
  assert "no reward model orders the solutions much better than chance" in text
  assert "PRM 0.46" in text and "HRM 0.46" in text
  rows[0]["within_auc"] = rows[1]["within_auc"] = rows[2]["within_auc"] = 0.8
  assert "better than chance" not in " ".join(hrm_report.diagnosis({"ranking": rows}))
  assert hrm_report.diagnosis({}) == []


def _summary(accuracies: dict, seeds=(0, 1, 2)) -> dict:
  """A summary with best-of-N rows: accuracies[(scorer, n)] = one accuracy per seed."""
  rows = [{"method": "best_of_n", "scorer": scorer, "n": n, "seed": s, "accuracy": a}
          for (scorer, n), values in accuracies.items() for s, a in zip(seeds, values)]
  return {"evaluation": rows, "seeds": list(seeds)}


def test_claims_follow_the_stated_rule():
  # PRM peaks at N=4 and falls by 0.2 with spreads of 0.01: "falls off"; HRM is flat.
  acc = {("prm", 1): [0.5, 0.51, 0.49], ("prm", 4): [0.7, 0.71, 0.69],
         ("prm", 16): [0.5, 0.51, 0.49], ("hrm", 1): [0.5, 0.5, 0.5],
         ("hrm", 4): [0.6, 0.6, 0.6], ("hrm", 16): [0.6, 0.61, 0.59],
         ("hrm_hnc", 1): [0.5, 0.5, 0.5], ("hrm_hnc", 4): [0.6, 0.6, 0.6],
         ("hrm_hnc", 16): [0.4, 0.8, 0.6]}
  verdicts = {claim: verdict for claim, verdict, _ in hrm_report.claims(_summary(acc))}
  assert verdicts["PRM with best_of_n: accuracy as N grows"] == "falls off"
  assert verdicts["HRM with best_of_n: accuracy as N grows"] == "stable"
  # 0.6 vs 0.5 with spreads 0.01: holds. HNC: 0.6 vs 0.6 with a spread of 0.2: not resolved.
  assert verdicts["HRM beats PRM with best_of_n at N=16"] == "holds"
  assert verdicts["HNC data improves HRM with best_of_n at N=16"].startswith("not resolved")
  acc[("hrm", 16)] = [0.3, 0.31, 0.29]
  verdicts = {c: v for c, v, _ in hrm_report.claims(_summary(acc))}
  assert verdicts["HRM beats PRM with best_of_n at N=16"] == "does not hold"
  assert verdicts["HRM with best_of_n: accuracy as N grows"] == "falls off"
  acc[("hrm", 1)] = acc[("hrm", 4)] = acc[("hrm", 16)] = [0.0, 0.0, 0.0]
  verdicts = {c: v for c, v, _ in hrm_report.claims(_summary(acc))}
  assert verdicts["HRM with best_of_n: accuracy as N grows"].startswith("not tested")
  one = {k: v[:1] for k, v in acc.items()}
  assert all(v.endswith("(one seed)") for _, v, _ in hrm_report.claims(_summary(one, (0,))))


@pytest.mark.slow
def test_hrm_arith_runlocal_writes_every_table_and_resumes(sft_workdir, tmp_path):
  page = os.path.join(tmp_path, "page", "hrm.md")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  flags = (f"--config.init_from={sft_workdir}/hf",)
  out = run_main("--config=configs/hrm_arith.py:runlocal", *flags,
                 f"--config.results_page={page}", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  config = hrm_arith.get_config("runlocal")
  e = config.evaluation
  with open(os.path.join(tmp_path, "hrm.json")) as f:
    summary = json.load(f)
  got = {(r["method"], r["scorer"], r["n"], r["seed"]) for r in summary["evaluation"]}
  scorers = ("oracle", *config.reward_models.names)
  want = {("majority_vote", "none", n, s) for n in e.n_values for s in e.seeds}
  want |= {("best_of_n", sc, n, s) for sc in scorers for n in e.n_values for s in e.seeds}
  want |= {("step_greedy", sc, n, s) for sc in scorers for n in e.step_greedy_n_values
           for s in e.seeds}
  assert got == want
  assert all(0 <= r["accuracy"] <= 1 for r in summary["evaluation"])
  # Best-of-N with the oracle over nested pools never gets worse with N.
  for s in e.seeds:
    oracle = [r["accuracy"] for r in sorted(summary["evaluation"], key=lambda r: r["n"])
              if (r["method"], r["scorer"], r["seed"]) == ("best_of_n", "oracle", s)]
    assert oracle == sorted(oracle)
  assert {(r["scorer"], r["seed"]) for r in summary["ranking"]} == {
      (sc, s) for sc in scorers for s in e.seeds}
  for r in summary["ranking"]:
    assert r["scorer"] != "oracle" or r["step_auc"] == 1.0 or np.isnan(r["step_auc"])
    assert all(0 <= r[k] <= 1 for k in ("step_auc", "solution_auc") if not np.isnan(r[k]))
  assert set(summary["reward_models"]) == set(config.reward_models.names)
  assert set(summary["first_error"]["models"]) == set(config.first_error.reward_models)
  assert set(summary["hacking"]) == set(config.hacking_reward_models)
  for hack in summary["hacking"].values():
    assert len(hack["curve"]) == config.hacking.steps
    assert all(0 <= p["reward"] <= 1 and 0 <= p["true_accuracy"] <= 1 for p in hack["curve"])
  assert {(r["reward_model"], r["kl_weight"]) for r in summary["self_training"].values()} == {
      (m, w) for m in config.self_training_reward_models for w in config.kl_weights}
  with open(os.path.join(tmp_path, "paths.json")) as f:
    paths = json.load(f)
  task = tasks.get_task(config.task.name, **config.task.knobs)
  problems = task.generate(config.trees.num_problems, seed=config.seed + 1000, split="train")
  for row in summary["self_training"].values():
    right = [task.check_answer(problems[p], text) for p, text in paths[row["reward_model"]]]
    assert row["paths_correct"] == pytest.approx(np.mean(right))
  assert summary["hnc"]["nodes"] == summary["trees"]["nodes"]
  with open(page) as f:
    text = f.read()
  assert "--config=configs/hrm_arith.py:runlocal" in text and "| HRM+HNC |" in text
  assert "## How each scorer ranks the held-out solutions" in text
  assert os.path.isfile(page[:-3] + ".json") and os.path.getsize(page[:-3] + ".png") > 1000
  # A rerun finds every stage done: nothing is trained or grown again.
  stamps = {p: os.path.getmtime(os.path.join(tmp_path, p))
            for p in ("trees.jsonl", "rm_hrm/hf/model.safetensors", "evaluation_seed0.json")}
  out = run_main("--config=configs/hrm_arith.py:runlocal", *flags, workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert stamps == {p: os.path.getmtime(os.path.join(tmp_path, p)) for p in stamps}
  with open(os.path.join(tmp_path, "hrm.json")) as f:
    assert json.load(f)["evaluation"] == summary["evaluation"]
  # Other settings are refused, not mixed with these stages.
  out = run_main("--config=configs/hrm_arith.py:runlocal", *flags,
                 "--config.trees.num_children=2", workdir=tmp_path, env=env)
  assert out.returncode != 0 and "trees.num_children: 4 -> 2" in out.stderr
  assert "error: SettingsChanged" in out.stderr and "Traceback" not in out.stderr


def test_the_countdown_variant_is_countdown_throughout():
  config = hrm_arith.get_config("countdown")
  programs.check_config(config)
  assert config.task.name == config.sft.task.name == "countdown"
  # Nested runs take the task from the top level.
  for name in ("hacking", "self_training"):
    assert stages.nested_config(config, name, "/policy").task.name == "countdown"
