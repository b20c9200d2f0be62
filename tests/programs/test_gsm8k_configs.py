"""configs/sft_gsm8k.py and configs/grpo_gsm8k.py end to end: their runlocal variants run through
`reasonjax.main` on GSM8K rows from ../shared/data, from a tiny random Qwen2 checkpoint and BPE
tokenizer (conftest `gsm8k_checkpoint`), as a user starts them with a real checkpoint."""

import json
import os

import numpy as np
import pytest
import safetensors.numpy

from configs import grpo_gsm8k, hrm_gsm8k, sft_gsm8k
from reasonjax import programs
from reasonjax.data import tokenizers
from reasonjax.metrics import read_jsonl
from tests.conftest import GSM8K_DIR, run_main


def _run(name, workdir, checkpoint, *flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user
  result = run_main(
      f"--config=configs/{name}.py:runlocal", f"--config.init_from={checkpoint}",
      f"--config.tokenizer={checkpoint}",
      f"--config.task.knobs.train_path={os.path.join(GSM8K_DIR, 'train.jsonl')}",
      f"--config.task.knobs.test_path={os.path.join(GSM8K_DIR, 'test.jsonl')}", *flags,
      workdir=workdir, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    # The chat template's tokenizer follows --config.tokenizer (one value in the config).
    assert json.load(f)["task"]["knobs"]["tokenizer"] == checkpoint
  with open(os.path.join(workdir, "results.json")) as f:
    return list(read_jsonl(os.path.join(workdir, "metrics.jsonl"))), json.load(f)


def test_sft_gsm8k_runlocal_fine_tunes_the_checkpoint_and_exports_it_whole(gsm8k_checkpoint,
                                                                         tmp_path):
  rows, results = _run("sft_gsm8k", tmp_path, gsm8k_checkpoint)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [4]
  assert results["steps"] == 4 and 0 <= results["accuracy"] <= 1
  export = os.path.join(tmp_path, "hf")
  # Trained from the checkpoint, not from a new model: its weights moved, by little.
  before = safetensors.numpy.load_file(os.path.join(gsm8k_checkpoint, "model.safetensors"))
  after = safetensors.numpy.load_file(os.path.join(export, "model.safetensors"))
  name = "model.embed_tokens.weight"
  assert after[name].shape == before[name].shape == (512, 64)
  assert not np.array_equal(after[name], before[name])
  np.testing.assert_allclose(after[name], before[name], atol=0.02)
  # The export carries its tokenizer: it generates text on its own.
  assert os.path.isfile(os.path.join(export, "tokenizer_config.json"))
  original, exported = tokenizers.load(gsm8k_checkpoint), tokenizers.load(export)
  text = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
  assert exported.encode(text, add_eos=True) == original.encode(text, add_eos=True)
  messages = [{"role": "user", "content": "How many?"}]
  assert exported.apply_chat_template(messages) == original.apply_chat_template(messages)


def test_grpo_gsm8k_runlocal_trains_from_the_checkpoint(gsm8k_checkpoint, tmp_path):
  # A random policy never answers right; a brevity reward gives the groups reward differences,
  # so the updates are not all zero.
  rows, results = _run("grpo_gsm8k", tmp_path, gsm8k_checkpoint, "--config.rewards.brevity=1.0")
  train = [r for r in rows if "rollout_reward_mean" in r]
  assert [r["step"] for r in train] == [1, 2]  # one update per iteration
  assert all(r["rollout_reward_correctness"] == 0 for r in train)
  assert train[0]["grad_norm"] > 0 and train[0]["kl"] == 0.0 < train[-1]["kl"]
  assert max(r["logprob_gap_max"] for r in train) < 1e-4  # sampler and trainer agree
  with open(os.path.join(tmp_path, "start_eval.json")) as f:
    assert results["sft_accuracy"] == json.load(f)["accuracy"]
  assert results["iterations"] == 2 and "grpo_accuracy" in results
  assert not os.path.exists(os.path.join(tmp_path, "sft"))  # no nested SFT run


@pytest.mark.slow
def test_hrm_gsm8k_runlocal_runs_every_stage_from_the_checkpoint(gsm8k_checkpoint, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = run_main(
      "--config=configs/hrm_gsm8k.py:runlocal", f"--config.init_from={gsm8k_checkpoint}",
      f"--config.tokenizer={gsm8k_checkpoint}",
      f"--config.task.knobs.train_path={os.path.join(GSM8K_DIR, 'train.jsonl')}",
      f"--config.task.knobs.test_path={os.path.join(GSM8K_DIR, 'test.jsonl')}",
      workdir=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(tmp_path, "hrm.json")) as f:
    summary = json.load(f)
  config = hrm_gsm8k.get_config("runlocal")
  scorers = {r["scorer"] for r in summary["evaluation"]}
  assert scorers == {"none", *config.reward_models.names}  # no oracle: no step ground truth
  assert summary["first_error"] == {} and set(summary["hacking"]) == {"hrm"}
  # Ranked by the answers alone: no step AUC (a tiny model may get every answer wrong: the
  # solution AUC is then NaN).
  assert {r["scorer"] for r in summary["ranking"]} == set(config.reward_models.names)
  assert all(r["step_auc"] is None and not r["solution_auc"] > 1 for r in summary["ranking"])
  assert not os.path.exists(os.path.join(tmp_path, "sft"))  # the checkpoint is the policy
  for name in config.reward_models.names:  # each reward model started from the checkpoint
    assert os.path.isfile(os.path.join(tmp_path, f"rm_{name}", "hf", "tokenizer_config.json"))


def test_without_init_from_the_run_says_what_to_set(tmp_path):
  for config in (sft_gsm8k.get_config("runlocal"), grpo_gsm8k.get_config("runlocal"),
                 hrm_gsm8k.get_config("runlocal")):
    with pytest.raises(ValueError, match="config.init_from is empty .* set --config.init_from"):
      programs.get(config.trainer)(config, str(tmp_path))


@pytest.mark.parametrize("name", ["sft_gsm8k", "grpo_gsm8k"])
def test_full_config_starts_from_a_qwen_sized_checkpoint(name):
  config = {"sft_gsm8k": sft_gsm8k, "grpo_gsm8k": grpo_gsm8k}[name].get_config()
  assert config.model.dtype == "bfloat16" and config.task.knobs.template == "chat"
  assert "preset" not in config.model  # the architecture is the checkpoint's
  if name == "grpo_gsm8k":
    assert config.verifier == "gsm8k" and config.optimizer.learning_rate == 1e-6
    assert "sft" not in config
