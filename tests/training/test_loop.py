"""The training loop: exact resume after SIGTERM and SIGKILL, the non-finite stop, metrics."""

import functools
import glob
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, sft_arith
from reasonjax import checkpoint, models
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.metrics import read_jsonl
from reasonjax.programs import sft
from reasonjax.training import loop, step as step_lib
from tests.conftest import REPO, main_command

STEPS = 24
OVERRIDES = {"steps": STEPS, "checkpoint_every": 6, "log_every": 1, "eval.num_problems": 0}
# Fields that measure the machine, not the run.
TIMING = ("time", "step_seconds", "tokens_per_s", "mfu")


def sft_config():
  config = sft_arith.get_config("runlocal")
  for key, value in OVERRIDES.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def start_run(workdir):
  """The SFT run as a user starts it: a subprocess of reasonjax.main."""
  command = main_command("--config=configs/sft_arith.py:runlocal",
                         *[f"--config.{k}={v}" for k, v in OVERRIDES.items()], workdir=workdir)
  # The session's compilation cache (conftest) lets the resumed processes skip recompiling;
  # every program is kept, however fast it compiled.
  env = os.environ | {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def wait_for_checkpoint(workdir, step, process, timeout=240):
  """Blocks until checkpoint `step` is complete on disk (orbax renames it into place)."""
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if process.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}:\n{process.stderr.read()[-3000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError(f"no checkpoint {step} after {timeout}s")
    time.sleep(0.02)


def final_params(workdir):
  cfg, params = models.load({"hf_path": os.path.join(workdir, "hf")}, jax.random.key(0))
  return params


def comparable(rows):
  return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run, in this process."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  sft.run(sft_config(), workdir)
  return workdir


def test_sigterm_then_sigkill_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
  workdir = str(tmp_path)
  # 1. SIGTERM after the first checkpoint: saves the current step and exits 128 + 15.
  run = start_run(workdir)
  wait_for_checkpoint(workdir, 6, run)
  run.send_signal(signal.SIGTERM)
  _, err = run.communicate(timeout=120)
  assert run.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "stopped by SIGTERM" in err
  stopped_at = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  assert 6 <= stopped_at < STEPS
  # 2. Resume, then SIGKILL right after a later checkpoint: the steps after it are lost.
  run = start_run(workdir)
  later = (stopped_at // 6 + 1) * 6
  assert later < STEPS
  wait_for_checkpoint(workdir, later, run)
  run.kill()
  run.wait()
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert rows[-1]["step"] < STEPS  # It really died mid-run.
  # 3. Resume to the end.
  run = start_run(workdir)
  _, err = run.communicate(timeout=300)
  assert run.returncode == 0, err[-3000:]

  expected, got = final_params(reference), final_params(workdir)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
  # Same batches in the same order (crc32 of each batch), same losses: the metrics file of the
  # interrupted run equals the uninterrupted one's, redone steps included once.
  expected_rows = comparable(read_jsonl(os.path.join(reference, "metrics.jsonl")))
  got_rows = comparable(read_jsonl(os.path.join(workdir, "metrics.jsonl")))
  assert [r["step"] for r in got_rows] == list(range(1, STEPS + 1))
  assert [r["batch_crc32"] for r in got_rows] == [r["batch_crc32"] for r in expected_rows]
  np.testing.assert_allclose([r["loss"] for r in got_rows], [r["loss"] for r in expected_rows],
                             rtol=1e-6)


def test_metrics_and_outputs_of_a_run(reference):
  rows = read_jsonl(os.path.join(reference, "metrics.jsonl"))
  assert len(rows) == STEPS
  for row in rows[1:]:  # The first step's time includes compilation.
    assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["nonfinite_total"] == 0
    # Both are work over the same measured step time (not asserted below 1: the peak is measured
    # once, and other work on the machine changes the speed).
    np.testing.assert_allclose(row["mfu"] / row["tokens_per_s"],
                               rows[1]["mfu"] / rows[1]["tokens_per_s"], rtol=1e-6)
  assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
  # Learning rate: linear warmup over the configured steps, then decay.
  config = sft_config()
  warmup = config.optimizer.warmup_steps
  peak = config.optimizer.learning_rate
  np.testing.assert_allclose(rows[0]["learning_rate"], 0.0, atol=1e-12)
  np.testing.assert_allclose(rows[warmup]["learning_rate"], peak, rtol=1e-6)
  assert rows[-1]["learning_rate"] < peak
  events = os.listdir(os.path.join(reference, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)
  assert os.path.isfile(os.path.join(reference, "hf", "model.safetensors"))
  assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["18", "24"]  # keep 2


def _tiny_loop_config(**changes):
  config = sft_config()
  common.loop(config, steps=10, batch_size=8, seq_len=64, learning_rate=1e-3, warmup_steps=1,
              log_every=1, checkpoint_every=2)
  config.optimizer.max_nonfinite_steps = 3
  config.update(changes)
  return config


def _tiny_job():
  task = tasks.get_task("arithmetic")
  tokenizer = tokenizers.load("synthetic")
  examples = [batching.sft_example(tokenizer, task.prompt(p), p.solution)
              for p in task.generate(64)]
  cfg = models.preset("tiny", vocab_size=512, num_layers=1, hidden_size=32, intermediate_size=64,
                      num_heads=2, num_kv_heads=1, head_dim=16)
  return cfg, batching.batches(examples, batch_size=8, seq_len=64)


def test_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
  cfg, batches = _tiny_job()

  def nan_after_step_4(params, batch, rng, frozen, *, model):
    loss, aux = step_lib.sft_loss(params, batch, rng, model=model)
    # Loss and gradients turn NaN once the batch index (carried by the data) passes 4.
    return loss * jnp.where(batch["step"][0] > 4, jnp.nan, 1.0), aux

  class Counting:
    """Batches tagged with their index, so the loss can fail from a known step on."""

    def __init__(self, inner):
      self.inner, self.count = inner, 0

    def __next__(self):
      self.count += 1
      return next(self.inner) | {"step": np.full((8,), self.count, np.int32)}

    def get_state(self):
      return {"inner": self.inner.get_state(), "count": self.count}

    def set_state(self, state):
      self.inner.set_state(state["inner"])
      self.count = state["count"]

  loss_fn = functools.partial(nan_after_step_4, model=models.Model(cfg))
  with pytest.raises(loop.NonFiniteError, match=r"step 7: 3 consecutive steps had a non-finite"
                     r".*the checkpoint of step 4 .* is the last one saved"):
    loop.train(_tiny_loop_config(), str(tmp_path), cfg=cfg, loss_fn=loss_fn,
               batches=Counting(batches))
  ckpt = checkpoint.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  # Step 6 was a save point inside the streak: no checkpoint then.
  assert ckpt.steps() == [2, 4]
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["nonfinite_total"] for r in rows] == [0, 0, 0, 0, 1, 2, 3]
  assert [r["grad_norm"] is None for r in rows] == [False] * 4 + [True] * 3  # NaN -> null


def test_sigint_in_process_saves_and_raises_preempted(tmp_path):
  cfg, batches = _tiny_job()
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))

  class InterruptAt:
    def __init__(self, inner, at):
      self.inner, self.at, self.count = inner, at, 0

    def __next__(self):
      self.count += 1
      if self.count == self.at:
        os.kill(os.getpid(), signal.SIGINT)
      return next(self.inner)

    def get_state(self):
      return self.inner.get_state()

    def set_state(self, state):
      self.inner.set_state(state)

  handler = signal.getsignal(signal.SIGINT)
  with pytest.raises(loop.Preempted) as info:
    loop.train(_tiny_loop_config(), str(tmp_path), cfg=cfg, loss_fn=loss_fn,
               batches=InterruptAt(batches, 4))
  assert info.value.signum == signal.SIGINT
  # Batch 4 was fetched (prefetch) while step 3 ran; step 3 finished and was saved.
  ckpt = checkpoint.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert ckpt.latest_step() == info.value.step == 3
  assert signal.getsignal(signal.SIGINT) is handler  # Restored.


def test_an_overflowing_learning_rate_never_reaches_the_parameters_or_a_checkpoint(tmp_path):
  """1e39 is a finite Python float but infinite in float32: the gradients are finite, the
  updates are not. Every update is dropped, so no save point has a clean state."""
  cfg, batches = _tiny_job()
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  config = _tiny_loop_config()
  config.optimizer.learning_rate = 1e39
  config.optimizer.warmup_steps = 0  # Else step 1's rate is 0 * inf.
  with pytest.raises(loop.NonFiniteError, match="no checkpoint was saved"):
    loop.train(config, str(tmp_path), cfg=cfg, loss_fn=loss_fn, batches=batches)
  assert checkpoint.Checkpointer(os.path.join(tmp_path, "checkpoints")).steps() == []
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["nonfinite_streak"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["grad_norm"]) for r in rows)  # Finite gradients, dropped updates.


def test_a_nan_learning_rate_is_refused_at_start(tmp_path):
  cfg, batches = _tiny_job()
  config = _tiny_loop_config()
  config.optimizer.learning_rate = float("nan")
  with pytest.raises(ValueError, match="optimizer.learning_rate=nan; expected a finite number"):
    loop.train(config, str(tmp_path), cfg=cfg, batches=batches,
               loss_fn=functools.partial(step_lib.sft_loss, model=models.Model(cfg)))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_checkpoint_every_zero_saves_only_the_end(tmp_path):
  cfg, batches = _tiny_job()
  state, _ = loop.train(_tiny_loop_config(steps=4, checkpoint_every=0), str(tmp_path), cfg=cfg,
                        batches=batches,
                        loss_fn=functools.partial(step_lib.sft_loss, model=models.Model(cfg)))
  assert int(state.step) == 4
  assert checkpoint.Checkpointer(os.path.join(tmp_path, "checkpoints")).steps() == [4]
  with pytest.raises(ValueError, match=r"config.checkpoint_every=-1; expected 0 \(off"):
    loop.check_config(_tiny_loop_config(checkpoint_every=-1))


def test_a_faulty_last_checkpoint_resumes_from_the_one_before_as_if_stopped_there(tmp_path):
  """The newest checkpoint's data file is truncated after the run: the rerun warns, resumes from
  the previous checkpoint, and redoes the same batches with the same losses; the final
  evaluation is logged once."""
  cfg, _ = _tiny_job()
  loss_fn = functools.partial(step_lib.sft_loss, model=models.Model(cfg))
  evaluations = []

  def evaluate(params, rng):
    evaluations.append(1)
    return {"norm": float(jnp.linalg.norm(params["norm"]["scale"]))}

  config = _tiny_loop_config(steps=6, checkpoint_every=2)
  _, first = loop.train(config, str(tmp_path), cfg=cfg, loss_fn=loss_fn, batches=_tiny_job()[1],
                        evaluate=evaluate)
  reference = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  # A rerun of a finished run trains nothing and reuses its logged final evaluation.
  _, again = loop.train(config, str(tmp_path), cfg=cfg, loss_fn=loss_fn, batches=_tiny_job()[1],
                        evaluate=evaluate)
  assert again == first and len(evaluations) == 1
  directory = os.path.join(tmp_path, "checkpoints")
  for path in glob.glob(os.path.join(directory, "6", "state", "ocdbt.process_0", "d", "*")):
    os.truncate(path, 10)
  _, final = loop.train(config, str(tmp_path), cfg=cfg, loss_fn=loss_fn, batches=_tiny_job()[1],
                        evaluate=evaluate)
  assert len(evaluations) == 2 and final == pytest.approx(first)
  assert sorted(os.listdir(directory)) == ["4", "6", "6.faulty"]
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [r["step"] for r in reference]  # One final eval row.
  for got, want in zip(comparable(rows), comparable(reference)):
    assert got.keys() == want.keys() and got["step"] == want["step"]
    assert got.get("batch_crc32") == want.get("batch_crc32")
    np.testing.assert_allclose(got.get("loss", 0.0), want.get("loss", 0.0), rtol=1e-6)


def test_the_batch_fingerprint_leaves_out_timing_fields():
  batch = {"completion_inputs": np.arange(6, dtype=np.int32).reshape(2, 3),
           "rollout_sample_seconds": np.full(2, 1.5, np.float32),
           "rollout_sample_tokens_per_s": np.full(2, 900.0, np.float32)}
  slower = batch | {"rollout_sample_seconds": np.full(2, 2.5, np.float32),
                    "rollout_sample_tokens_per_s": np.full(2, 500.0, np.float32)}
  assert loop.batch_fingerprint(slower) == loop.batch_fingerprint(batch)
  other = batch | {"completion_inputs": batch["completion_inputs"] + 1}
  assert loop.batch_fingerprint(other) != loop.batch_fingerprint(batch)


def test_the_progress_bar_shows_the_rollout_reward(tmp_path, capsys):
  cfg, batches = _tiny_job()

  def with_reward(params, batch, rng, frozen, *, model):
    loss, (weight, metrics) = step_lib.sft_loss(params, batch, rng, model=model)
    return loss, (weight, metrics | {"rollout_reward_mean": jnp.float32(0.625)})

  loop.train(_tiny_loop_config(steps=3, checkpoint_every=0), str(tmp_path), cfg=cfg,
             batches=batches, loss_fn=functools.partial(with_reward, model=models.Model(cfg)))
  assert "reward=0.625" in capsys.readouterr().err
