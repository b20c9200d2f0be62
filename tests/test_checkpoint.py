"""Orbax checkpoints of a sharded TrainState and the data-iterator state; faulty checkpoints."""

import glob
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import AXIS_RULES
from reasonjax import checkpoint, models, sharding
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.training import optim, state as state_lib

CFG = models.preset("tiny", num_layers=1)


def test_sharded_state_and_data_position_round_trip(tmp_path):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  tx = optim.make_optimizer({})
  state, shardings = state_lib.init_state(CFG, tx, jax.random.key(0), mesh=mesh,
                                          rules=AXIS_RULES)
  state = state.replace(step=state.step + 7)
  tok = tokenizers.load("synthetic")
  task = tasks.get_task("arithmetic")
  examples = [batching.sft_example(tok, task.prompt(p), p.solution)
              for p in task.generate(40, seed=0)]
  batches = batching.batches(examples, batch_size=4, seq_len=64, seed=1)
  for _ in range(3):
    next(batches)
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  assert ckpt.restore_for_resume(checkpoint.abstract_like(state, shardings)) is None
  for step in (5, 6, 7):
    ckpt.save(step, state, batches.get_state())
  ckpt.wait()
  expected_next = next(batches)

  step, restored, data_state = checkpoint.Checkpointer(str(tmp_path)).restore_for_resume(
      checkpoint.abstract_like(state, shardings))
  assert step == int(restored.step) == 7 and sorted(ckpt.manager.all_steps()) == [6, 7]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding  # restored straight into the mesh
  resumed = batching.batches(examples, batch_size=4, seq_len=64, seed=1)
  resumed.set_state(data_state)
  for key, value in next(resumed).items():
    np.testing.assert_array_equal(value, expected_next[key])
  ckpt.close()


def _small_state(offset: float = 0.0):
  return {"w": jnp.arange(1000, dtype=jnp.float32) + offset,
          "b": {"x": jnp.ones((4, 5), jnp.bfloat16) * offset, "n": jnp.int32(7)}}


def _save_steps(directory, steps=(1, 2), config=None):
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  for step in steps:
    ckpt.save(step, _small_state(step), {"position": step}, config=config, force=True)
  ckpt.close()


def _abstract(state=None):
  state = _small_state() if state is None else state
  return checkpoint.abstract_like(state, jax.tree.map(lambda x: x.sharding, state))


def _truncate_data(step_dir):
  for path in glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")):
    os.truncate(path, 10)


def _empty_metadata(step_dir):
  open(os.path.join(step_dir, "state", "_METADATA"), "w").close()


def _garbage_manifest(step_dir):
  with open(os.path.join(step_dir, "state", "manifest.ocdbt"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(300))


def _flip_a_bit(step_dir):
  """One bit of the largest data file: decodes fine, but to other numbers."""
  path = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
             key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  with open(path, "wb") as f:
    f.write(bytes(data))


@pytest.mark.parametrize("corrupt, reason", [
    (_truncate_data, r"state/.*not valid for value of size 10"),
    (_empty_metadata, r"2/state/_METADATA \(0 bytes\) is not valid JSON"),
    (_garbage_manifest, r"manifest.ocdbt.*Error decoding manifest"),
    (_flip_a_bit, r"differs from what was saved \(checksum mismatch"),
])
def test_a_faulty_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, corrupt,
                                                                    reason):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory)
  corrupt(os.path.join(directory, "2"))
  ckpt = checkpoint.Checkpointer(directory)
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint step 2: .*" + reason):
    ckpt.restore(2, _abstract())
  # "newest" refuses and says how to fall back; nothing moves.
  with pytest.raises(checkpoint.CheckpointError, match="resume_from=newest_intact"):
    ckpt.restore_for_resume(_abstract(), resume_from="newest")
  assert sorted(os.listdir(directory)) == ["1", "2"]
  capfd.readouterr()
  step, state, data_state = ckpt.restore_for_resume(_abstract())
  assert step == 1 and data_state == {"position": 1}
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(_small_state(1))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  err = capfd.readouterr().err
  assert "checkpoint step 2" in err and "moved to" in err
  assert "Event loop is closed" not in err and len(err.splitlines()) <= 3
  # Set aside, not deleted; a new save of step 2 then works.
  assert sorted(os.listdir(directory)) == ["1", "2.faulty"]
  ckpt.save(2, _small_state(2), {"position": 2}, force=True)
  ckpt.close()
  assert checkpoint.Checkpointer(directory).restore_for_resume(_abstract())[0] == 2


def test_no_intact_checkpoint_lists_every_fault(tmp_path):
  directory = str(tmp_path)
  _save_steps(directory)
  _empty_metadata(os.path.join(directory, "1"))
  _truncate_data(os.path.join(directory, "2"))
  with pytest.raises(checkpoint.CheckpointError, match=r"no intact checkpoint(.|\n)*step 2(.|\n)*"
                     r"step 1(.|\n)*Nothing was deleted"):
    checkpoint.Checkpointer(directory).restore_for_resume(_abstract())


def test_resume_from_a_named_step_sets_the_newer_ones_aside(tmp_path):
  directory = str(tmp_path)
  _save_steps(directory, steps=(1, 2, 3))
  ckpt = checkpoint.Checkpointer(directory)
  step, state, _ = ckpt.restore_for_resume(_abstract(), resume_from="2")
  assert step == 2 and float(state["w"][0]) == 2.0
  assert sorted(os.listdir(directory)) == ["1", "2", "3.superseded", "resumed_from_step"]
  # The run goes on from 2; a rerun of the same command resumes from its progress, not 2 again.
  ckpt.save(4, _small_state(4), {"position": 4}, force=True)
  ckpt.wait()
  assert ckpt.restore_for_resume(_abstract(), resume_from="2")[0] == 4
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"no checkpoint of step 7 .* steps \[1, 2, 4\]"):
    ckpt.restore_for_resume(_abstract(), resume_from="7")


def test_a_checkpoint_of_another_config_names_the_arrays_and_the_changed_keys(tmp_path):
  directory = str(tmp_path)
  _save_steps(directory, config={"model": {"hidden_size": 128}, "seed": 0})
  other = _small_state() | {"w": jnp.zeros(1001, jnp.float32)}
  with pytest.raises(checkpoint.ConfigMismatchError) as info:
    checkpoint.Checkpointer(directory).restore_for_resume(
        _abstract(other), config={"model": {"hidden_size": 256}, "seed": 0})
  message = str(info.value)
  assert "w: (1000,) float32 in the checkpoint, (1001,) float32 in this run" in message
  assert "model.hidden_size: 128 -> 256" in message and "new --workdir" in message
  assert sorted(os.listdir(directory)) == ["1", "2"]  # No fallback: both are of the old config.


def test_checksums_catch_every_single_bit_flip():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)), jnp.float32)
  base = checkpoint.checksums({"x": x})["x"]
  bits = np.asarray(x).view(np.uint32)
  for index in range(bits.size):
    for bit in (0, 13, 31):
      flipped = bits.copy().reshape(-1)
      flipped[index] ^= np.uint32(1 << bit)
      value = jnp.asarray(flipped.reshape(bits.shape).view(np.float32))
      assert checkpoint.checksums({"x": value})["x"] != base
  # Sharded and unsharded copies agree.
  mesh = sharding.make_mesh(data=8)
  sharded = jax.device_put(jnp.tile(x, (8, 1)), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")))
  assert (checkpoint.checksums({"x": sharded}) ==
          checkpoint.checksums({"x": jnp.asarray(np.tile(np.asarray(x), (8, 1)))}))


def test_a_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
  """A full disk: a 700 KiB tmpfs holds one checkpoint of this state, not two."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(100_000,)), jnp.float32)}
    ckpt = checkpoint.Checkpointer(str(mount / "checkpoints"), max_to_keep=5)
    ckpt.save(1, big, force=True)
    ckpt.wait()
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"saving the checkpoint of step 2 .* failed: .*the checkpoint of "
                             r"step 1 is intact"):
      ckpt.save(2, jax.tree.map(lambda x: x + 1, big), force=True)
      ckpt.wait()
    restored = checkpoint.Checkpointer(str(mount / "checkpoints")).restore(1, _abstract(big))[0]
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(big["w"]))
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)
