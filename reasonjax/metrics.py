"""Training metrics: a JSONL + TensorBoard writer, and the machine's matmul peak (for MFU).

    with metrics.MetricWriter(workdir, resume_step=restored_step) as writer:  # None: fresh run
      writer.write(step, {"loss": loss, "lr": lr})           # workdir/metrics.jsonl, tensorboard/
      writer.write(step, {"accuracy": acc}, prefix="eval")   # key "eval/accuracy"
    rows = metrics.read_jsonl(f"{workdir}/metrics.jsonl")    # [{"step": 1, "time": ..., ...}, ...]

    peak = metrics.peak_flops("float32")     # FLOP/s of all local devices together
    mfu = model_flops_per_s / peak

metrics.jsonl holds one JSON object per line, `{"step", "time", **metrics}`, in standard JSON:
NaN and infinities are written as null. On multi-host runs only process 0 writes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peaks per chip from the vendors' data sheets (FLOP/s). fp32 matmuls on these chips
# run through the same units at lower precision, so MFU is quoted against the bf16 peak.
DEVICE_PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # what a v5p VM reports as its device_kind
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def matmul_peak_flops(dtype: str = "float32", *, size: int = 1024, repeats: int = 5,
                      devices=None) -> float:
  """Measured FLOP/s of `devices` (default: all local ones) together, each multiplying two
  `size`^2 matrices at once (f32 accumulation); median of `repeats`.

  The denominator of MFU where no data-sheet peak is known (CPUs). Measuring all devices at once
  matters there: fake CPU devices (--xla_force_host_platform_device_count) share the cores, and
  one of them alone reaches only part of the machine's peak. Takes about a second.
  """
  devices = list(devices if devices is not None else jax.local_devices())
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  a = jax.device_put(np.ones((len(devices), size, size), jnp.dtype(dtype)), sharded)
  matmul = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y,
                                           preferred_element_type=jnp.float32),
                   out_shardings=sharded)
  times = []
  # Its own mesh: a caller's (a multi-process job's) would span other processes' devices.
  with jax.set_mesh(mesh):
    matmul(a, a).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, a).block_until_ready()
      times.append(time.perf_counter() - start)
  return 2 * len(devices) * size**3 / float(np.median(times))


@functools.cache
def peak_flops(dtype: str = "float32") -> float:
  """Peak FLOP/s of all local devices: the data-sheet value per chip times their number, else
  measured on all of them at once (cached)."""
  devices = jax.local_devices()
  per_device = DEVICE_PEAKS.get(devices[0].device_kind)
  if per_device is None:
    return matmul_peak_flops(dtype)
  return per_device * len(devices)


# ----------------------------------------------------------------------------- metric writer


class MetricWriter:
  """Appends metrics to <workdir>/metrics.jsonl and TensorBoard events in <workdir>/tensorboard.

  Each `write` is one line `{"step": step, "time": unix_seconds, **metrics}`, handed to the OS
  before `write` returns, so a killed process loses no logged step. Only process 0 writes: on the
  other hosts of a multi-host run every method is a no-op, so all processes run the same loop
  (create the writer after `jax.distributed.initialize`).

  Args:
    workdir: folder of the run, created if missing.
    tensorboard: also log each number as a TensorBoard scalar, tagged with its JSONL key.
    resume_step: S when the run resumes from the checkpoint of step S. Lines with step > S were
      written by steps that are redone now; they are removed first, so the file ends up as that of
      an uninterrupted run apart from "time". None for a fresh run (lines are appended).
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = self._tb = None
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    _trim(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      import tensorboardX  # Not at the top: it imports torch where installed (seconds).
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
    """Logs `metrics` at `step`, with keys f"{prefix}/{name}" when `prefix` is given.

    Args:
      step: the training step.
      metrics: name -> python number, numpy or jax scalar (or one-element array), or str.
        Integers (and bools) become ints, other numbers floats; NaN and infinities are null in the JSONL
        (TensorBoard gets the float); strings go to the JSONL only.

    Raises:
      ValueError: an array without exactly one element, or a key "step" or "time".
    """
    if self._file is None:
      return  # Not process 0. Return before touching the values: they may live on other hosts.
    keys = [f"{prefix}/{name}" if prefix else name for name in metrics]
    values = {key: _scalar(key, value) for key, value in zip(keys, metrics.values())}
    if reserved := values.keys() & {"step", "time"}:
      raise ValueError(f"Metric names {sorted(reserved)} are reserved for the step and the time.")
    step, now = int(step), time.time()
    json_values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                   for k, v in values.items()}
    self._file.write(json.dumps({"step": step, "time": now} | json_values, allow_nan=False) + "\n")
    # Python's buffer to the OS: the line survives a SIGKILL now (fsync would cost a disk round trip
    # per step, for the rarer loss of the whole machine).
    self._file.flush()
    if self._tb is not None:
      for key, value in values.items():
        if not isinstance(value, str):
          self._tb.add_scalar(key, float(value), step, walltime=now)

  def flush(self) -> None:
    """Flushes TensorBoard's event file; JSONL lines are on disk already.

    Best effort: tensorboardX hands events to a writer thread and its flush does not wait for that
    queue, so events still in it follow within `flush_secs` (30 s here). `close` writes all of them.
    """
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both files; `write` then raises."""
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl file, a dict each; a torn last line (crash mid-write) is skipped.

  Raises:
    ValueError: naming `path:line`, for a corrupt line before the last.
  """
  with open(path, "rb") as f:
    return [row for _, row in _parse(path, f.readlines())]


def _scalar(key: str, value: Any) -> int | float | str:
  """`value` as a python int, float or str; arrays must have exactly one element."""
  if isinstance(value, str):
    return value
  array = np.asarray(value)  # numpy and jax scalars and arrays (a jax array comes to the host here)
  if array.size != 1:
    raise ValueError(f"Metric {key!r} has shape {array.shape}; only scalars can be logged.")
  if array.dtype.kind in "biu":
    return int(array.reshape(()))
  if array.dtype.kind in "fV":  # "V": bfloat16 and the other ml_dtypes floats
    return float(array.astype(np.float64).reshape(()))
  raise TypeError(f"Metric {key!r} is a {type(value).__name__}; expected a real number or a str.")


def _parse(path: str, lines: list[bytes]) -> list[tuple[bytes, dict[str, Any]]]:
  """(line, row) of each non-blank line. A torn last line is dropped; any other must parse."""
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict):
        raise ValueError(f"not a JSON object: {row!r}")
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
      if i == len(lines) - 1:
        break  # A crash while the line was being written: that step was never logged.
      raise ValueError(f"{path}:{i + 1}: corrupt metrics line: {e}") from e
    rows.append((line, row))
  return rows


def _trim(path: str, resume_step: int | None) -> None:
  """Drops a torn last line and, with `resume_step`, rows of later steps; atomic rewrite, if any."""
  try:
    with open(path, "rb") as f:
      lines = f.readlines()
  except FileNotFoundError:
    return
  # A last line without its newline ends with one now, so that appended lines stay separate.
  kept = b"".join(line.rstrip(b"\n") + b"\n" for line, row in _parse(path, lines)
                  if resume_step is None or row["step"] <= resume_step)
  if kept == b"".join(lines):
    return
  # Into a temporary file in the same folder, then os.replace: a crash leaves the old file or the
  # new one, never half of either.
  fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".metrics.jsonl.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    os.remove(tmp_path)
    raise
