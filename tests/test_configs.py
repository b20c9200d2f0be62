"""Config files: each loads, locks, and has a runlocal variant; the shared arg parser."""

import glob
import json
import importlib
import os

import ml_collections
import numpy as np
import pytest

from configs import common
from reasonjax import sharding
from tests.conftest import run_main

CONFIG_FILES = sorted(os.path.basename(f)[:-3] for f in glob.glob(
    os.path.join(os.path.dirname(common.__file__), "*.py")) if not f.endswith(("__init__.py",
                                                                                "common.py")))


def _has_key(config, dotted):
  """Whether `config` has the (possibly nested) key `dotted`, e.g. "policy_loss.beta"."""
  for key in dotted.split("."):
    if not isinstance(config, ml_collections.ConfigDict) or key not in config:
      return False
    config = config[key]
  return True


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_has_runlocal_and_a_known_trainer(name):
  from reasonjax import programs
  module = importlib.import_module(f"configs.{name}")
  for arg in (None, "runlocal"):
    config = module.get_config(arg)
    assert config.trainer in programs.PROGRAMS, (name, config.trainer)
    # A renamed key: the new one is in the config and the old one is not (so that an override
    # of the old key can only mean the new one).
    for old, new in getattr(module, "RENAMED", {}).items():
      assert _has_key(config, new) and not _has_key(config, old), (name, old, new)
  assert module.__doc__ and "python -m reasonjax.main" in module.__doc__


def test_parse_arg():
  arg = common.parse_arg("runlocal,preset=small,steps=3", runlocal=False, preset="tiny", steps=1)
  assert (arg.runlocal, arg.preset, arg.steps) == (True, "small", 3)
  assert common.parse_arg(None, runlocal=False).runlocal is False
  with pytest.raises(ValueError, match=r"config arg 'x' is unknown; valid: \['runlocal'\]"):
    common.parse_arg("x", runlocal=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("steps", steps=1)


def test_parse_arg_refuses_a_boolean_it_cannot_read():
  assert common.parse_arg("runlocal=false", runlocal=False).runlocal is False
  assert common.parse_arg("runlocal=Yes", runlocal=False).runlocal is True
  with pytest.raises(ValueError, match=r"'runlocal=tru': runlocal is a boolean; write one of"):
    common.parse_arg("runlocal=tru", runlocal=False)
  with pytest.raises(ValueError, match=r"'steps=x': steps expects a int, like the default 1"):
    common.parse_arg("steps=x", steps=1)


def test_loop_sets_its_arguments_and_keeps_what_the_config_set():
  config = ml_collections.ConfigDict({"eval_at_start": True, "keep_checkpoints": 5,
                                      "optimizer": {"b2": 0.9}})
  common.loop(config, steps=100, batch_size=8, seq_len=64, learning_rate=1e-3, warmup_steps=10)
  common.loop(config, steps=10, batch_size=4, seq_len=32, learning_rate=1e-4, warmup_steps=1,
              checkpoint_every=5)  # a runlocal variant shrinking the run
  assert (config.steps, config.batch_size, config.checkpoint_every) == (10, 4, 5)
  assert config.eval_at_start is True and config.keep_checkpoints == 5
  assert config.optimizer.to_dict() == {"b2": 0.9, "learning_rate": 1e-4, "warmup_steps": 1,
                                        "weight_decay": 0.1, "clip_norm": 1.0,
                                        "max_nonfinite_steps": 10}
  assert config.resume_from == "newest_intact" and config.accum_steps == 1


# ----------------------------------------------------------------------------- runlocal runs
# Each runs as a user starts it: `python -m reasonjax.main` on one CPU device (not the test
# session's 8 fake ones). How long they take is not checked here: on a loaded machine a time
# limit fails for reasons that are not the code's.


def _rows(workdir, key):
  from reasonjax.metrics import read_jsonl
  return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r]


def _run(name, workdir, *flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = run_main(f"--config=configs/{name}.py:runlocal", *flags, workdir=workdir, env=env)
  assert result.returncode == 0, result.stderr[-3000:]


def test_sft_arith_runlocal_learns_and_exports(sft_workdir):
  train = _rows(sft_workdir, "loss")
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  evals = _rows(sft_workdir, "eval/accuracy")
  assert [r["step"] for r in evals] == [60, 120]  # eval_every and the end
  # A minute from scratch learns the format (the arithmetic takes longer: see README).
  assert evals[-1]["eval/truncated"] < 0.2
  with open(os.path.join(sft_workdir, "results.json")) as f:
    results = json.load(f)
  assert results["accuracy"] == evals[-1]["eval/accuracy"] and "pass_at_4" in results
  assert os.path.isfile(os.path.join(sft_workdir, "hf", "model.safetensors"))


def test_dpo_arith_runlocal_prefers_its_correct_samples(sft_workdir, tmp_path):
  _run("dpo_arith", tmp_path, f"--config.init_from={sft_workdir}/hf")
  train = _rows(tmp_path, "reward_margin")
  # The policy moves towards its correct samples and away from its wrong ones.
  assert train[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
  assert train[-1]["reward_margin"] > 0 and train[-1]["loss"] < np.log(2)
  assert np.mean([r["reward_accuracy"] for r in train[-3:]]) > 0.5


@pytest.mark.parametrize("name", ["orm_arith", "prm_arith"])
def test_reward_model_runlocal_learns_its_labels(name, sft_workdir, tmp_path):
  _run(name, tmp_path, f"--config.init_from={sft_workdir}/hf")
  train = _rows(tmp_path, "loss")
  # Against the new head's first logged loss: batches of 8 make the later ones noisy (the orm run
  # fell from 0.65 to 0.19 by step 10 and ended at 0.40-0.56), so early means overlap late ones.
  assert np.mean([r["loss"] for r in train[-3:]]) < train[0]["loss"]
  evals = _rows(tmp_path, "eval/accuracy")
  assert [r["step"] for r in evals] == [0, 20]  # Before (eval_at_start) and after.
  assert evals[-1]["eval/accuracy"] > evals[0]["eval/accuracy"]


def test_grpo_arith_runlocal_trains_on_its_own_samples(sft_workdir, tmp_path):
  _run("grpo_arith", tmp_path, f"--config.init_from={sft_workdir}/hf")
  train = _rows(tmp_path, "logprob_gap_max")
  assert [r["step"] for r in train] == list(range(1, 9))  # one update per iteration
  # The sampler's log-probs are the trainer's up to float32 rounding (measured: max 6e-6).
  assert max(r["logprob_gap_max"] for r in train) < 1e-4
  assert train[0]["kl"] == 0.0 < train[-1]["kl"]  # starts at the reference, then moves
  assert all(0 <= r["rollout_zero_variance_groups"] <= 1 for r in train)
  assert all(r["rollout_reward_mean"] == r["rollout_reward_correctness"] for r in train)
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(tmp_path, "start_eval.json")) as f:
    assert results["sft_accuracy"] == json.load(f)["accuracy"]
  final = _rows(tmp_path, "eval/accuracy")[-1]
  assert results["grpo_accuracy"] == final["eval/accuracy"] and final["step"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [("dapo_arith", "runlocal,efficiency"),
                                       ("ttrl_arith", "runlocal,empo")])
def test_grpo_recipes_runlocal(name, arg, sft_workdir, tmp_path):
  """DAPO with the length reward, the cut-off and Guide-GRPO's guidance (every data control
  on), and EMPO (test-time, no verifier in the reward), 4 iterations each from the shared SFT
  start."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  guide = ["--config.guidance.samples=2"] if name == "dapo_arith" else []
  out = run_main(f"--config=configs/{name}.py:{arg}", f"--config.init_from={sft_workdir}/hf",
                 "--config.steps=4", "--config.checkpoint_every=4", "--config.eval_every=0",
                 *guide, workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  train = _rows(tmp_path, "rollout_reward_mean")
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  for r in train:
    if name == "ttrl_arith":  # the reward never reads the answers; correctness is a metric
      assert r["rollout_sampling_rounds"] == 1
      assert r["rollout_reward_mean"] == pytest.approx(r["rollout_reward_answer_frequency"])
      continue
    assert 1 <= r["rollout_sampling_rounds"] <= 3
    # Dynamic sampling: the batch holds no more zero-variance groups than the first draw.
    assert r["rollout_zero_variance_groups"] <= r["rollout_sampled_zero_variance_groups"]
    # The reward metrics are of the first draw's plain samples: the batch trained on when
    # neither dynamic sampling nor guidance changed it.
    if r["rollout_sampling_rounds"] == 1 and r["rollout_guided_groups"] == 0:
      assert r["rollout_reward_mean"] == pytest.approx(
          r["rollout_reward_correctness"] + 0.5 * r["rollout_reward_group_length"]
          + r["rollout_reward_overlong_penalty"], abs=1e-5)
    assert -1.0 <= r["rollout_reward_overlong_penalty"] <= 0.0
    # Guided groups are those whose plain samples all failed.
    assert 0.0 <= r["rollout_guided_right"] <= 1.0
    assert r["rollout_guided_groups"] <= 1.0 - r["rollout_reward_correctness"] + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["guide_grpo_arith", "scl_arith", "thinktuning_arith",
                                  "restart_grpo_arith"])
def test_recipe_runlocal_variants_run_two_steps(name, sft_workdir, tmp_path):
  """Runlocal variants not run above (Guide-GRPO's own config, the self-correction pairs,
  ThinkTuning's feedback, Satori's restarts; TTRL differs from the EMPO run above only in its
  reward weights), two steps each from the shared SFT start: each logs its steps and exports its
  evaluation."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main(f"--config=configs/{name}.py:runlocal", f"--config.init_from={sft_workdir}/hf",
                 "--config.steps=2", "--config.checkpoint_every=2", "--config.log_every=1",
                 "--config.eval.num_problems=4", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [r["step"] for r in _rows(tmp_path, "loss")] == [1, 2]
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  assert 0.0 <= results.get("accuracy", results.get("grpo_accuracy", -1)) <= 1.0
  if name == "scl_arith":
    with open(os.path.join(tmp_path, "pairs.jsonl")) as f:
      pairs = [json.loads(line) for line in f]
    cue = "\nLet me check that again.\n"
    assert pairs and all(p["prompt"].endswith(cue) for p in pairs)
  if name == "thinktuning_arith":
    rows = _rows(tmp_path, "rollout_feedback_samples")
    # The schedule (1 to 0 over the first 2 of runlocal's 8 iterations) and, at fraction 1,
    # feedback for exactly the failed completions.
    assert [r["rollout_feedback_fraction"] for r in rows] == [1.0, 0.5]
    assert rows[0]["rollout_feedback_samples"] == pytest.approx(
        1 - rows[0]["rollout_reward_correctness"], abs=1e-6)
    assert rows[0]["rollout_feedback_tokens"] > 0
  if name == "restart_grpo_arith":
    rows = _rows(tmp_path, "rollout_restart_groups")
    # No earlier trajectory to restart from in the first iteration; then up to half the groups
    # (fewer only if few samples had 2 steps).
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["rollout_restart_groups"] == 0
    assert 0 < rows[1]["rollout_restart_groups"] <= 0.5
    assert all(0 <= r["rollout_restart_right"] <= 1 for r in rows)


@pytest.mark.slow
def test_structured_runlocal_tunes_the_format_then_rewards_it(sft_workdir, tmp_path):
  """COAT: stage 1 fine-tunes the shared SFT start on meta-action seed traces; then two GRPO
  iterations, whose samples are partly in the format (the format reward is `Task.well_formed`,
  checked in tests/data/tasks/test_structured.py)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/structured_arith.py:runlocal",
                 f"--config.sft.init_from={sft_workdir}/hf", "--config.steps=2",
                 "--config.checkpoint_every=2", "--config.log_every=1",
                 "--config.eval.num_problems=8", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  stage1 = _rows(os.path.join(tmp_path, "sft"), "loss")
  assert stage1[-1]["loss"] < stage1[0]["loss"] / 4
  train = _rows(tmp_path, "rollout_reward_format")
  assert [r["step"] for r in train] == [1, 2]
  assert max(r["rollout_reward_format"] for r in train) > 0.1
  assert all(r["rollout_reward_calibration"] == 0 for r in train)  # COAT states no confidence


@pytest.mark.slow
def test_search_arith_runlocal_runs_every_method_and_resumes(sft_workdir, tmp_path):
  page = os.path.join(tmp_path, "page.md")
  _run("search_arith", tmp_path, f"--config.init_from={sft_workdir}/hf",
       f"--config.results_page={page}")
  with open(os.path.join(tmp_path, "search.json")) as f:
    results = json.load(f)
  rows = {(r["method"], r["n"]): r for r in results["rows"]}
  from configs import search_arith
  search = search_arith.get_config("runlocal").search
  assert set(rows) == {(m, n) for m in search.methods for n in search.n_values}
  assert all(0 <= r["accuracy"] <= 1 and r["tokens_per_problem"] > 0 for r in rows.values())
  # Best-of-N over nested samples with the oracle scorer: never worse with more samples.
  best = [rows["best_of_n", n]["accuracy"] for n in search.n_values]
  assert best == sorted(best)
  spent = [rows["best_of_n", n]["tokens_per_problem"] for n in search.n_values]
  assert spent == sorted(spent) and spent[-1] > spent[0]
  with open(os.path.join(tmp_path, "search.md")) as f:
    table = f.read()
  assert all(f"| {m} |" in table for m in search.methods) and "oracle" in table
  with open(page) as f:
    text = f.read()
  assert "python -m reasonjax.main " in text and "--config=configs/search_arith.py:runlocal" in text
  assert table.split("\n\nseed")[0] in text
  # A rerun finds every row done and computes none again.
  _run("search_arith", tmp_path, f"--config.init_from={sft_workdir}/hf")
  with open(os.path.join(tmp_path, "search.json")) as f:
    assert json.load(f)["rows"] == results["rows"]
  # Rows of other settings are not mixed with these.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/search_arith.py:runlocal",
                 f"--config.init_from={sft_workdir}/hf", "--config.search.temperature=0.5",
                 workdir=tmp_path, env=env)
  assert out.returncode != 0 and "search.temperature: 1.0 -> 0.5" in out.stderr


def test_mesh_presets_cover_the_devices_they_name():
  # Devices JAX sees: v5e-N and 8xh100-style names count chips; v5p-N counts TensorCores
  # (two per chip, one JAX device per chip).
  chips = {"v5e-8": 8, "v5p-64": 32, "8xh100": 8, "2x8xh100": 16}
  for name, count in chips.items():
    sizes = common.MESH_PRESETS[name]
    assert -1 not in sizes and np.prod(sizes) == count, name
  mesh = sharding.make_mesh(**common.mesh(preset="cpu"))
  assert mesh.shape == {"data": 8, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="unknown; valid: .*v5e-8"):
    common.mesh(preset="v6")
