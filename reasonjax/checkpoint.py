"""Checkpoints of the training state and the data-iterator position, with orbax.

    ckpt = checkpoint.Checkpointer(workdir + "/checkpoints", max_to_keep=3)
    ckpt.save(step, state, data_state)                 # asynchronous; waits for the last one
    restored = ckpt.restore_latest(abstract_state)     # None if there is no checkpoint
    if restored: state, data_state = restored

The state is restored directly into the shardings of `abstract_state` (a pytree of
`jax.ShapeDtypeStruct` with shardings, e.g. from `jax.eval_shape` plus the state shardings), so
no host ever holds the whole model. The data state is the grain iterator's JSON state.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(state, shardings):
  """ShapeDtypeStructs of `state` in `shardings`: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


class Checkpointer:
  """Keeps the newest `max_to_keep` checkpoints under `directory`; saves run in the background."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, state, data_state: dict[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Starts saving `state` (and the data iterator's state) as `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any] | None]:
    """(state, data_state) of `step`, the state placed as `abstract_state` says."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if os.path.isdir(os.path.join(self.directory, str(step), "data")):
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored.get("data") if "data" in args else None

  def restore_latest(self, abstract_state):
    """`restore` of the newest checkpoint, or None when the directory has none."""
    step = self.latest_step()
    return None if step is None else self.restore(step, abstract_state)

  def wait(self):
    """Blocks until the last asynchronous save is on disk."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
