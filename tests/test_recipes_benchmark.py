"""benchmarks/recipes.py: every method's config under the shared budget, and the page's
verdicts and spreads against a direct computation."""

import json
import statistics
import types

import pytest

from benchmarks import recipes
from reasonjax import programs


@pytest.mark.parametrize("task", recipes.TASKS)
@pytest.mark.parametrize("name", list(recipes.METHODS))
def test_every_method_runs_the_start_task_with_the_step_budget(name, task, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({}))
  args = types.SimpleNamespace(steps=24, rounds=2, problems=128, eval_problems=64)
  config = recipes.method_config(name, task, str(tmp_path), 5, args)
  programs.check_config(config)
  start = recipes.start_config(task)
  mine = config.task.to_dict()
  formats = {k: mine.pop(k) for k in recipes.FORMATS if k in mine}
  assert mine | {"num_train": 0} == start.task.to_dict() | {"num_train": 0}
  assert config.seed == 5
  # A recipe with a format of its own fine-tunes the start on it first, for half the budget.
  format_steps = 0
  if formats:
    assert config.init_from == "" and config.sft.init_from == str(tmp_path)
    assert config.sft.task.to_dict() | {"num_train": 0} == config.task.to_dict() | {
        "num_train": 0} and config.sft.seed == 5
    assert config.sft.task.num_train == 12 * config.sft.batch_size  # fresh seeds each step
    format_steps = config.sft.steps
    assert format_steps == 12
  else:
    assert config.init_from == str(tmp_path)
  kind = recipes.METHODS[name][2]
  if kind == "expert":
    e = config.expert_iteration
    total = sum(round(config.train.steps * (1 + e.steps_growth) ** i) for i in range(e.rounds))
    assert abs(format_steps + total - 24) <= e.rounds and config.train.eval.num_problems == 64
  else:
    assert format_steps + config.steps == 24 and config.eval.num_problems == 64


def test_page_marks_a_recipe_that_beats_both_baselines_in_every_seed():
  rows = []
  accuracy = {"SFT on more data": [0.5, 0.4, 0.6], "GRPO": [0.55, 0.5, 0.5],
              "A": [0.6, 0.55, 0.65], "B": [0.6, 0.45, 0.7], "C": [0.1, 0.2, 0.3]}
  for name, values in accuracy.items():
    for seed, value in enumerate(values):
      rows.append({"task": "arithmetic", "seed": seed, "method": name, "accuracy": value,
                   "start_accuracy": 0.3, "steps": 24,
                   "generated_tokens": 100 * (seed + 1) * (name != "SFT on more data")})
  rows.append({"task": "arithmetic", "seed": 0, "method": "D",
               "error": "no preference pairs: all wrong"})
  text = recipes.page({"rows": rows, "seeds": [0, 1, 2], "steps": 24, "eval_problems": 64},
                      "python benchmarks/recipes.py")
  lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
  assert lines["A"].endswith("| yes |") and lines["B"].endswith("| no |")  # B loses seed 1
  mean, std = statistics.fmean(accuracy["B"]), statistics.stdev(accuracy["B"])
  assert f"| {mean:.3f} ± {std:.3f} | 24 ± 0 | 200 | 1.00 |" in lines["B"]
  assert lines["GRPO"].endswith("| (baseline) |")
  assert "Beat every baseline in every seed: A." in text
  assert "Below the SFT start on average: C." in text  # the start: 0.3; C's mean 0.2
  assert lines["D"] == "| D | did not train (1 of 1 seeds): no preference pairs | | | | | no |"


def test_page_without_a_baseline_run_gives_no_verdict():
  rows = [{"task": "arithmetic", "seed": 0, "method": "A", "accuracy": 0.5,
           "start_accuracy": None, "steps": 24, "generated_tokens": 10}]
  text = recipes.page({"rows": rows, "seeds": [0], "steps": 24, "eval_problems": 64}, "cmd")
  assert "| A | 0.500 | 24 | 10 |  |  | (no baseline run) |" in text
  assert "No recipe beats every baseline in every seed" in text


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.3, 1.5, 2.0, 2.9, 3.0, 5.5, 6.0, 23.0, 45.0, 500.0])
def test_matched_multiple_is_the_nearest_power_of_two_in_log(ratio):
  import math
  # Brute force: among 1, 2, ..., MATCH_MAX the k nearest the ratio in log (ties: the larger).
  ks = [2 ** i for i in range(int(math.log2(recipes.MATCH_MAX)) + 1)]
  want = min(ks, key=lambda k: (abs(math.log(k) - math.log(ratio)), -k)) if ratio > 1 else 1
  assert recipes.matched_multiple(ratio * 1000, 1000) == want


def test_matched_grpo_is_grpo_with_k_times_the_samples(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({}))
  args = types.SimpleNamespace(steps=24, rounds=2, problems=128, eval_problems=64)
  plain = recipes.method_config("GRPO", "arithmetic", str(tmp_path), 1, args)
  matched = recipes.matched_config(8, "arithmetic", str(tmp_path), 1, args)
  programs.check_config(matched)
  assert matched.rollouts.num_samples == 8 * plain.rollouts.num_samples
  matched.rollouts.num_samples = plain.rollouts.num_samples
  assert matched.to_dict() == plain.to_dict()


def test_page_compares_a_recipe_with_grpo_at_its_tokens():
  """A beats SFT and GRPO in every seed but not its 4x-samples GRPO in seed 1: no."""
  rows = []
  for seed in (0, 1):
    for name, accuracy, tokens in (("SFT on more data", 0.4, 0), ("GRPO", 0.5, 100),
                                   ("A", 0.6, 400), ("GRPO, 4x samples", 0.55 + 0.1 * seed,
                                                     420)):
      rows.append({"task": "arithmetic", "seed": seed, "method": name, "accuracy": accuracy,
                   "start_accuracy": 0.3, "steps": 24, "generated_tokens": tokens}
                  | ({"matched": 4} if name == "A" else {}))
  text = recipes.page({"rows": rows, "seeds": [0, 1], "steps": 24, "eval_problems": 64}, "cmd")
  lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
  assert lines["A"] == "| A | 0.600 ± 0.000 | 24 ± 0 | 400 | 4.00 | 0.600 ± 0.071 (4x) | no |"
  assert lines["GRPO, 4x samples"].endswith("| (baseline) |")
  rows = [r for r in rows if not (r["method"] == "GRPO, 4x samples" and r["seed"] == 1)]
  text = recipes.page({"rows": rows, "seeds": [0, 1], "steps": 24, "eval_problems": 64}, "cmd")
  assert "| A | 0.600 ± 0.000 | 24 ± 0 | 400 | 4.00 |  | (no baseline run) |" in text


def test_page_test_time_and_games_sections():
  test_time = [{"task": "arithmetic", "seed": s, "method": m, "n": n, "accuracy": a,
                "tokens_per_problem": t}
               for s in (0, 1) for m, n, a, t in (("GRPO policy, greedy", 1, 0.5, None),
                                                  ("Majority vote", 8, 0.6 + 0.1 * s, 240),
                                                  ("Budget forcing", 8, 0.4, 100 + 20 * s))]
  outcome = lambda win: {f"{g}_{o}": v for g in ("tictactoe", "kuhn_poker")  # noqa: E731
                         for o, v in (("win", win), ("draw", 0.0), ("loss", 1 - win),
                                      ("invalid", 1 - win))}
  games = [{"seed": 0, "steps": 4, "start": outcome(0.0), "final": outcome(0.25)},
           {"seed": 1, "error": "no turns: every episode ended at once"}]
  text = recipes.page({"rows": [], "seeds": [0, 1], "steps": 4, "eval_problems": 8,
                       "test_time": test_time, "test_time_n": 8, "games": games}, "cmd")
  assert "| Majority vote | 8 | 0.650 ± 0.071 | 240 ± 0 |" in text
  assert "| Budget forcing | 8 | 0.400 ± 0.000 | 110 ± 14 |" in text
  assert "| GRPO policy, greedy | 1 | 0.500 ± 0.000 |  |" in text
  assert "| tictactoe | after self-play | 0.25 | 0.00 | 0.75 | 0.75 |" in text
  assert "Did not train (1 of 2 seeds): no turns" in text
  assert "test the pipeline" not in text  # only said when nearly every game is invalid
  games[0]["final"] = outcome(0.0)
  text = recipes.page({"rows": [], "seeds": [0], "steps": 4, "eval_problems": 8,
                       "games": games}, "cmd")
  assert "100% of the policy's games end in an invalid reply" in text


def test_test_time_and_games_configs(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({}))
  args = types.SimpleNamespace(steps=24, eval_problems=64, test_time_n=8)
  policy = tmp_path / "policy"
  policy.mkdir()
  (policy / "config.json").write_text(json.dumps({}))
  for name, methods in (("self_prm", ("majority_vote", "best_of_n")),
                        ("budget_forcing", ("budget_forcing",))):
    config = recipes.test_time_config(name, "countdown", str(policy), str(tmp_path), 3, args)
    programs.check_config(config)
    assert tuple(config.search.methods) == methods and tuple(config.search.n_values) == (8,)
    assert config.init_from == str(policy) and config.seed == 3
    assert config.search.num_problems == 64
    assert config.task.to_dict() == recipes.start_config("countdown").task.to_dict()
    assert config.reward_model.reference == (str(tmp_path) if name == "self_prm" else "")
  args.game_episodes = 5
  config = recipes.games_config(str(tmp_path), 2, args)
  programs.check_config(config)
  assert (config.init_from, config.seed, config.steps, config.eval.episodes) == (
      str(tmp_path), 2, 24, 5)
