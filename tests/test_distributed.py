import os

import pytest

from reasonjax import distributed


def test_the_launcher_is_read_from_the_environment():
  slurm = {"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_JOB_ID": "7"}
  assert distributed.cluster(slurm) == "slurm"
  # A one-task SLURM allocation (an interactive shell, a single-node job) is one process.
  assert distributed.cluster(slurm | {"SLURM_NTASKS": "1"}) != "slurm"
  assert distributed.cluster({"SLURM_NTASKS": "4"}) != "slurm"  # sbatch shell, outside srun
  assert distributed.cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "ompi"
  assert distributed.cluster({"OMPI_COMM_WORLD_SIZE": "1"}) is None  # this machine: no TPU


def test_one_process_joins_nothing_and_bad_flags_are_named():
  assert distributed.initialize("auto") is False
  assert distributed.initialize("off") is False
  with pytest.raises(ValueError, match="expected one of"):
    distributed.initialize("yes")
  with pytest.raises(ValueError, match="--num_processes, --process_id given without "
                                       "--coordinator_address"):
    distributed.initialize("auto", num_processes=2, process_id=0)
  with pytest.raises(ValueError, match="drop one of them"):
    distributed.initialize("off", "127.0.0.1:1", 2, 0)


def test_map_shared_and_gather_json_in_one_process():
  calls = []

  def fn(part):
    calls.append(list(part))
    return [(x, x * x) for x in part]

  assert distributed.map_shared(fn, range(5)) == [[x, x * x] for x in range(5)]  # JSON's form
  assert calls == [[0, 1, 2, 3, 4]]
  assert distributed.gather_json({"a": (1, 2)}) == [{"a": [1, 2]}]
  with pytest.raises(ValueError, match="fn gave 1 results for 2 items"):
    distributed.map_shared(lambda part: [0], ["a", "b"])


# Run by each process of test_map_shared_splits_and_gathers_in_three_processes: prints what it
# saw as JSON on its last line.
_WORKER = """
import json, sys
import jax
from reasonjax import distributed
distributed.initialize("on", sys.argv[1], 3, int(sys.argv[2]))
seen = []
def fn(part):
  seen.extend(part)
  return [{"item": x, "by": jax.process_index()} for x in part]
out = distributed.map_shared(fn, list("abcdefg"))
few = distributed.map_shared(lambda part: [x * 10 for x in part], [1, 2])  # one process idle
distributed.barrier("worker")
print(json.dumps({"seen": seen, "out": out, "few": few,
                  "gathered": distributed.gather_json("x" * (jax.process_index() + 1)),
                  "key": str(jax.random.key_data(distributed.process_rng(jax.random.key(0))))}))
"""


def test_map_shared_splits_and_gathers_in_three_processes():
  import json
  import subprocess
  import sys

  from launch import local
  from tests.conftest import REPO

  address = f"127.0.0.1:{local.free_port()}"
  env = local.environment(dict(os.environ), 1)
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(3)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  # Each item done once, by the process `share` gives it to; every process gets all, in order.
  assert [r["seen"] for r in results] == [list("adg"), list("be"), list("cf")]
  want = [{"item": x, "by": i % 3} for i, x in enumerate("abcdefg")]
  assert all(r["out"] == want for r in results)
  assert all(r["few"] == [10, 20] for r in results)
  assert all(r["gathered"] == ["x", "xx", "xxx"] for r in results)
  assert len({r["key"] for r in results}) == 3  # independent samples per process
