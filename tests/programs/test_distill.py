"""The distillation program: its loss against a float64 reference on two models' logits, the
batch source's draws (gold, teacher and on-policy rows; exact resume), the config checks, and
a runlocal run from the shared SFT start."""

import json
import os

import jax
import numpy as np
import pytest

from configs import distill_arith
from reasonjax import models
from reasonjax.data import tokenizers
from reasonjax.data.tasks import get_task
from reasonjax.programs import check_config, distill as program
from tests.conftest import assert_same_batches, random_params, run_main
from tests.losses.test_distill import _np_jsd

TEACHER_CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64,
                            intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
STUDENT_CFG = TEACHER_CFG.replace(num_layers=1, hidden_size=32, intermediate_size=64,
                                  num_heads=2, num_kv_heads=1)
TOK = tokenizers.load("synthetic")


def _config(**distill):
  config = distill_arith.get_config("runlocal")
  config.distill.update(distill)
  return config


def _source(config, teacher_params=None):
  task = get_task(config.task.name, **config.task.knobs)
  return program.Sequences(config, task, TOK, models.Model(STUDENT_CFG),
                           models.Model(TEACHER_CFG), teacher_params), task


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_loss_is_the_token_mean_of_the_jsd_over_completions(beta):
  config = _config(on_policy_fraction=0.0)
  batch, _ = _source(config)
  batch = batch.next_batch(None)
  student, teacher = random_params(STUDENT_CFG, 0), random_params(TEACHER_CFG, 1)
  loss, (count, metrics) = program.distill_loss(
      student, jax.tree.map(np.asarray, batch), None, teacher,
      student=models.Model(STUDENT_CFG), teacher=models.Model(TEACHER_CFG), beta=beta,
      temperature=2.0)
  kwargs = {"positions": batch["positions"], "segment_ids": batch["segment_ids"]}
  logits = [np.asarray(models.Model(c).apply({"params": p}, batch["inputs"], **kwargs),
                       np.float64)
            for c, p in ((STUDENT_CFG, student), (TEACHER_CFG, teacher))]
  mask = batch["loss_mask"].astype(np.float64)
  want = _np_jsd(*logits, mask, beta, 2.0).sum() / mask.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  assert float(count) == mask.sum() and 0 < mask.sum() < mask.size  # prompts not distilled
  assert float(metrics["on_policy"]) == 0.0


def test_gold_rows_are_the_pool_problems_with_their_solutions_and_resume_exactly():
  config = _config(on_policy_fraction=0.0)
  source, task = _source(config)
  solutions = {task.prompt(p): p.solution for p in source.pool}
  batch = source.next_batch(None)
  for row in range(config.batch_size):
    real = batch["segment_ids"][row] > 0
    seq = np.r_[batch["inputs"][row][real], batch["targets"][row][real][-1]]  # BOS ... EOS
    first = int(np.argmax(batch["loss_mask"][row]))  # predicts the completion's first token
    assert batch["loss_mask"][row][real].sum() == len(seq) - first - 1
    prompt = TOK.decode(seq[1:first + 1])
    assert prompt in solutions
    assert TOK.decode(seq[first + 1:-1]) == solutions[prompt] and seq[-1] == TOK.eos_id
  batches = [source.next_batch(None) for _ in range(3)]
  assert not np.array_equal(batches[0]["inputs"], batches[1]["inputs"])
  resumed, _ = _source(config)
  resumed.set_state(json.loads(json.dumps({"step": 2})))
  assert_same_batches(resumed.next_batch(None), batches[1])


@pytest.mark.parametrize("fraction, source, who", [(1.0, "gold", "student"),
                                                   (0.0, "teacher", "teacher")])
def test_sampled_rows_come_from_the_named_model(monkeypatch, fraction, source, who):
  config = _config(on_policy_fraction=fraction, source=source)
  teacher_params = {"teacher": 1}
  calls = []

  def fake(model, params, tokenizer, prompts, rng, sampling, **kwargs):
    calls.append((model, params, sampling.num_samples))
    return [[f"#### {i}"] for i in range(len(prompts))]

  monkeypatch.setattr(program, "generate_texts", fake)
  src, _ = _source(config, teacher_params)
  student_params = {"student": 1}
  batch = src.next_batch(student_params)
  model, params, n = calls[0]
  assert n == 1 and params == (student_params if who == "student" else teacher_params)
  assert model.cfg == (STUDENT_CFG if who == "student" else TEACHER_CFG)
  assert np.all(batch["on_policy"] == fraction)
  row = batch["targets"][3][batch["loss_mask"][3] > 0]  # the completion, then EOS
  assert TOK.decode(row[:-1]) == "#### 3" and row[-1] == TOK.eos_id


@pytest.mark.parametrize("field, value, match", [
    ("beta", 1.5, "beta"), ("loss_temperature", 0.0, "loss_temperature"),
    ("on_policy_fraction", -0.1, "on_policy_fraction"), ("source", "teachers", "source"),
    ("max_new_tokens", 64, "max_new_tokens")])
def test_bad_fields_are_refused(field, value, match, tmp_path):
  config = _config(**{field: value})
  with pytest.raises(ValueError, match=f"config.distill.{match}"):
    check_config(config)


def test_a_batch_larger_than_the_pool_is_refused():
  config = _config()
  config.task.num_train = 4
  with pytest.raises(ValueError, match="num_train"):
    check_config(config)


@pytest.mark.slow
def test_distill_runlocal(sft_workdir, tmp_path):
  """From the shared SFT start as the teacher: a smaller student, on-policy and gold steps, the
  teacher's and the student's evaluations in results.json."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/distill_arith.py:runlocal",
                 f"--config.init_from={sft_workdir}/hf", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["steps"] == 6
  assert results["student_parameters"] < results["teacher_parameters"] / 3
  assert "accuracy" in results["teacher"] and "accuracy" in results["student"]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
  assert {r["on_policy"] for r in rows} == {0.0, 1.0}  # this seed draws both kinds
  assert rows[-1]["loss"] < rows[0]["loss"]
  cfg = models.config_from({"hf_path": str(tmp_path / "hf")})
  assert cfg.num_layers == 1 and cfg.hidden_size == 64
