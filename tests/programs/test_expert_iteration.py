"""Expert iteration (ReST-EM, STaR): config checks, and the runlocal runs end to end."""

import collections
import json
import os

import pytest

from configs import rest_em_arith, star_arith
from reasonjax.data import tasks
from reasonjax.programs import expert_iteration
from tests.conftest import run_main


@pytest.mark.parametrize("field, value, message", [
    ("rounds", 0, "rounds=0: expected >= 1"),
    ("restart", "scratch", "restart='scratch'; expected one of"),
    ("max_per_problem", -1, "max_per_problem and steps_growth must be >= 0"),
    ("hint", " (answer)", "has no {answer}"),
])
def test_bad_fields_fail_with_the_field_named(field, value, message, tmp_path):
  config = star_arith.get_config("runlocal")
  config.init_from = str(tmp_path)  # checked first: a folder with a config.json
  (tmp_path / "config.json").write_text("{}")
  config.expert_iteration[field] = value
  with pytest.raises(ValueError) as error:
    expert_iteration.check_config(config)
  assert "config.expert_iteration." in str(error.value) and message in str(error.value)


def test_the_hint_gives_the_answer_in_the_prompt():
  task = tasks.get_task("arithmetic")
  problem = task.generate(1, seed=3)[0]
  prompt = task.prompt(expert_iteration.hinted(problem, " (The answer is {answer}.)"))
  assert prompt == task.prompt(problem).rstrip("\n") + f" (The answer is {problem.answer}.)\n"


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
  assert "| round | solved (train) |" in out.stdout
  # A rerun finds every stage done (no training step logged again) and reports the same.
  logs = [os.path.join(tmp_path, f"round_{i}", "metrics.jsonl") for i in range(e.rounds)]
  before = [open(p).read() if os.path.exists(p) else None for p in logs]
  again = run_main(*flags, workdir=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f) == results
  assert [open(p).read() if os.path.exists(p) else None for p in logs] == before
