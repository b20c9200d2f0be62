"""The SLURM launcher: the sbatch script that --dry_run prints, that script run by bash with
stand-ins for srun and scontrol (the requeue after a SIGTERM), its refusals, and the submission
(subprocess.run replaced by a recorder: sbatch never runs)."""

import os
import shlex
import subprocess

import pytest

from launch import slurm

FLAGS = ["--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--account=lab", "--time=12:00:00",
         "--venv=.venv", "--setup=module load cuda/12.4", "--env=NCCL_DEBUG=WARN",
         "--sbatch=--constraint=h100", "--config=configs/sft_arith.py",
         "--workdir=/shared/runs/sft", "--config.model.dtype=bfloat16"]


def test_the_script_asks_for_one_task_per_node_and_runs_main(capsys):
  assert slurm.main(["--dry_run", *FLAGS, "--", "--compilation_cache=/shared/xla"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "#!/bin/bash"
  assert [line for line in lines if line.startswith("#SBATCH")] == [
      "#SBATCH --job-name=reasonjax", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
      "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
      "#SBATCH --time=12:00:00", f"#SBATCH --chdir={slurm.REPO}",
      "#SBATCH --output=slurm-%x-%j.out", "#SBATCH --open-mode=append",
      "#SBATCH --signal=TERM@120", "#SBATCH --requeue", "#SBATCH --constraint=h100"]
  # sbatch stops reading #SBATCH lines at the first command.
  first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
  assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
  srun, = [shlex.split(line) for line in lines if line.startswith("srun ")]
  assert srun == ["srun", "--ntasks-per-node=1", "--gpus-per-node=8", "python", "-m",
                  "reasonjax.main", "--config=configs/sft_arith.py",
                  "--workdir=/shared/runs/sft", "--config.model.dtype=bfloat16",
                  "--compilation_cache=/shared/xla"]
  setup = ["source .venv/bin/activate", "module load cuda/12.4", "export NCCL_DEBUG=WARN",
           "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"]
  assert [lines.index(line) for line in setup] == sorted(lines.index(line) for line in setup)
  assert lines.index(setup[-1]) < lines.index(next(line for line in lines
                                                   if line.startswith("srun ")))
  assert lines[-1] == "# submit: sbatch --parsable < this script"


def test_options_reach_the_script():
  text = slurm.render(slurm.Job(
      config="configs/demo.py:runlocal", workdir="/scratch/demo", nodes=2, gpus_per_node=4,
      cpus_per_task=32, mem="0", qos="high", job_name="demo", chdir="/home/me/rj",
      output="logs/%j.out", signal_s=300, requeue=False, python="python3"))
  lines = text.splitlines()
  for line in ("#SBATCH --job-name=demo", "#SBATCH --cpus-per-task=32", "#SBATCH --mem=0",
               "#SBATCH --qos=high", "#SBATCH --chdir=/home/me/rj",
               "#SBATCH --output=logs/%j.out", "#SBATCH --signal=TERM@300",
               "export JAX_LOCAL_DEVICE_IDS=0,1,2,3"):
    assert line in lines
  assert "#SBATCH --requeue" not in lines and "scontrol" not in text
  assert not any(line.startswith("source ") for line in lines)
  srun, = [shlex.split(line) for line in lines if line.startswith("srun ")]
  assert srun[:5] == ["srun", "--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=32",
                      "python3"]


@pytest.mark.parametrize("rc, requeue, requeued", [
    (143, True, True),  # SIGTERM before the time limit: checkpoint, back in the queue.
    (0, True, False), (1, True, False), (143, False, False)])
def test_the_script_requeues_a_job_stopped_by_sigterm(tmp_path, rc, requeue, requeued):
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
  bin_dir.mkdir()
  (venv / "bin").mkdir(parents=True)
  (venv / "bin/activate").write_text("export VENV_ACTIVE=yes\n")
  calls = tmp_path / "calls"
  for name, body in (("srun", 'echo "srun $* | $VENV_ACTIVE $JAX_LOCAL_DEVICE_IDS '
                              '$PYTHONUNBUFFERED $HF_HOME" >> "$CALLS"; exit "$SRUN_RC"'),
                     ("scontrol", 'echo "scontrol $*" >> "$CALLS"')):
    (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / name).chmod(0o755)
  script = tmp_path / "job.sbatch"
  script.write_text(slurm.render(slurm.Job(
      config="configs/x.py", workdir="/w", nodes=2, gpus_per_node=2, venv=str(venv),
      env=(("HF_HOME", "/data/hf cache"),), requeue=requeue)))
  out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                            "CALLS": str(calls), "SRUN_RC": str(rc), "SLURM_JOB_ID": "4242",
                            "SLURM_JOB_NODELIST": "gpu[01-02]"})
  assert out.returncode == rc, out.stderr
  expected = ["srun --ntasks-per-node=1 --gpus-per-node=2 python -m reasonjax.main "
              "--config=configs/x.py --workdir=/w | yes 0,1 1 /data/hf cache"]
  assert calls.read_text().splitlines() == expected + ["scontrol requeue 4242"] * requeued
  assert "job 4242 (restart 0) on gpu[01-02]" in out.stdout


@pytest.mark.parametrize("change, says", [
    (dict(nodes=0), "--nodes=0"), (dict(gpus_per_node=0), "--gpus_per_node=0"),
    (dict(cpus_per_task=0), "--cpus_per_task=0"), (dict(signal_s=0), "--signal_s=0"),
    (dict(env=(("9LIVES", "x"),)), "not a variable name"),
    (dict(sbatch_options=("constraint=h100",)), "an sbatch option"),
    (dict(setup=("module load a\nmodule load b",)), "newline")])
def test_bad_jobs_are_refused(change, says):
  with pytest.raises(slurm.LaunchError, match=says):
    slurm.render(slurm.Job(config="c.py", workdir="/w", **change))


def test_bad_flags_are_refused(monkeypatch):
  def no_sbatch(*args, **kwargs):
    raise AssertionError("sbatch must not run")
  monkeypatch.setattr(subprocess, "run", no_sbatch)
  with pytest.raises(SystemExit, match="--nodes=0: a job needs at least one node"):
    slurm.main(["--nodes=0", "--config=c.py", "--workdir=/w"])
  with pytest.raises(SystemExit, match="--env=NCCL_DEBUG: expected KEY=VALUE"):
    slurm.main(["--env=NCCL_DEBUG", "--config=c.py", "--workdir=/w"])
  with pytest.raises(SystemExit):  # Not a --config.KEY override of main: a typo.
    slurm.main(["--gpus=8", "--config=c.py", "--workdir=/w"])
  with pytest.raises(SystemExit):
    slurm.main(["--config=c.py"])  # No --workdir.


def test_submits_the_script_it_prints(monkeypatch, capsys, tmp_path):
  assert slurm.main(["--dry_run", *FLAGS]) == 0
  printed = capsys.readouterr().out
  calls = []

  def sbatch(cmd, **kwargs):
    calls.append((cmd, kwargs.get("input")))
    return subprocess.CompletedProcess(cmd, 0, "31337;cluster\n", "")
  monkeypatch.setattr(subprocess, "run", sbatch)
  assert slurm.main(FLAGS) == 0
  (cmd, script), = calls
  assert cmd == ["sbatch", "--parsable"]
  assert script + "# submit: sbatch --parsable < this script\n" == printed
  assert "submitted job 31337" in capsys.readouterr().out

  path = tmp_path / "job.sbatch"
  assert slurm.main([*FLAGS, f"--script={path}"]) == 0
  assert calls[1] == (["sbatch", "--parsable", str(path)], None)
  assert path.read_text() == script
