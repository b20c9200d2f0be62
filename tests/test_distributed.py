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
