"""Multi-process jobs on 127.0.0.1: `launch/local.py` against one process on as many devices."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from launch import local
from tests.conftest import REPO, run_main

# runlocal's SFT, cut to a few steps; unpacked, so the global batches do not depend on the
# process count (`data.batching`); no evaluation (this test is about training).
SFT = ["--config=configs/sft_arith.py:runlocal", "--config.steps=5", "--config.pack=false",
       "--config.eval.num_problems=0", "--config.checkpoint_every=2", "--config.log_every=1"]


def _losses(workdir, key="loss") -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row[key] for row in map(json.loads, f) if key in row}


def _launch(args, workdir, *, processes=2, devices=4, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "launch.local", f"--num_processes={processes}",
       f"--devices_per_process={devices}", f"--log_dir={workdir}_logs", "--grace_s=20", "--",
       *args, f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, **kwargs)


def _in_two_and_in_one(args, tmp_path) -> tuple[str, str]:
  """Workdirs of `args` run as 2 processes x 4 devices and as 1 process x 8 devices."""
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  proc = _launch(args, two)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  ref = run_main(*args, workdir=one)
  assert ref.returncode == 0, ref.stderr[-3000:]
  return two, one


def test_the_dry_run_prints_one_command_per_process(capsys):
  assert local.main(["--num_processes=3", "--dry_run", "--", "--config=c.py", "--workdir=w"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3
  port = {line.split("--coordinator_address=127.0.0.1:")[1].split()[0] for line in lines}
  assert len(port) == 1  # one coordinator for all
  for i, line in enumerate(lines):
    assert line.startswith("JAX_NUM_CPU_DEVICES=4 ")
    assert "-m reasonjax.main --config=c.py --workdir=w" in line
    assert line.endswith(f"--num_processes=3 --process_id={i}")


def test_the_environment_drops_the_forced_device_count():
  env = local.environment({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_a=1",
                           "HOME": "/h"}, 4)
  assert env == {"XLA_FLAGS": "--xla_a=1", "HOME": "/h", "JAX_PLATFORMS": "cpu",
                 "JAX_NUM_CPU_DEVICES": "4"}


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path):
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  proc = _launch(SFT, two)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  # Process 0 speaks for the job: one progress bar, one workdir line.
  assert out.count("sft: workdir") == 1 and "process_1.log" not in err
  ref = run_main(*SFT, workdir=one)  # one process, the suite's 8 devices
  assert ref.returncode == 0, ref.stderr[-3000:]
  got, want = _losses(two), _losses(one)
  assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5]
  # The same global batches and parameters; only the all-reduce's summation order differs
  # (float32 rounding, ~1e-7 relative per step), which 5 Adam steps leave far below 1e-4.
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-4)
  # The two-process checkpoint of step 4 resumes in one process: step 5 as both runs had it.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(two, "checkpoints"), os.path.join(resumed, "checkpoints"))
  shutil.rmtree(os.path.join(resumed, "checkpoints", "5"))
  out = run_main(*SFT, workdir=resumed)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from the checkpoint of step 4" in out.stderr + out.stdout
  assert _losses(resumed)[5] == pytest.approx(want[5], rel=1e-4)
  # And the one-process checkpoint of step 4 in two processes.
  resumed = str(tmp_path / "resumed_in_two")
  shutil.copytree(os.path.join(one, "checkpoints"), os.path.join(resumed, "checkpoints"))
  shutil.rmtree(os.path.join(resumed, "checkpoints", "5"))
  proc = _launch(SFT, resumed)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "resumed from the checkpoint of step 4" in out + err
  assert _losses(resumed)[5] == pytest.approx(want[5], rel=1e-4)


def test_a_sigterm_to_one_process_checkpoints_and_stops_them_all(tmp_path):
  workdir = str(tmp_path / "run")
  args = [a for a in SFT if not a.startswith("--config.steps")] + ["--config.steps=400",
                                                                     "--config.checkpoint_every=0"]
  proc = _launch(args, workdir)
  log = f"{workdir}_logs/process_1.log"
  deadline = time.monotonic() + 300
  # Training (the signal handlers installed) once a step was logged.
  metrics = os.path.join(workdir, "metrics.jsonl")
  while not (os.path.isfile(metrics) and "loss" in open(metrics).read()):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.5)
  pid = int(subprocess.check_output(["pgrep", "-f", "--", f"--workdir={workdir} .*--process_id=1"]))
  os.kill(pid, signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "stopped by SIGTERM at step" in err and "after saving a checkpoint" in err
  with open(log) as f:
    assert "stopped by SIGTERM at step" in f.read()
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 400


@pytest.mark.slow
def test_two_processes_run_grpo_like_one(sft_workdir, tmp_path):
  # Two iterations of runlocal's GRPO (two minibatches each: each process trains on its half
  # of every minibatch's groups) from the shared SFT export, with the start and end evaluation.
  args = ["--config=configs/grpo_arith.py:runlocal", f"--config.init_from={sft_workdir}/hf",
          "--config.steps=4", "--config.minibatches=2", "--config.rollouts.prompts=8",
          "--config.eval.num_problems=8"]
  two, one = _in_two_and_in_one(args, tmp_path)
  # Same rollouts (the sampler's draws do not depend on the sharding) and the same minibatches
  # (a minibatch's prompts and samples in the same rows); float32 summation order aside, the
  # same numbers. The loss starts near 0 (ratio 1, advantages of mean 0 in each group): the
  # entropy and the trainer-vs-sampler log-prob gap show a misplaced row at once.
  for key, tolerance in (("loss", 1e-5), ("entropy", 1e-4), ("logprob_gap_mean", 1e-5),
                         ("rollout_reward_mean", 0)):
    got, want = _losses(two, key), _losses(one, key)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=tolerance, atol=tolerance, err_msg=key)
  with open(os.path.join(two, "results.json")) as f, open(os.path.join(one, "results.json")) as g:
    a, b = json.load(f), json.load(g)
  assert a["start"] == pytest.approx(b["start"]) and a["iterations"] == b["iterations"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("config, keys", [
    ("distill_arith", ("loss", "on_policy", "teacher_agreement")),
    ("spiral_games", ("loss", "entropy", "rollout_tictactoe_turns"))])
def test_two_processes_distill_and_self_play_like_one(config, keys, sft_workdir, tmp_path):
  # Every process samples the whole batch (distillation's on-policy steps, self-play's games)
  # and trains on its rows: the same numbers as one process, float32 summation order aside.
  args = [f"--config=configs/{config}.py:runlocal", f"--config.init_from={sft_workdir}/hf",
          "--config.steps=4", "--config.eval_every=0"]
  if config == "spiral_games":
    args += ["--config.eval.episodes=4", "--config.self_play.games=('tictactoe',)"]
  two, one = _in_two_and_in_one(args, tmp_path)
  for key in keys:
    got, want = _losses(two, key), _losses(one, key)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4], key
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-5, atol=1e-5, err_msg=key)
  if config == "distill_arith":  # this seed draws both kinds of step in 4
    assert set(_losses(two, "on_policy").values()) == {0.0, 1.0}


def test_packed_batches_resume_in_the_same_number_of_processes(tmp_path):
  # runlocal's SFT packs its examples, each process its own rows: a checkpoint keeps every
  # process's data position.
  args = ["--config=configs/sft_arith.py:runlocal", "--config.steps=4",
          "--config.eval.num_problems=0", "--config.checkpoint_every=2", "--config.log_every=1"]
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  proc = _launch(args, full)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  with open(os.path.join(full, "checkpoints", "2", "data", "metadata")) as f:
    assert len(json.load(f)["processes"]) == 2
  shutil.copytree(os.path.join(full, "checkpoints", "2"),
                  os.path.join(resumed, "checkpoints", "2"))
  proc = _launch(args, resumed)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  want, got = _losses(full), _losses(resumed)
  assert sorted(got) == [3, 4] and [got[3], got[4]] == pytest.approx([want[3], want[4]],
                                                                     rel=1e-5)
  # One process cannot take over two processes' packing.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  out = run_main(*args, workdir=resumed)
  assert out.returncode != 0 and "holds the data positions of 2 processes" in out.stderr


@pytest.mark.parametrize("config, lora_rank", [("dpo_arith", 0), ("prm_arith", 0),
                                               ("prm_arith", 4)])
def test_dpo_and_reward_models_train_in_two_processes(config, lora_rank, sft_workdir, tmp_path):
  workdir = str(tmp_path / config)
  proc = _launch([f"--config=configs/{config}.py:runlocal", f"--config.init_from={sft_workdir}/hf",
                  "--config.steps=2", "--config.log_every=1", "--config.eval.num_problems=4",
                  f"--config.lora.rank={lora_rank}"], workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  losses = _losses(workdir)
  assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)  # the export, by process 0
  if lora_rank:  # the adapters and the score head trained beside them, saved by process 0
    from reasonjax import models
    from reasonjax.models import lora
    adapters, _ = lora.load_peft(os.path.join(workdir, "adapter"),
                                 models.read_config(os.path.join(workdir, "hf")))
    assert "score_head" in adapters


def test_search_splits_its_problems_over_the_processes(sft_workdir, tmp_path):
  # Greedy steps make each problem's result independent of which process (and batch) it is
  # in, so the job's accuracy must equal one process's over the same problems.
  args = ["--config=configs/search_arith.py:runlocal", f"--config.init_from={sft_workdir}/hf",
          "--config.search.methods=('best_of_n','step_greedy')", "--config.search.n_values=(1,)",
          "--config.search.temperature=0.0", "--config.search.num_problems=6"]
  two, one = _in_two_and_in_one(args, tmp_path)
  with open(os.path.join(two, "search.json")) as f, open(os.path.join(one, "search.json")) as g:
    got, want = json.load(f)["rows"], json.load(g)["rows"]
  assert [(r["method"], r["problems"]) for r in got] == [("best_of_n", 6), ("step_greedy", 6)]
  for a, b in zip(got, want):
    assert a["accuracy"] == pytest.approx(b["accuracy"])
    assert a["tokens_per_problem"] == pytest.approx(b["tokens_per_problem"])


@pytest.mark.slow
def test_the_hrm_program_shares_its_stages_over_two_processes(sft_workdir, tmp_path):
  # runlocal's HRM with fewer reward models and runs, on 5 problems per stage: the processes'
  # shares are unequal (3 and 2).
  workdir = str(tmp_path / "hrm")
  proc = _launch(["--config=configs/hrm_arith.py:runlocal", f"--config.init_from={sft_workdir}/hf",
                  "--config.reward_models.names=('prm','hrm')", "--config.trees.num_problems=5",
                  "--config.evaluation.num_problems=5", "--config.evaluation.seeds=(0,)",
                  "--config.first_error.num_problems=5",
                  "--config.first_error.reward_models=('prm','hrm')",
                  "--config.hacking_reward_models=('hrm',)", "--config.kl_weights=(0.5,)"],
                 workdir)
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  assert out.count("| HRM |") >= 1 and "Traceback" not in open(f"{workdir}_logs/process_1.log").read()
  from configs import hrm_arith
  from reasonjax.search import tree_data
  from reasonjax.training import experiment
  config = hrm_arith.get_config("runlocal")
  task, _ = experiment.task_and_tokenizer(config)
  problems = task.generate(5, seed=config.seed + 1000, split="train")
  # Every problem's tree, in order, grown for that problem: its leaves' grades are its own.
  trees = tree_data.load_trees(os.path.join(workdir, "trees.jsonl"))
  assert [t.problem for t in trees] == list(range(5))
  for tree, problem in zip(trees, problems):
    for leaf in tree.leaves():
      assert tree.correct[leaf] == task.check_answer(problem, "\n".join(tree.path_steps(leaf)))
  with open(os.path.join(workdir, "hrm.json")) as f:
    summary = json.load(f)
  # Accuracies are the job's counts over 5 problems; the oracle's best of 4 is right wherever
  # any of the 4 solutions is, so at least as often as their majority vote.
  accuracy = {(r["method"], r["scorer"], r["n"]): r["accuracy"] for r in summary["evaluation"]}
  assert all(abs(a * 5 - round(a * 5)) < 1e-9 for a in accuracy.values())
  assert accuracy["best_of_n", "oracle", 4] >= accuracy["majority_vote", "none", 4]
  assert {r["scorer"] for r in summary["ranking"]} == {"oracle", "prm", "hrm"}
  # Solutions of both processes' problems: more than the 3 x 2 of the larger share.
  assert 6 < summary["first_error"]["solutions"] <= 5 * config.first_error.num_samples
  assert set(summary["hacking"]) == {"hrm"} and set(summary["self_training"]) == {"hrm_kl0.5"}
