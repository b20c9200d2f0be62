"""The command line: `python -m reasonjax.main --config=... --workdir=...`."""

import json
import os

import pytest

from tests.conftest import REPO, run_main

CONFIG = os.path.join(REPO, "configs", "model_report.py")


def test_runlocal_runs_end_to_end(tmp_path):
  cache = tmp_path / "xla_cache"  # JAX's own variable is the default of --compilation_cache.
  out = run_main(f"--config={CONFIG}:runlocal", "--config.model.dtype=bfloat16",
                 workdir=tmp_path, env=os.environ | {"JAX_COMPILATION_CACHE_DIR": str(cache)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "model report (tiny" in out.stdout
  assert any(name.endswith("-cache") for name in os.listdir(cache))  # Compiled programs kept.
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["dtype"] == "bfloat16"
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["params"] > 0


@pytest.mark.parametrize("override, message", [
    ("--config.model.presett=tiny", "config.model has no key 'presett'; valid keys: ['attention_impl'"),
    ("--config.model.dtype=float16", "model.dtype='float16' is not valid; expected one of"),
    ("--config.trainer=ppo", "config.trainer='ppo' is unknown; valid programs: ['distill', 'dpo', "),
    ("--config.mesh.data=3", "mesh data=3 x fsdp=1 x tensor=1 = 3 devices"),
    ("--config.model.preset=gpt5", "unknown model preset 'gpt5'; valid presets"),
])
def test_bad_config_fails_at_start_with_valid_names(tmp_path, override, message):
  out = run_main(f"--config={CONFIG}:runlocal", override, workdir=tmp_path)
  assert out.returncode != 0
  assert message in out.stderr
  if "trainer" in override:  # Every program is named, in order; a list that grows stays valid.
    assert "'grpo', 'hrm', 'model_report'" in out.stderr and "'sft']" in out.stderr
  assert not (tmp_path / "report.json").exists()


def test_unknown_config_arg_lists_valid_ones(tmp_path):
  out = run_main(f"--config={CONFIG}:runlocl", workdir=tmp_path)
  assert out.returncode != 0
  assert "config arg 'runlocl' is unknown; valid: ['preset', 'runlocal']" in out.stderr


def test_config_changes_lists_every_changed_leaf():
  from reasonjax.checkpoint import config_changes
  old = {"steps": 100, "model": {"dtype": "float32", "num_layers": 4}, "task": {"n": 1}}
  new = {"steps": 200, "model": {"dtype": "float32", "num_layers": 2}, "seed": 0}
  assert config_changes(old, new) == [
      "model.num_layers: 4 -> 2", "seed: '<absent>' -> 0", "steps: 100 -> 200",
      "task: {'n': 1} -> '<absent>'"]
  assert config_changes(old, old) == []


@pytest.mark.parametrize("flags, message", [
    ([], "error: --config is required: --config=FILE[:ARG], one of\n  configs/"),
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: no config file at "
                                   "'configs/nope.py'; the config files are\n  configs/"),
])
def test_a_missing_config_lists_the_config_files_without_a_traceback(tmp_path, flags, message):
  out = run_main(*flags, workdir=tmp_path)
  assert out.returncode != 0 and message in out.stderr
  # One line per config file (its summary) and one for its args: no traceback, nothing else.
  files = [f for f in os.listdir(os.path.join(REPO, "configs"))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")]
  assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) <= 2 * len(files) + 1
  assert "configs/sft_arith.py: SFT of a small decoder" in out.stderr
  assert "\n  configs/demo.py: " in out.stderr


def test_help_lists_the_config_files_and_their_variants(tmp_path):
  out = run_main("--help", workdir=tmp_path)
  assert "configs/grpo_arith.py: GRPO on arithmetic chains" in out.stdout
  assert "Args: `runlocal`" in out.stdout


@pytest.mark.parametrize("arg, message", [
    ("runlocal=tru", "config arg 'runlocal=tru': runlocal is a boolean; write one of ['0', "),
    ("preset=tiny,runlocal=1x", "runlocal is a boolean"),
])
def test_a_config_arg_typo_fails_instead_of_running_the_full_config(tmp_path, arg, message):
  out = run_main(f"--config={CONFIG}:{arg}", workdir=tmp_path)
  assert out.returncode != 0 and message in out.stderr
  assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("config, override, message", [
    ("grpo_arith", "--config.optimizer.learning_rate=nan", "optimizer.learning_rate=nan; expected a finite"),
    ("grpo_arith", "--config.checkpoint_every=-1", "config.checkpoint_every=-1; expected 0 (off"),
    ("grpo_arith", "--config.sft.steps=0", "config.steps=0; expected a positive integer"),
    ("grpo_arith", "--config.resume_from=latest", "config.resume_from='latest'; expected one of"),
    ("grpo_arith", "--config.aggregation=mean", "config.aggregation='mean'; expected one of ['bnpo'"),
    ("grpo_arith", "--config.verifier=gsm9k", "config.verifier='gsm9k'; expected one of ['gsm8k'"),
    ("grpo_arith", "--config.policy_loss.kl_estimator=k9",
     "config.policy_loss.kl_estimator='k9'; expected one of ['k1', 'k2', 'k3']"),
    # A renamed key still works, with a warning: the error is the new key's.
    ("grpo_arith", "--config.loss.kl_estimator=k9",
     "--config.loss.kl_estimator is a renamed key: use --config.policy_loss.kl_estimator"),
    ("dpo_arith", "--config.loss=dpoo", "unknown preference loss 'dpoo'; valid: ["),
    ("orm_arith", "--config.granularity=xrm", "config.granularity='xrm'; expected one of ('orm'"),
    ("prm_arith", "--config.label_kind=l1", "config.label_kind='l1'; expected one of ('bce'"),
])
def test_bad_fields_fail_at_start_before_the_nested_sft(tmp_path, config, override, message):
  out = run_main(f"--config=configs/{config}.py:runlocal", override, workdir=tmp_path,
                 timeout=120)
  assert out.returncode != 0 and message in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "sft").exists()  # Before the nested SFT run.
