"""The search program's config checks and table (its runlocal run: tests/test_configs.py), and
the Self-PRM and budget-forcing recipes run end to end."""

import json
import os

import pytest

from configs import search_arith
from reasonjax import programs
from reasonjax.programs import search
from tests.conftest import run_main


def _config(**changes):
  config = search_arith.get_config("runlocal")
  config.init_from = ""  # The nested SFT run is the policy source.
  for dotted, value in changes.items():
    *parents, key = dotted.split(".")
    section = config
    for p in parents:
      section = section[p]
    section[key] = value
  return config


@pytest.mark.parametrize("changes, message", [
    ({"search.methods": ("best_of_n", "tree_of_thought")}, "valid methods: .*step_greedy"),
    ({"search.aggregation": "median"}, "unknown aggregation 'median'"),
    ({"search.n_values": (1, 0)}, "n_values=.*positive integers"),
    ({"search.num_problems": 0}, "num_problems=0"),
    ({"reward_model.path": "/nonexistent"}, "reward_model.path='/nonexistent': no config.json"),
    ({"reward_model.granularity": "step"}, "granularity='step'"),
    ({"search.mcts.evaluation": "oracle"}, "evaluation='oracle'"),
    ({"reward_model.reference": "/nonexistent"}, "reference='/nonexistent': no config.json"),
])
def test_bad_fields_are_named_before_any_work(changes, message):
  with pytest.raises(ValueError, match=message):
    programs.check_config(_config(**changes))


def test_the_default_configs_pass():
  programs.check_config(_config())
  config = search_arith.get_config()
  config.init_from = ""
  programs.check_config(config)


def test_table_has_a_row_per_method_and_a_column_per_n():
  rows = [{"method": m, "n": n, "accuracy": a, "tokens_per_problem": 10.0 * n, "seconds": 1.0}
          for m, a in (("best_of_n", 0.5), ("beam", 0.25)) for n in (1, 4)]
  lines = search.table(rows, "oracle").splitlines()
  assert lines[2] == "| method | N=1 | N=4 |"
  assert lines[4] == "| best_of_n | 0.500 (10, 1.0s) | 0.500 (40, 1.0s) |"
  assert lines[5].startswith("| beam | 0.250 (10, ")


@pytest.mark.parametrize("name", ["self_prm_arith", "budget_forcing_arith"])
def test_recipe_runlocal_fills_its_table(name, sft_workdir, tmp_path):
  """From the shared SFT start, one search over 8 problems: Self-PRM judged by the policy's own
  confidence, budget forcing against majority vote; every (method, N) row in range."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main(f"--config=configs/{name}.py:runlocal", f"--config.init_from={sft_workdir}/hf",
                 "--config.search.num_problems=8", "--config.search.n_values=(1, 2)",
                 workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "search.json") as f:
    results = json.load(f)
  methods = {"self_prm_arith": ["majority_vote", "best_of_n", "weighted_vote", "step_greedy"],
             "budget_forcing_arith": ["majority_vote", "budget_forcing"]}[name]
  assert [(r["method"], r["n"]) for r in results["rows"]] == [(m, n) for m in methods
                                                               for n in (1, 2)]
  assert all(0 <= r["accuracy"] <= 1 and r["tokens_per_problem"] > 0 for r in results["rows"])
  if name == "self_prm_arith":
    assert results["scorer"].startswith("implicit PRM of ") and "own confidence" in \
        results["scorer"]
  else:  # a forced extension generates more than the plain sample
    rows = {r["n"]: r for r in results["rows"] if r["method"] == "budget_forcing"}
    assert rows[2]["tokens_per_problem"] > rows[1]["tokens_per_problem"]
