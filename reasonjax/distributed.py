"""Joining a multi-process JAX job (`jax.distributed`): one Python process per host (or per
group of local devices), all running the same program on one global device mesh.

    distributed.initialize("auto")   # in reasonjax.main, before anything touches a device

Where the job's shape comes from, first match wins:
  1. explicit `coordinator_address`, `num_processes`, `process_id` (`launch/local.py` passes
     them; on CPU the processes talk through gloo collectives);
  2. a launcher's environment that JAX reads itself: SLURM (`srun`, SLURM_NTASKS > 1), Open MPI
     (`mpirun`, OMPI_COMM_WORLD_SIZE > 1), or a Cloud TPU VM (a TPU runtime and TPU chips on
     this host; JAX asks the VM's metadata server for the slice's workers);
  3. none: one process, nothing to initialise.
`mode="on"` always calls `jax.distributed.initialize` (letting JAX detect what is not given);
`mode="off"` never does.

After it, process 0 alone writes logs, progress bars, metrics and exports (the programs check
`jax.process_index()`), and every process reads only its share of each global batch.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")


def _tpu_vm() -> bool:
  """A TPU runtime is installed and TPU chips are attached (/dev/accel* or /dev/vfio/*)."""
  return (importlib.util.find_spec("libtpu") is not None
          and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def cluster(env: Mapping[str, str] = os.environ) -> str | None:
  """The multi-process launcher that started this process: "slurm", "ompi", "tpu" or None."""
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  return "tpu" if _tpu_vm() else None


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Joins the job (module docstring); True when this process is part of a multi-process job.

  Raises:
    ValueError: an unknown mode, or only some of the three explicit fields given.
  """
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; expected one of {MODES}")
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if given and len(given) < 3:
    missing = sorted(set(explicit) - set(given))
    raise ValueError(f"--{', --'.join(given)} given without --{', --'.join(missing)}: a "
                     "process joins a job with all three, or none (detected from the launcher)")
  if mode == "off":
    if given:
      raise ValueError("--distributed=off with --coordinator_address: drop one of them")
    return False
  found = "flags" if given else cluster()
  if mode == "auto" and found is None:
    return False
  if found == "flags":
    # Harmless on accelerators; on CPU it is what carries the cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("process %d of %d (%s), %d local devices of %d", jax.process_index(),
               jax.process_count(), found or "detected by JAX", jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1


def share(items: Sequence) -> list:
  """This process's items of a job that splits independent work (problems to search):
  items[i::n] for process i of n; all of them in a one-process job."""
  return list(items[jax.process_index()::jax.process_count()])


def process_rng(rng: jax.Array) -> jax.Array:
  """This process's key for sampling its share of a job's work: `rng` folded with the process
  index in a multi-process job (so that processes draw independent samples), `rng` otherwise."""
  return rng if jax.process_count() == 1 else jax.random.fold_in(rng, jax.process_index())


def gather_json(value: Any) -> list:
  """Every process's JSON-able `value`, in process order, as JSON gives them back (tuples become
  lists): the same list on every process. Collective: all processes call it."""
  text = json.dumps(value)
  if jax.process_count() == 1:
    return [json.loads(text)]
  data = np.frombuffer(text.encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(len(data)))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:len(data)] = data
  texts = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(t[:n])) for t, n in zip(texts, lengths)]


def map_shared(fn: Callable[[list], Sequence], items: Sequence) -> list:
  """`fn` over `items` split between the processes: each applies `fn` to its `share` (fn:
  a list of items -> one JSON-able result per item) and the results are gathered back into the
  items' order, the same list on every process (as JSON gives them back). Collective."""
  part = share(items)
  mine = list(fn(part)) if part else []  # More processes than items: nothing to do here.
  if len(mine) != len(part):
    raise ValueError(f"map_shared: fn gave {len(mine)} results for {len(part)} items")
  out: list = [None] * len(items)
  count = jax.process_count()
  for index, part in enumerate(gather_json(mine)):
    out[index::count] = part
  return out


def barrier(name: str) -> None:
  """Waits until every process of the job reaches `barrier(name)`; nothing in one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def job_sum(values) -> np.ndarray:
  """float64 [K]: `values` [K] summed over the job's processes (the same on every process)."""
  values = np.asarray(values, np.float64)
  if jax.process_count() == 1:
    return values
  # Gathered as float32 (JAX without x64): exact for counts below 2^24.
  return np.asarray(multihost_utils.process_allgather(values), np.float64).sum(0)


def job_max(values) -> np.ndarray:
  """float64 [K]: the largest of `values` [K] over the job's processes."""
  values = np.asarray(values, np.float64)
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values), np.float64).max(0)
