"""Checkpoints of the training state and the data-iterator position, with orbax.

    ckpt = checkpoint.Checkpointer(workdir + "/checkpoints", max_to_keep=3)
    ckpt.save(step, state, data_state, config=config_dict)  # asynchronous
    found = ckpt.restore_for_resume(abstract_state, resume_from="newest_intact", config=config_dict)
    if found: step, state, data_state = found

The state is restored directly into the shardings of `abstract_state` (a pytree of
`jax.ShapeDtypeStruct` with shardings, e.g. from `jax.eval_shape` plus the state shardings), so
no host ever holds the whole model. The data state is the grain iterator's JSON state.

Each checkpoint also holds a small JSON item `meta`: a checksum of every state leaf (`checksums`,
verified at restore, so flipped bits are found instead of trained on) and the run's config (so a
checkpoint that no longer fits the config names the config keys that changed). Any fault while
reading a checkpoint — a truncated data file, an empty or garbled metadata file, a checksum that
does not match, a shape that does not fit — raises `CheckpointError` with one message naming the
step, the file and the reason. `restore_for_resume` then falls back to the newest intact
checkpoint (with a warning), as `resume_from` allows; faulty checkpoints are moved aside
(`<step>.faulty`), never deleted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging as logging_lib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

RESUME_FROM = ("newest_intact", "newest")  # or a step number, as a string
FAULTY_SUFFIX = ".faulty"  # A checkpoint that failed to read back, set aside.
SUPERSEDED_SUFFIX = ".superseded"  # Newer than a step named in resume_from, set aside.
# A named step is honoured once: reruns with the same command continue from their own progress.
RESUMED_FROM_FILE = "resumed_from_step"
_SETTLE_S = 1.0  # After a failed read: time for tensorstore's reads in flight to end, muted.


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message names the step, the file and why."""


class ConfigMismatchError(CheckpointError):
  """The checkpoint is intact but was written for another state shape (another config)."""


def abstract_like(state, shardings):
  """ShapeDtypeStructs of `state` in `shardings`: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (an 8-byte element gives two, a 2-byte one is widened)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


@jax.jit
def _leaf_checksums(leaves: list[jax.Array]) -> jax.Array:
  """uint32 [L]: sum_i bits_i * (2 i + 1) mod 2^32 per leaf.

  The weights are odd, so flipping bit k of word i changes the sum by 2^k (2 i + 1) mod 2^32,
  never 0: every single-bit fault is caught, and so is moving a value to another index. Integer
  sums do not depend on the order of the reduction, so sharded and gathered leaves agree.
  """
  out = []
  for x in leaves:
    words = _as_uint32(x).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    out.append(jnp.sum(words * weights, dtype=jnp.uint32))
  return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def _name(path) -> str:
  """'params.layers_0.mlp.up_proj.kernel': a leaf's path, the same for a dataclass or NamedTuple
  and for the nested dicts orbax stores it as."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _named_leaves(tree) -> dict[str, Any]:
  return {_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def checksums(state) -> dict[str, int]:
  """{leaf path: checksum} of a (possibly sharded) pytree of arrays; computed on the devices."""
  leaves = _named_leaves(state)
  values = np.asarray(jax.device_get(_leaf_checksums(list(leaves.values()))))
  return {name: int(v) for name, v in zip(leaves, values)}


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
  """'key: old -> new' for every leaf that differs between two nested config dicts."""
  changes = []
  for key in sorted(set(old) | set(new), key=str):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      changes += config_changes(a, b, f"{prefix}{key}.")
    elif a != b:
      changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return changes


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """A failed orbax read leaves coroutines and futures that print 'Event loop is closed' and
  'exception was never retrieved' tracebacks when they are collected (~150 lines for one bad
  file, through sys.unraisablehook and asyncio's logger): collect them here, silently. The
  error itself is raised, as one line (`_reason`)."""
  hook, asyncio_logger = sys.unraisablehook, logging_lib.getLogger("asyncio")
  sys.unraisablehook = lambda unraisable: None
  asyncio_logger.disabled = True
  try:
    yield
  except BaseException:
    # The reads still in flight end on tensorstore's threads after the first one failed: let
    # them end while their complaints are muted.
    time.sleep(_SETTLE_S)
    raise
  finally:
    gc.collect()
    sys.unraisablehook = hook
    asyncio_logger.disabled = False


def _innermost(error: BaseException) -> BaseException:
  seen = {id(error)}
  while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
    seen.add(id(inner))
    error = inner
  return error


def _reason(step_dir: str, error: BaseException) -> str:
  """One line: which file of `step_dir` is at fault and why."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      if name in ("_CHECKPOINT_METADATA", "_METADATA", "metadata"):
        path = os.path.join(root, name)
        try:
          with open(path, "rb") as f:
            json.loads(f.read())
        except (OSError, ValueError) as e:
          size = os.path.getsize(path)
          return f"{path} ({size} bytes) is not valid JSON: {e}"
  inner = _innermost(error)
  # tensorstore appends its whole JSON spec to the message: the path and reason come before it.
  text = str(inner).split("\n")[0].split(" [tensorstore_spec")[0].strip() or type(inner).__name__
  return (text[:400] + " ...") if len(text) > 400 else text


class Checkpointer:
  """Keeps the newest `max_to_keep` checkpoints under `directory`; saves run in the background."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._last_saved = -1  # The step of the last save started, for error messages.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save))

  def _failed_save(self, step: int, error: BaseException) -> CheckpointError:
    intact = [s for s in self.steps() if s != step]
    kept = (f"the checkpoint of step {max(intact)} is intact" if intact
            else "no earlier checkpoint exists")
    return CheckpointError(
        f"saving the checkpoint of step {step} in {self.directory} failed: "
        f"{_reason(os.path.join(self.directory, str(step)), error)}; {kept}. Free disk space or "
        "fix the directory, then rerun the same command to resume.")

  def save(self, step: int, state, data_state: dict[str, Any] | None = None, *,
           config: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Starts saving `state`, its checksums, `config` and the data iterator's state as `step`.

    Raises:
      CheckpointError: this save, or the previous asynchronous one, failed.
    """
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave({"checksums": checksums(state), "config": config})}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    self.wait()  # A failure of the previous save is reported as that save's.
    self._last_saved = step
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    except Exception as e:  # noqa: BLE001
      raise self._failed_save(step, e) from e
    return saved

  def steps(self) -> list[int]:
    """Steps of the committed checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state, *, config: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any] | None]:
    """(state, data_state) of `step`, the state placed as `abstract_state` says and verified
    against its checksums.

    Args:
      step: the checkpoint's step.
      abstract_state: the restore target (`abstract_like`).
      config: this run's config as a dict: when the checkpoint does not fit `abstract_state`,
        the error lists the config keys that changed since the checkpoint was written.

    Raises:
      CheckpointError: the checkpoint cannot be read, is corrupt, or does not fit.
    """
    step_dir = os.path.join(self.directory, str(step))
    items = set(os.listdir(step_dir)) if os.path.isdir(step_dir) else set()
    try:
      with _quiet_orbax():
        meta = (self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                ["meta"] if "meta" in items else None)
        stored = self.manager.item_metadata(step)["state"].tree
    except Exception as e:  # noqa: BLE001 -- any fault becomes one readable message
      raise CheckpointError(f"checkpoint step {step}: {_reason(step_dir, e)}") from e
    self._check_fits(step, stored, abstract_state, meta, config)
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if "data" in items:
      args["data"] = ocp.args.JsonRestore()
    try:
      with _quiet_orbax():
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint step {step}: {_reason(step_dir, e)}") from e
    state = restored["state"]
    if meta is None:
      logging.warning("checkpoint step %d has no checksums (written by an older version): not "
                      "verified", step)
    else:
      expected, got = meta["checksums"], checksums(state)
      bad = sorted(k for k in got if expected.get(k) != got[k])
      if bad:
        raise CheckpointError(
            f"checkpoint step {step}: the data of {len(bad)} array(s) in {step_dir}/state "
            f"differs from what was saved (checksum mismatch: {', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the files are corrupt")
    return state, restored.get("data") if "data" in args else None

  def _check_fits(self, step: int, stored, abstract_state, meta, config) -> None:
    """Raises a CheckpointError naming the leaves (and config keys) that changed."""
    stored_leaves, wanted = _named_leaves(stored), _named_leaves(abstract_state)
    problems = [f"{k} missing in the checkpoint" for k in wanted if k not in stored_leaves]
    problems += [f"{k} not in this run's state" for k in stored_leaves if k not in wanted]
    problems += [f"{k}: {tuple(stored_leaves[k].shape)} {np.dtype(stored_leaves[k].dtype)} in the "
                 f"checkpoint, {tuple(v.shape)} {np.dtype(v.dtype)} in this run"
                 for k, v in wanted.items()
                 if k in stored_leaves and (tuple(stored_leaves[k].shape) != tuple(v.shape)
                                            or np.dtype(stored_leaves[k].dtype) != v.dtype)]
    if not problems:
      return
    changes = (config_changes(meta["config"], config)
               if meta and meta.get("config") is not None and config is not None else [])
    said = (f" The config changed since it was written: {'; '.join(changes[:10])}."
            if changes else "")
    raise ConfigMismatchError(
        f"checkpoint step {step} in {self.directory} does not fit this run's state "
        f"({len(problems)} arrays differ: {'; '.join(problems[:5])}"
        f"{'; ...' if len(problems) > 5 else ''}).{said} Use a new --workdir for a run with "
        "another model or optimizer, or rerun with the config that wrote it.")

  def _set_aside(self, step: int, suffix: str = FAULTY_SUFFIX) -> str:
    """Renames a checkpoint out of orbax's sight (never deleted); returns the new path."""
    source = os.path.join(self.directory, str(step))
    target, n = source + suffix, 1
    while os.path.exists(target):
      n += 1
      target = f"{source}{suffix}{n}"
    if jax.process_index() == 0:
      os.rename(source, target)
    self.manager.reload()
    return target

  def restore_for_resume(self, abstract_state, *, resume_from: str = "newest_intact",
                         config: dict[str, Any] | None = None
                         ) -> tuple[int, Any, dict[str, Any] | None] | None:
    """(step, state, data_state) to resume from, or None when there is no checkpoint.

    Args:
      abstract_state: the restore target.
      resume_from: "newest_intact": the newest checkpoint that reads back intact, warning about
        each newer one that does not (which is set aside as `<step>.faulty`); "newest": the
        newest, or a CheckpointError; "<step>": that step, once (newer checkpoints are set aside
        as `<step>.superseded`, so the run continues from it; a rerun with the same value then
        resumes from its own newest checkpoint).
      config: this run's config as a dict (see `restore`).

    Raises:
      CheckpointError: no usable checkpoint under the policy (the message lists each fault).
    """
    steps = self.steps()
    if not steps:
      if resume_from not in RESUME_FROM:
        raise CheckpointError(f"config.resume_from={resume_from!r}: {self.directory} holds no "
                              "checkpoint")
      return None
    marker = os.path.join(self.directory, RESUMED_FROM_FILE)
    if resume_from not in RESUME_FROM and os.path.isfile(marker):
      with open(marker) as f:
        if f.read().strip() == resume_from:
          # Honoured by an earlier run, whose later checkpoints are this run's progress.
          resume_from = "newest_intact"
    if resume_from in RESUME_FROM:
      candidates = steps[::-1] if resume_from == "newest_intact" else steps[-1:]
    else:
      step = int(resume_from)
      if step not in steps:
        raise CheckpointError(f"config.resume_from={resume_from!r}: no checkpoint of step {step} "
                              f"in {self.directory}; it holds steps {steps}")
      candidates = [step]
    faults = []
    for step in candidates:
      try:
        state, data_state = self.restore(step, abstract_state, config=config)
      except ConfigMismatchError:
        raise  # Older checkpoints were written by the same config: no fallback can help.
      except CheckpointError as e:
        faults.append(str(e))
        if resume_from != "newest_intact":
          raise CheckpointError(f"{e}. Nothing was deleted; rerun with "
                                "--config.resume_from=newest_intact to resume from the newest "
                                "intact checkpoint, or name a step.") from e
        print(f"warning: {e}; trying an older checkpoint", file=sys.stderr, flush=True)
        continue
      named = resume_from not in RESUME_FROM
      for newer in [s for s in self.steps() if s > step]:
        moved = self._set_aside(newer, SUPERSEDED_SUFFIX if named else FAULTY_SUFFIX)
        print(f"warning: resuming from step {step}: the checkpoint of step {newer} is moved to "
              f"{moved} (not deleted)", file=sys.stderr, flush=True)
      if named and jax.process_index() == 0:
        with open(marker, "w") as f:
          f.write(resume_from)
      return step, state, data_state
    raise CheckpointError("no intact checkpoint in " + self.directory + ":\n  "
                          + "\n  ".join(faults) + "\nNothing was deleted.")

  def wait(self):
    """Blocks until the last asynchronous save is on disk.

    Raises:
      CheckpointError: that save failed.
    """
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._failed_save(self._last_saved, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()
