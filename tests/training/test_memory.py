"""The memory planner: against XLA's accounting of the compiled train step, the exact parameter
and optimizer shards, the sampler's caches as the model builds them, and refusals."""

import functools
import math
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, sft_arith
from configs.common import AXIS_RULES
from reasonjax import models, sharding
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.models import SharedPrefixCache, layers, lora
from reasonjax.training import loop, memory, optim, state as state_lib, step as step_lib
from tests.conftest import random_params

OPT = {"learning_rate": 1e-3, "warmup_steps": 1, "total_steps": 10}
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
# Llama-2-7B's shapes (its published config.json).
LLAMA2_7B = models.ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                               num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                               rms_norm_eps=1e-5, max_position_embeddings=4096)


def compiled_bytes(cfg, mesh_sizes, batch_size: int, seq_len: int, lora_section=None) -> int:
  """Bytes per device of the real SFT train step as XLA assigns them: arguments + outputs - the
  donated state both hold + temporaries. Compiled from abstract values: nothing is allocated.
  With `lora_section` the step trains LoRA adapters on the frozen model, as `loop.train` does."""
  mesh = sharding.make_mesh(**mesh_sizes)
  tx = optim.make_optimizer(OPT)
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  init_params, frozen, frozen_shardings = state_lib.init_boxed_params, (), None
  if lora_section is not None:
    model_shardings = state_lib.state_shardings(cfg, tx, mesh, AXIS_RULES).params
    base = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        models.param_shapes(cfg), model_shardings)
    loss_fn, tree = loop._adapted(loss_fn, base, None, scale=2.0)
    init_params = functools.partial(lora.init, rank=lora_section.rank,
                                    targets=tuple(lora_section.targets))
    frozen, frozen_shardings = (tree,), {"base": model_shardings}
  state, shardings = state_lib.abstract_state(cfg, tx, mesh=mesh, rules=AXIS_RULES,
                                              init_params=init_params)
  fields = {"inputs": np.int32, "targets": np.int32, "loss_mask": np.float32,
            "positions": np.int32, "segment_ids": np.int32}
  host = {k: np.zeros((batch_size, seq_len), t) for k, t in fields.items()}
  batch_shardings = sharding.batch_shardings(host, mesh, AXIS_RULES)
  batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), host,
                       batch_shardings)
  with sharding.axis_rules(mesh, AXIS_RULES):
    train_step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings,
                                         frozen_shardings)
    compiled = train_step.lower(state, batch, *frozen).compile()
    return memory.compiled_bytes(compiled.memory_analysis())


# (model, batch rows, tokens per row, the component that dominates the plan, whether the step is
# compiled with `layers.CPU_KEEP_BARRIERS` (step.compiler_options has them on CPU); the plan reads
# the options too: with the barriers remat acts on unrolled layers, and blockwise attention keeps
# no score blocks between layers). The ~100M shape scans its layers: unrolled, its train step
# takes 45 s to compile on CPU.
CASES = {
    "tiny": (models.preset("tiny"), 64, 128, "activations", False),
    "tiny, 1024 tokens, barriers": (models.preset("tiny"), 8, 1024, "activations", True),
    "tiny, remat full, barriers": (models.preset("tiny", remat="full"), 16, 512, "activations",
                                   True),
    "100M": (models.preset("small", scan_layers=True), 8, 128, "state", False),
}


@pytest.mark.parametrize("name", CASES)
def test_the_plan_is_within_25_percent_of_the_compiled_train_step(name, monkeypatch):
  cfg, batch_size, seq_len, dominant, barriers = CASES[name]
  options = {k: v for k, v in (step_lib.compiler_options() or {}).items()
             if k not in layers.CPU_KEEP_BARRIERS}
  if barriers:
    options |= layers.CPU_KEEP_BARRIERS
  monkeypatch.setattr(step_lib, "compiler_options", lambda: options)
  plan = memory.plan(cfg, mesh_shape=MESH, rules=AXIS_RULES, batch_size=batch_size,
                     seq_len=seq_len, backend="cpu")
  measured = compiled_bytes(cfg, MESH, batch_size, seq_len)
  state = plan.params + plan.optimizer + plan.gradients + plan.update
  # Each case tests the part of the estimate it is meant to.
  assert (plan.activations > state) == (dominant == "activations"), memory.format_plan(plan)
  assert 0.75 <= plan.total / measured <= 1.25, (
      f"planned {plan.total} vs compiled {measured} bytes:\n{memory.format_plan(plan)}")


LORA = ml_collections.ConfigDict({"rank": 8, "alpha": 16.0, "targets": lora.TARGETS,
                                  "modules_to_save": ()})


# (case of CASES, the projections adapted): every adapted, the attention's q only (the other
# projections' inputs are not kept: `memory._frozen_bytes`), and with the barriers.
LORA_CASES = {"tiny, all": ("tiny", lora.TARGETS), "tiny, q_proj": ("tiny", ("q_proj",)),
              "tiny, barriers, q_proj": ("tiny, 1024 tokens, barriers", ("q_proj",)),
              "100M, all": ("100M", lora.TARGETS), "100M, q_proj": ("100M", ("q_proj",))}


@pytest.mark.parametrize("name", LORA_CASES)
def test_a_lora_plan_is_within_25_percent_of_the_compiled_train_step(name, monkeypatch):
  case, targets = LORA_CASES[name]
  cfg, batch_size, seq_len, _, barriers = CASES[case]
  options = {k: v for k, v in (step_lib.compiler_options() or {}).items()
             if k not in layers.CPU_KEEP_BARRIERS}
  monkeypatch.setattr(step_lib, "compiler_options",
                      lambda: options | (layers.CPU_KEEP_BARRIERS if barriers else {}))
  section = ml_collections.ConfigDict(LORA.to_dict() | {"targets": targets})
  plan = memory.plan(cfg, mesh_shape=MESH, rules=AXIS_RULES, batch_size=batch_size,
                     seq_len=seq_len, lora_section=section, backend="cpu")
  measured = compiled_bytes(cfg, MESH, batch_size, seq_len, lora_section=section)
  full = memory.plan(cfg, mesh_shape=MESH, rules=AXIS_RULES, batch_size=batch_size,
                     seq_len=seq_len, backend="cpu")
  assert plan.optimizer < full.optimizer / 4  # The adapters' moments only (replicated).
  assert plan.activations < full.activations or len(targets) == len(lora.TARGETS)
  assert 0.75 <= plan.total / measured <= 1.25, (
      f"planned {plan.total} vs compiled {measured} bytes:\n{memory.format_plan(plan)}")


def test_lora_state_bytes_are_the_trees_jax_places():
  cfg = models.preset("tiny", tie_word_embeddings=False)
  section = ml_collections.ConfigDict(LORA.to_dict() | {"targets": ("q_proj", "down_proj"),
                                                        "modules_to_save": ("lm_head",)})
  mesh = sharding.make_mesh(**MESH)
  init_params, _ = loop._lora_start(ml_collections.ConfigDict({"lora": section, "seed": 0}),
                                    cfg, random_params(cfg, 0))
  state, _ = state_lib.abstract_state(cfg, optim.make_optimizer(OPT), mesh=mesh,
                                      rules=AXIS_RULES, init_params=init_params)

  def shard_bytes(tree):
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))

  plan = memory.plan(cfg, mesh_shape=mesh.shape, rules=AXIS_RULES, batch_size=8, seq_len=64,
                     lora_section=section)
  base_bytes = memory.param_bytes(cfg, mesh.shape, AXIS_RULES)
  assert plan.params == base_bytes + shard_bytes(state.params)
  assert 0 <= shard_bytes(state.opt_state) - plan.optimizer <= 64
  assert "lm_head" in state.params  # trained in full


def test_parameter_and_optimizer_bytes_are_the_shards_jax_places():
  cfg = models.preset("tiny")
  mesh = sharding.make_mesh(**MESH)
  state, _ = state_lib.abstract_state(cfg, optim.make_optimizer(OPT), mesh=mesh,
                                      rules=AXIS_RULES)

  def shard_bytes(tree):
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))

  plan = memory.plan(cfg, mesh_shape=mesh.shape, rules=AXIS_RULES, batch_size=8, seq_len=64)
  assert plan.params == shard_bytes(state.params)
  # Both Adam moments, beside a few int32 scalars (step count, skipped-update counters).
  assert 0 <= shard_bytes(state.opt_state) - plan.optimizer <= 64
  assert plan.params < models.param_count(cfg) * 4 / 2  # Really sharded.


def test_the_sampler_caches_of_a_grpo_run_are_the_ones_the_model_builds():
  cfg = models.preset("tiny")
  config = ml_collections.ConfigDict({
      "rollouts": {"prompts": 8, "num_samples": 4, "max_new_tokens": 48},
      "axis_rules": AXIS_RULES, "accum_steps": 1})
  batch = {"prompt_inputs": np.zeros((8, 20), np.int32),
           "prompt_lengths": np.zeros((8,), np.int32),
           "completion_inputs": np.zeros((32, 48), np.int32),
           "loss_mask": np.zeros((32, 48), np.float32)}
  plan = memory.plan_for_run(config, cfg, {"data": 1, "fsdp": 1, "tensor": 1}, batch,
                             reference=True)
  # As `sampling.sampler` builds them: each prompt once in its 32-token bucket, and each of
  # its 4 samples' own max_new_tokens - 1 slots.
  cache = jax.eval_shape(lambda: SharedPrefixCache.create(models.init_cache(cfg, 8, 32), 4, 47))
  expected = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
      (cache.prefix_k, cache.prefix_v, cache.rows.k, cache.rows.v)))
  assert plan.kv_cache == expected
  assert plan.reference > plan.params  # Its parameters and its logits.
  # Prompts and completions: 8 x 20 + 32 x 48 tokens, in rows of 48.
  assert (plan.rows, plan.seq_len) == (-(-(8 * 20 + 32 * 48) // 48), 48)


def _cache_bytes(cfg, rows: int, slots: int) -> int:
  cache = jax.eval_shape(lambda: models.init_cache(cfg, rows, slots))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((cache.k, cache.v)))


def test_the_sampler_caches_of_self_play_and_distillation_runs():
  from configs import distill_arith, spiral_games
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  config = spiral_games.get_config("runlocal")
  cfg = models.config_from(config.sft.model.to_dict())
  s = config.self_play
  batch = {"prompt_inputs": np.zeros((8, s.prompt_width), np.int32),
           "completion_inputs": np.zeros((8, s.max_new_tokens), np.int32)}
  plan = memory.plan_for_run(config, cfg, mesh, batch, reference=False)
  # `TextPolicy`: `episodes` rows, prompts padded to prompt_width (a power of two here).
  assert plan.kv_cache == _cache_bytes(cfg, s.episodes, s.prompt_width + s.max_new_tokens)

  config = distill_arith.get_config("runlocal")
  teacher = models.config_from(config.sft.model.to_dict())
  student = models.config_from(config.student.to_dict())
  batch = {"inputs": np.zeros((config.batch_size, config.seq_len), np.int32)}
  d = config.distill
  # seq_len 64, max_new_tokens 32: prompts of up to 32 tokens, a 32-token bucket.
  slots = 32 + d.max_new_tokens
  on_policy = memory.plan_for_run(config, student, mesh, batch, reference=teacher)
  assert on_policy.kv_cache == _cache_bytes(student, config.batch_size, slots)
  d.source = "teacher"  # The teacher samples too: its larger cache.
  both = memory.plan_for_run(config, student, mesh, batch, reference=teacher)
  assert both.kv_cache == _cache_bytes(teacher, config.batch_size, slots) > on_policy.kv_cache
  d.update({"source": "gold", "on_policy_fraction": 0.0})  # Nothing samples.
  assert memory.plan_for_run(config, student, mesh, batch, reference=teacher).kv_cache == 0


def test_a_7b_model_is_refused_on_8_cpu_devices_naming_the_numbers_and_the_knob():
  mesh = {"data": 1, "fsdp": 8, "tensor": 1}
  plan = memory.plan(LLAMA2_7B, mesh_shape=mesh, rules=AXIS_RULES, batch_size=8, seq_len=2048,
                     backend="cpu")
  # Every weight splits its `embed` dim over fsdp; the norms' scales are replicated.
  norms = (2 * LLAMA2_7B.num_layers + 1) * LLAMA2_7B.hidden_size
  assert plan.params == 4 * ((models.param_count(LLAMA2_7B) - norms) // 8 + norms)
  available = memory.device_memory()
  with open("/proc/meminfo") as f:
    total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
  assert available[0] == pytest.approx(total_kib * 1024 / jax.local_device_count(), rel=0.01)
  # Parameters and Adam alone exceed a device's share: no batch size makes it fit.
  assert plan.params + plan.optimizer > available[0]
  with pytest.raises(memory.DoesNotFit) as info:
    memory.check_fits(plan, available)
  message = str(info.value)
  assert f"needs an estimated {plan.total / 2**30:.2f} GiB per device" in message
  assert f"a device has {available[0] / 2**30:.2f} GiB" in message
  assert "mesh.fsdp (now 8" in message and "optimizer state" in message
  memory.check_fits(plan, (plan.total, "exactly enough"))  # The boundary fits.


def test_the_loop_prints_the_plan_and_refuses_a_run_that_cannot_fit(tmp_path, monkeypatch,
                                                                     capsys):
  task, tokenizer = tasks.get_task("arithmetic"), tokenizers.load("synthetic")
  examples = [batching.sft_example(tokenizer, task.prompt(p), p.solution)
              for p in task.generate(32)]
  cfg = models.preset("tiny", vocab_size=512, num_layers=1, hidden_size=32,
                      intermediate_size=64, num_heads=2, num_kv_heads=1, head_dim=16)
  config = sft_arith.get_config("runlocal")
  common.loop(config, steps=1, batch_size=8, seq_len=64, learning_rate=1e-3, warmup_steps=1,
              checkpoint_every=0)
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  # The plan of this model is 0.69 MiB per device for the state, 0.89 MiB with this batch.
  # With 100 KiB, the state alone is refused before it is made.
  monkeypatch.setattr(memory, "device_memory", lambda: (100 << 10, "a test's 100 KiB"))

  def init_state(*args, **kwargs):
    raise AssertionError("the state was made")

  with monkeypatch.context() as m, pytest.raises(
      memory.DoesNotFit, match=r"before any batch, the parameters, gradients, optimizer state "
      r"and update need an estimated 0.7 MiB per device but a device has 0.1 MiB"):
    m.setattr(state_lib, "init_state", init_state)
    loop.train(config, str(tmp_path / "early"), cfg=cfg, loss_fn=loss_fn,
               batches=batching.batches(examples, batch_size=8, seq_len=64))
  monkeypatch.setattr(memory, "device_memory", lambda: (800 << 10, "a test's 800 KiB"))
  with pytest.raises(memory.DoesNotFit, match=r"this run needs an estimated 0.9 MiB per device "
                     r"but a device has 0.8 MiB \(a test's 800 KiB\)"):
    loop.train(config, str(tmp_path / "refused"), cfg=cfg, loss_fn=loss_fn,
               batches=batching.batches(examples, batch_size=8, seq_len=64))
  printed = capsys.readouterr().out
  assert "memory per device (estimate)" in printed and "total (peak)" in printed
  saved = tmp_path / "refused" / "checkpoints"
  assert not saved.exists() or not os.listdir(saved)
  # check_memory=False goes on to compile the step (the estimate may be wrong for a new model).

  class Compiling(Exception):
    pass

  def jit_train_step(*args, **kwargs):
    raise Compiling

  monkeypatch.setattr(step_lib, "jit_train_step", jit_train_step)
  config.check_memory = False
  with pytest.raises(Compiling):
    loop.train(config, str(tmp_path / "forced"), cfg=cfg, loss_fn=loss_fn,
               batches=batching.batches(examples, batch_size=8, seq_len=64))


def test_a_reference_of_another_shape_counts_its_own_parameters_and_logits():
  """A distillation teacher: its parameter bytes (the parameter tree's leaves, counted here
  from `param_shapes`) and its float32 logits over the tokens of a device's micro-batch."""
  student = models.preset("tiny", num_layers=1, hidden_size=64, intermediate_size=128,
                          vocab_size=512)
  teacher = models.preset("tiny", vocab_size=512)
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  kwargs = dict(mesh_shape=mesh, rules=AXIS_RULES, batch_size=4, seq_len=32)
  plan = memory.plan(student, reference=teacher, **kwargs)
  leaves = jax.tree.leaves(models.param_shapes(teacher))
  teacher_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
  assert plan.reference == teacher_bytes + 4 * 512 * 4 * 32
  same = memory.plan(teacher, reference=True, **kwargs)
  assert same.reference == memory.plan(teacher, reference=teacher, **kwargs).reference
