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
  assert "Beat both baselines in every seed: A." in text
  assert "Below the SFT start on average: C." in text  # the start: 0.3; C's mean 0.2
  assert lines["D"] == "| D | did not train (1 of 1 seeds): no preference pairs | | | | no |"


def test_page_without_a_baseline_run_gives_no_verdict():
  rows = [{"task": "arithmetic", "seed": 0, "method": "A", "accuracy": 0.5,
           "start_accuracy": None, "steps": 24, "generated_tokens": 10}]
  text = recipes.page({"rows": rows, "seeds": [0], "steps": 24, "eval_problems": 64}, "cmd")
  assert "| A | 0.500 | 24 | 10 |  | (no baseline run) |" in text
  assert "No recipe beats both baselines in every seed" in text
