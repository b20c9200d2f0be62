"""The search program's config checks and table (its runlocal run: tests/test_configs.py)."""

import pytest

from configs import search_arith
from reasonjax import programs
from reasonjax.programs import search


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
