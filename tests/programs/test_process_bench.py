"""The ProcessBench program end to end on fixture rows, from a tiny random checkpoint: trained
on PRM800K stepwise rows, its stored step scores equal one forward pass per solution, and its F1
equals a brute-force count at its threshold."""

import json
import os

import jax
import numpy as np
import pytest

from configs import processbench
from reasonjax import models, programs
from reasonjax.data import process_labels, tokenizers
from reasonjax.programs import process_bench
from tests.conftest import run_main

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "process_labels")
STEPWISE = os.path.join(FIXTURES, "prm800k_stepwise", "phase1_test.stepwise-critic.jsonl.gz")


def test_trains_on_prm800k_then_scores_and_evaluates(gsm8k_checkpoint, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/processbench.py:runlocal",
                 f"--config.init_from={gsm8k_checkpoint}", f"--config.train.path={STEPWISE}",
                 f"--config.data.dir={os.path.join(FIXTURES, 'processbench')}",
                 "--config.data.threshold=0.5", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(tmp_path, "process_bench.json")) as f:
    results = json.load(f)
  with open(os.path.join(tmp_path, "scores_gsm8k.json")) as f:
    stored = json.load(f)
  rows = process_labels.load_processbench(os.path.join(FIXTURES, "processbench", "gsm8k.json"))
  assert stored["ids"] == [r.id for r in rows] and stored["skipped"] == 0
  # Each solution alone through the trained export.
  path = os.path.join(tmp_path, "rm", "hf")
  cfg, params = models.load({"hf_path": path, "lm_head": False, "score_head": True},
                            jax.random.key(0))
  tokenizer = tokenizers.load(gsm8k_checkpoint)
  model = models.Model(cfg)
  config = processbench.get_config("runlocal")
  predicted = []
  for row, scores in zip(rows, stored["scores"]):
    e = process_bench.example(tokenizer, config.prompt, row.problem, row.steps)
    logits = np.asarray(model.apply({"params": params}, e["inputs"][None],
                                    method=models.Model.score)[0], np.float64)
    want = 1 / (1 + np.exp(-logits[e["step_mask"] > 0]))
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5)
    predicted.append(next((i for i, s in enumerate(scores) if s < 0.5), -1))
  gold = [r.first_error for r in rows]
  erroneous = [p == g for p, g in zip(predicted, gold) if g != -1]
  correct = [p == -1 for p, g in zip(predicted, gold) if g == -1]
  got = results["splits"]["gsm8k"]
  assert erroneous and correct  # The fixture rows hold both kinds.
  assert got["error_accuracy"] == pytest.approx(sum(erroneous) / len(erroneous))
  assert got["correct_accuracy"] == pytest.approx(sum(correct) / len(correct))


def test_without_a_reward_model_source_the_run_says_what_to_set(tmp_path):
  config = processbench.get_config("runlocal")
  config.data.dir = os.path.join(FIXTURES, "processbench")
  with pytest.raises(ValueError, match="config.reward_model='': no config.json there"):
    programs.check_config(config)
  config.reward_model = str(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  config.data.splits = ("math",)
  with pytest.raises(ValueError, match="config.data.splits: no .*math.json"):
    programs.check_config(config)
