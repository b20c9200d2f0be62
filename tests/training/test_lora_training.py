"""LoRA through the training loop (`config.lora`): the base stays frozen and the optimizer holds
the adapters' moments only; the export is the base merged with the PEFT folder's adapters; a
stopped run resumes to the same result; a reference that is the base reads the frozen base; a
reward model's new score head trains in full beside the adapters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sft_arith
from reasonjax import models
from reasonjax.models import lora
from reasonjax.programs import sft
from reasonjax.training import loop
from tests.conftest import random_params


def _config(steps=4, rank=2, targets=("q_proj", "up_proj")):
  config = sft_arith.get_config("runlocal")
  config.update({"steps": steps, "checkpoint_every": 2, "log_every": 1})
  config.eval.num_problems = 0
  config.lora.update({"rank": rank, "alpha": 4.0, "targets": targets})
  return config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A small policy to adapt, saved as a Hugging Face folder."""
  config = sft_arith.get_config("runlocal")
  cfg = models.config_from(config.model.to_dict())
  path = str(tmp_path_factory.mktemp("base"))
  models.save_hf(cfg, random_params(cfg, 0), path)
  return path


def _run(config, workdir, base):
  config.init_from = base
  sft.run(config, str(workdir))
  _, params = models.load_hf(os.path.join(workdir, "hf"))
  return params


def test_the_export_is_the_frozen_base_merged_with_the_saved_adapters(base, tmp_path):
  merged = _run(_config(), tmp_path, base)
  cfg, start = models.load_hf(base)
  adapters, settings = lora.load_peft(str(tmp_path / "adapter"), cfg)
  assert settings["r"] == 2 and settings["target_modules"] == ["q_proj", "up_proj"]
  # Trained: b moved from 0.
  assert np.abs(adapters["layers_0"]["mlp"]["up_proj"]["lora_b"]).max() > 0
  want = lora.merge(start, adapters, scale=4.0 / 2)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), merged, want)
  # Untargeted parameters are the base's, bit for bit.
  for path in (("embed_tokens", "embedding"), ("layers_1", "self_attn", "k_proj", "kernel"),
               ("layers_0", "mlp", "down_proj", "kernel"), ("norm", "scale")):
    x, y = merged, start
    for k in path:
      x, y = x[k], y[k]
    np.testing.assert_array_equal(x, y)


def test_the_optimizer_holds_only_the_adapters(base, tmp_path):
  from reasonjax import checkpoint
  _run(_config(), tmp_path, base)
  cfg = models.read_config(base)
  adapters = lora.init(cfg, jax.random.key(0), rank=2, targets=("q_proj", "up_proj"))
  sizes = sum(x.size for x in jax.tree.leaves(adapters))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  stored = ckpt.manager.item_metadata(4)["state"].tree  # what the checkpoint holds
  ckpt.close()
  opt_sizes = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(stored["opt_state"]))
  # AdamW: two moments of the adapters' size, and a few scalars (counts).
  assert 2 * sizes <= opt_sizes <= 2 * sizes + 16
  assert opt_sizes < models.param_count(cfg) / 10


def test_a_stopped_run_resumes_to_the_same_adapters(base, tmp_path):
  straight = _run(_config(steps=4), tmp_path / "straight", base)
  _run(_config(steps=2), tmp_path / "stopped", base)  # stops after the checkpoint of step 2
  resumed = _run(_config(steps=4), tmp_path / "stopped", base)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_a_reference_that_is_the_base_reads_the_frozen_base():
  seen = {}

  def loss_fn(params, batch, rng, frozen):
    seen["params"], seen["frozen"] = params, frozen
    return jnp.zeros(()), (jnp.ones(()), {})

  cfg = models.preset("tiny", num_layers=1, vocab_size=64, hidden_size=16, intermediate_size=32,
                      num_heads=2, num_kv_heads=1, head_dim=8)
  base = random_params(cfg, 0)
  adapters = lora.init(cfg, jax.random.key(1), rank=2, targets=("v_proj",))
  for frozen, want in ((base, "base"), (None, None), (random_params(cfg, 1), "other")):
    adapted, tree = loop._adapted(loss_fn, base, frozen, scale=1.0)
    adapted(adapters, {}, None, tree)
    assert set(tree) == ({"base"} if want != "other" else {"base", "reference"})
    if want is None:
      assert seen["frozen"] is None
    else:
      assert seen["frozen"] is (base if want == "base" else frozen)
    jax.tree.map(np.testing.assert_array_equal, seen["params"], lora.attach(base, adapters,
                                                                            scale=1.0))


@pytest.mark.parametrize("field, value, match", [("rank", -1, "rank"), ("alpha", 0.0, "alpha"),
                                                 ("targets", ("qkv",), "targets")])
def test_bad_lora_fields_are_refused(field, value, match):
  config = _config()
  config.lora[field] = value
  with pytest.raises(ValueError, match=match):
    loop.check_config(config)


def test_lora_needs_a_starting_model(tmp_path):
  config = _config()
  with pytest.raises(ValueError, match="init_from"):
    sft.run(config, str(tmp_path))


def test_a_reward_model_trains_its_score_head_beside_the_adapters(base, tmp_path):
  from configs import prm_arith
  from reasonjax import programs
  from reasonjax.data import batching
  from reasonjax.programs import reward_model
  from reasonjax.training import experiment
  config = prm_arith.get_config("runlocal")
  config.update({"steps": 4, "checkpoint_every": 2, "log_every": 1})
  config.lora.update({"rank": 2, "alpha": 4.0, "targets": ("q_proj",)})
  config.init_from = base
  programs.check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  # The gold solutions' steps, every other one labelled wrong: a signal the head can learn.
  examples = []
  for problem in task.generate(16, seed=0):
    steps = task.parse_steps(problem.solution)
    examples.append(batching.prm_example(tokenizer, task.prompt(problem), steps,
                                          [float(i % 2) for i in range(len(steps))]))
  reward_model.train(config, str(tmp_path), base, examples)
  cfg, start = reward_model.load(config, base)  # the policy with the fresh head, as trained
  exported_cfg, exported = models.load_hf(str(tmp_path / "hf"))
  assert exported_cfg.score_head
  adapters, settings = lora.load_peft(str(tmp_path / "adapter"), cfg)
  assert settings["modules_to_save"] == ["score"]
  assert np.abs(np.asarray(adapters["score_head"]["kernel"]) -
                np.asarray(start["score_head"]["kernel"])).max() > 1e-4  # the head trained
  want = lora.merge(start, adapters, scale=4.0 / 2)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), exported,
               want)
  np.testing.assert_array_equal(exported["layers_0"]["self_attn"]["k_proj"]["kernel"],
                                start["layers_0"]["self_attn"]["k_proj"]["kernel"])
