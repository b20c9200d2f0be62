"""Orbax checkpoints of a sharded TrainState and the data-iterator state."""


import jax
import numpy as np

from configs.common import AXIS_RULES
from reasonjax import checkpoint, models, sharding
from reasonjax.data import batching, tasks, tokenizers
from reasonjax.trainers import optim, state as state_lib

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
  assert ckpt.restore_latest(checkpoint.abstract_like(state, shardings)) is None
  for step in (5, 6, 7):
    ckpt.save(step, state, batches.get_state())
  ckpt.wait()
  expected_next = next(batches)

  restored, data_state = checkpoint.Checkpointer(str(tmp_path)).restore_latest(
      checkpoint.abstract_like(state, shardings))
  assert int(restored.step) == 7 and sorted(ckpt.manager.all_steps()) == [6, 7]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding  # restored straight into the mesh
  resumed = batching.batches(examples, batch_size=4, seq_len=64, seed=1)
  resumed.set_state(data_state)
  for key, value in next(resumed).items():
    np.testing.assert_array_equal(value, expected_next[key])
  ckpt.close()
