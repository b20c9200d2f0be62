"""The stages programs are composed of: stored outputs, nested runs, the starting policy."""

import json
import os

import pytest

from configs import dpo_arith
from reasonjax.programs import stages


def test_json_file_makes_once_then_reads_the_stored_value(tmp_path):
  path = str(tmp_path / "out" / "value.json")
  calls = []

  def make():
    calls.append(1)
    return {"rows": (1, 2)}

  assert stages.json_file(path, make) == {"rows": [1, 2]}  # The stored form, on this run too.
  assert stages.json_file(path, make) == {"rows": [1, 2]}
  assert len(calls) == 1
  assert not os.path.exists(path + ".tmp")


def test_json_file_writes_nothing_when_its_stage_fails(tmp_path):
  path = str(tmp_path / "value.json")

  def fail():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    stages.json_file(path, fail)
  assert not os.path.exists(path)
  assert stages.json_file(path, lambda: [3]) == [3]


def test_check_settings_stores_then_refuses_changes(tmp_path):
  path = str(tmp_path / "settings.json")
  stages.check_settings(path, {"a": 1, "b": {"c": (1, 2)}})
  stages.check_settings(path, {"a": 1, "b": {"c": [1, 2]}})  # The stored form is the same.
  with pytest.raises(stages.SettingsChanged, match=r"a: 1 -> 2; b.c: \[1, 2\] -> \[3\]"):
    stages.check_settings(path, {"a": 2, "b": {"c": [3]}})


def test_nested_runs_a_program_until_its_export_exists(tmp_path):
  runs = []

  def program(config, workdir):
    runs.append((config, workdir))
    if len(runs) > 1:  # The first run is interrupted before its export.
      os.makedirs(os.path.join(workdir, "hf"))
      with open(os.path.join(workdir, "hf", "config.json"), "w") as f:
        json.dump({}, f)

  directory = str(tmp_path / "rm")
  assert stages.nested(program, "cfg", directory) == os.path.join(directory, "hf")
  assert not stages.done(directory)
  stages.nested(program, "cfg", directory)
  stages.nested(program, "cfg", directory)
  assert stages.done(directory) and runs == [("cfg", directory)] * 2


def test_policy_trains_the_nested_sft_once(tmp_path):
  config = dpo_arith.get_config("runlocal")
  config.sft.steps = 2
  config.sft.checkpoint_every = 2
  config.sft.eval.num_problems = 0
  path = stages.policy(config, str(tmp_path))
  assert path == os.path.join(tmp_path, "sft", "hf")
  weights = os.path.join(path, "model.safetensors")
  written = os.path.getmtime(weights)
  assert stages.policy(config, str(tmp_path)) == path  # Found, not trained again.
  assert os.path.getmtime(weights) == written


def test_policy_uses_init_from_and_checks_it(tmp_path):
  config = dpo_arith.get_config("runlocal")
  config.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="config.init_from=.*no config.json there"):
    stages.policy(config, str(tmp_path / "run"))
  (tmp_path / "config.json").write_text("{}")
  assert stages.policy(config, str(tmp_path / "run")) == str(tmp_path)


def test_a_post_training_config_without_a_policy_source_is_refused():
  config = dpo_arith.get_config("runlocal")
  with config.unlocked():
    del config["sft"]
  with pytest.raises(ValueError, match="config.init_from is empty and the config has no nested"):
    stages.check_policy_source(config)


def test_the_code_format_is_refused_by_programs_that_run_no_programs():
  from configs import grpo_arith
  from reasonjax import programs
  config = grpo_arith.get_config("runlocal")
  config.task.code = {"error_rate": 0.3}
  with pytest.raises(ValueError, match=r"config.task.code: the grpo program samples without "
                     r"running programs; the code format runs in \['dpo', 'expert_iteration'"):
    programs.check_config(config)
