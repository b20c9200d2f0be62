"""MetricWriter (JSONL, TensorBoard, resume, crash safety), read_jsonl and the matmul peak."""

import json
import math
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonjax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rows(workdir):
  """The rows of workdir/metrics.jsonl without the "time" field."""
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: crc32c rotated right by 15 bits plus a constant, mod 2^32."""
  from tensorboardX.crc32c import crc32c
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tb_events(logdir):
  """(tag, step, simple_value, wall_time) of every scalar in the event files under `logdir`.

  Each TFRecord: uint64 length (little-endian), masked crc32c of those 8 bytes, the serialized
  Event, masked crc32c of it.
  """
  from tensorboardX.proto import event_pb2
  scalars = []
  for name in sorted(os.listdir(logdir)):
    data = pathlib.Path(logdir, name).read_bytes()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
      payload = data[pos + 12:pos + 12 + length]
      (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
      assert header_crc == _masked_crc32c(header) and payload_crc == _masked_crc32c(payload)
      pos += 16 + length
      event = event_pb2.Event.FromString(payload)
      scalars += [(v.tag, event.step, v.simple_value, event.wall_time) for v in event.summary.value]
  return scalars


# ----------------------------------------------------------------------------- JSONL


def test_round_trip_of_python_numpy_and_jax_scalars(tmp_path):
  values = {
      "py_int": 3, "py_float": 0.25, "flag": True, "note": "warmup",
      "np_f32": np.float32(0.1), "np_i64": np.int64(-7), "np_0d": np.array(2.5),
      "np_1": np.array([4]), "jax_f32": jnp.float32(1.5), "jax_i32": jnp.int32(9),
      "jax_bf16": jnp.asarray(0.75, jnp.bfloat16),
      "nan": math.nan, "jax_nan": jnp.float32(jnp.nan), "inf": np.inf, "neg_inf": -math.inf,
  }
  before = time.time()
  with metrics.MetricWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(np.int64(5), values)
    writer.write(6, {"loss": 1.0})
  after = time.time()

  expected = {"step": 5, "py_int": 3, "py_float": 0.25, "flag": 1, "note": "warmup",
              "np_f32": float(np.float32(0.1)), "np_i64": -7, "np_0d": 2.5, "np_1": 4,
              "jax_f32": 1.5, "jax_bf16": 0.75, "jax_i32": 9,
              "nan": None, "jax_nan": None, "inf": None, "neg_inf": None}
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert _rows(tmp_path) == [expected, {"step": 6, "loss": 1.0}]
  for key in ("step", "py_int", "np_i64", "np_1", "jax_i32"):
    assert type(rows[0][key]) is int, key
  for key in ("np_f32", "np_0d", "jax_f32", "jax_bf16"):
    assert type(rows[0][key]) is float, key
  assert before <= rows[0]["time"] <= rows[1]["time"] <= after
  # Standard JSON: no NaN/Infinity tokens, which strict readers reject.
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    json.loads(line, parse_constant=lambda token: pytest.fail(f"non-standard JSON {token}"))


def test_prefix_applies_to_every_key(tmp_path):
  with metrics.MetricWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(10, {"accuracy": 0.5, "count": 3}, prefix="eval")
    writer.write(11, {"loss": 2.0})
  assert _rows(tmp_path) == [{"step": 10, "eval/accuracy": 0.5, "eval/count": 3},
                             {"step": 11, "loss": 2.0}]


def test_bad_values_raise_and_write_nothing(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with metrics.MetricWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(1, {"loss": 1.0})
    content = path.read_bytes()
    for array in (np.ones(3), jnp.ones((2, 2)), np.zeros((0,))):
      with pytest.raises(ValueError, match="eval/logits"):
        writer.write(2, {"accuracy": 0.5, "logits": array}, prefix="eval")
    with pytest.raises(ValueError, match="reserved"):
      writer.write(2, {"step": 3})
    with pytest.raises(TypeError, match="'config'"):
      writer.write(2, {"config": {"lr": 0.1}})
    assert path.read_bytes() == content
  with pytest.raises(ValueError):
    writer.write(3, {"loss": 1.0})  # closed


def test_read_jsonl_skips_a_torn_last_line_and_names_a_corrupt_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
  assert metrics.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
  path.write_bytes(b'{"step": 1}\n{"step": 2}')  # complete, only the newline missing: kept
  assert metrics.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
  path.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
    metrics.read_jsonl(str(path))
  path.write_bytes(b'{"step": 1}\n[1, 2]\n{"step": 3}\n')  # JSON, but not a row
  with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
    metrics.read_jsonl(str(path))


# ----------------------------------------------------------------------------- resume


def _train(workdir, steps, *, resume_step=None):
  """Logs a train row per step and an eval row every third step."""
  with metrics.MetricWriter(str(workdir), tensorboard=False, resume_step=resume_step) as writer:
    for step in steps:
      writer.write(step, {"loss": 1.0 / step})
      if step % 3 == 0:
        writer.write(step, {"accuracy": step / 10}, prefix="eval")


def test_resume_removes_exactly_the_rows_after_the_checkpoint(tmp_path):
  interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
  path = interrupted / "metrics.jsonl"
  _train(interrupted, range(1, 11))
  lines = path.read_bytes().splitlines(keepends=True)
  with open(path, "ab") as f:
    f.write(b'{"step": 11, "time": 17')  # the crash came in the middle of step 11's line

  metrics.MetricWriter(str(interrupted), tensorboard=False, resume_step=6).close()
  kept = [line for line in lines if json.loads(line)["step"] <= 6]
  assert len(kept) == 6 + 2  # steps 1-6 and the evals of steps 3 and 6
  assert path.read_bytes() == b"".join(kept)  # earlier rows untouched, byte for byte
  assert os.listdir(interrupted) == ["metrics.jsonl"]  # no temporary file left behind

  _train(interrupted, range(7, 13), resume_step=6)
  _train(uninterrupted, range(1, 13))
  assert _rows(interrupted) == _rows(uninterrupted)


def test_resume_without_a_file_and_appending_after_a_torn_line(tmp_path):
  with metrics.MetricWriter(str(tmp_path), tensorboard=False, resume_step=5) as writer:
    writer.write(6, {"loss": 0.5})
  path = tmp_path / "metrics.jsonl"
  with open(path, "ab") as f:
    f.write(b'{"step": 7, "lo')
  # A fresh writer (no resume_step) still drops the torn line, so the next row starts a line.
  with metrics.MetricWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(7, {"loss": 0.25})
  assert _rows(tmp_path) == [{"step": 6, "loss": 0.5}, {"step": 7, "loss": 0.25}]


def test_resume_refuses_a_file_corrupt_before_its_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  content = b'{"step": 1}\ngarbage\n{"step": 2}\n'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
    metrics.MetricWriter(str(tmp_path), tensorboard=False, resume_step=1)
  assert path.read_bytes() == content


def test_a_line_survives_sigkill_right_after_write(tmp_path):
  # tensorboard=False: tensorboardX imports torch, seconds that test nothing here.
  code = textwrap.dedent(f"""
      import os, signal
      from reasonjax import metrics
      writer = metrics.MetricWriter({str(tmp_path)!r}, tensorboard=False)
      writer.write(7, {{"loss": 0.5}})
      os.kill(os.getpid(), signal.SIGKILL)
      """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=os.environ | {"JAX_PLATFORMS": "cpu"}, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr  # killed, not a clean exit that flushes
  assert _rows(tmp_path) == [{"step": 7, "loss": 0.5}]


def test_processes_other_than_0_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  workdir = tmp_path / "run"
  with metrics.MetricWriter(str(workdir), resume_step=3) as writer:
    writer.write(1, {"loss": 1.0, "logits": np.ones(3)})  # values are not even looked at
    writer.flush()
  assert not workdir.exists()


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_match_the_jsonl(tmp_path):
  logdir = tmp_path / "tensorboard"
  with metrics.MetricWriter(str(tmp_path)) as writer:
    writer.write(3, {"loss": jnp.float32(0.5), "tokens": 7, "note": "text is JSONL only"})
    # Not read back before close: tensorboardX's flush does not wait for its writer thread.
    writer.flush()
    writer.write(4, {"accuracy": 0.25, "nan": math.nan}, prefix="eval")

  events = _tb_events(logdir)
  assert [(tag, step) for tag, step, _, _ in events] == [
      ("loss", 3), ("tokens", 3), ("eval/accuracy", 4), ("eval/nan", 4)]
  values = [value for _, _, value, _ in events]
  assert values[:3] == [0.5, 7.0, 0.25] and math.isnan(values[3])  # NaN is null in JSONL only
  times = {row["step"]: row["time"] for row in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))}
  assert [wall_time for _, _, _, wall_time in events] == [times[3], times[3], times[4], times[4]]


# ----------------------------------------------------------------------------- peak FLOP/s


@pytest.fixture
def fresh_peak_cache():
  metrics.peak_flops.cache_clear()
  yield
  metrics.peak_flops.cache_clear()


def test_matmul_peak_flops_is_a_sane_positive_number():
  for dtype in ("float32", "bfloat16"):
    flops = metrics.matmul_peak_flops(dtype, size=256, repeats=3)
    assert math.isfinite(flops) and 1e6 < flops < 1e15, (dtype, flops)


def test_matmul_peak_flops_is_2n3_over_the_median_time(monkeypatch):
  # Timed intervals 0.1, 0.4, 0.2 s: the median is 0.2 s.
  clock = iter([0.0, 0.1, 1.0, 1.4, 2.0, 2.2])
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
  flops = metrics.matmul_peak_flops("float32", size=64, repeats=3, devices=jax.devices()[:2])
  assert flops == pytest.approx(2 * 2 * 64**3 / 0.2, rel=1e-12)


def test_peak_flops_on_cpu_is_one_cached_measurement(monkeypatch, fresh_peak_cache):
  assert jax.local_devices()[0].platform == "cpu" and len(jax.local_devices()) > 1
  real, measured = metrics.matmul_peak_flops, []

  def measure(dtype):
    measured.append(real(dtype, size=256, repeats=3))
    return measured[-1]

  monkeypatch.setattr(metrics, "matmul_peak_flops", measure)
  peak = metrics.peak_flops("float32")
  # One measurement of all devices together, not one device's times their number: the fake
  # devices share the same cores.
  assert measured == [peak]
  assert metrics.peak_flops("float32") == peak and len(measured) == 1  # cached
  reference = real("float32", size=256, repeats=3)
  assert reference / 10 < peak < reference * 10


def test_peak_flops_with_a_data_sheet_entry_counts_every_device(monkeypatch, fresh_peak_cache):
  monkeypatch.setitem(metrics.DEVICE_PEAKS, jax.local_devices()[0].device_kind, 5e12)
  monkeypatch.setattr(metrics, "matmul_peak_flops", lambda dtype: pytest.fail("measured"))
  assert metrics.peak_flops("bfloat16") == 5e12 * len(jax.local_devices())
