"""Seconds per GRPO iteration: reasonjax vs TRL's GRPOTrainer and Tunix's GRPOLearner (CPU).

    bash benchmarks/peers/setup.sh                    # once: the peers' virtualenvs
    python benchmarks/grpo.py                         # 10 timed iterations after 2 warm-up ones
    python benchmarks/grpo.py --iterations=3 --peers=trl --torch_threads=1

One iteration (benchmarks/peers/workload.py has the numbers): sample 4 prompts x 4 completions of
exactly 64 new tokens (prompts of 32 random token ids, temperature 1, no EOS) with the current
parameters, score them on the host (the fraction of even token ids), group-relative advantages,
and one AdamW step of the GRPO loss (clip 0.2, k3 KL to the frozen starting policy with beta
0.04) on the 16 rows of prompt + completion. Every framework starts from the same random
weights of the "tiny" preset (Qwen2 family, 3.2M parameters), written once as a Hugging Face
checkpoint, in float32.

- reasonjax: `sampling.sample` on the parameters the step trains, `programs.grpo.rollout_batch`
  and `grpo_loss` (each prompt run once for its 4 samples, `share_prompt`) in the jitted,
  donated `training.step` (`python benchmarks/grpo.py --worker`).
- trl: `trl.GRPOTrainer` (transformers generate, no vLLM), benchmarks/peers/trl_grpo.py.
- tunix: `tunix.GRPOLearner` on an RLCluster of Tunix's own Qwen2, benchmarks/peers/tunix_grpo.py.

Each framework runs in a process of its own, the peers with the python of their virtualenv
(`--peers_dir`, default ~/.cache/reasonjax/peers; benchmarks/peers/setup.sh creates them); a
peer whose virtualenv is missing is reported as skipped. The processes are started one at a
time, then the parent has them run their iterations in turns, 0.5 s apart, in alternating order
(as benchmarks/train_step.py does), so that load from other processes falls on all alike. The
first 2 iterations of each (compilation, caches) are warm-up and not counted. Reported: the
median seconds per iteration with its quartiles, and each peer's ratio to reasonjax, the median
over rounds of peer s / reasonjax s (> 1: reasonjax is faster), and reasonjax's iteration split
into sampling, host work (rewards, advantages, rows) and the train step. Prints a table and
writes JSON (default benchmarks/results/grpo.json) with every iteration's seconds, versions and
settings. TRL's torch uses one thread per CPU (`--torch_threads`), as in train_step.py; on a
machine that other processes load, its OpenMP barriers wait for descheduled threads and its
iterations slow down many times over (1 thread can then be far faster), so compare on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS_DIR)  # workload.py: the workload and protocol every runner shares

import workload  # noqa: E402

WARMUP = 2
PAUSE_S = 0.5  # between two iterations: the last one's threads stop spinning first
PRESET = "tiny"
FRAMEWORKS = ("reasonjax", "trl", "tunix")
SETUP = "run benchmarks/peers/setup.sh"


def reasonjax_worker(args: argparse.Namespace) -> None:
  """The reasonjax runner: the same protocol as the peers' scripts (`workload`)."""
  from reasonjax import host_memory
  host_memory.retain_freed_memory()  # First, as `main` does: before JAX starts its threads.

  import functools

  import flax
  import jax
  import numpy as np

  from configs.common import AXIS_RULES
  from reasonjax import models, sharding
  from reasonjax.losses import policy
  from reasonjax.sampling import sampler as sampler_lib
  from reasonjax.programs import grpo
  from reasonjax.training import optim
  from reasonjax.training import state as state_lib
  from reasonjax.training import step as step_lib

  cfg, params = models.load_hf(args.model_dir)
  model = models.Model(cfg)
  mesh = sharding.make_mesh(data=-1, fsdp=1, tensor=1)
  # A constant learning rate with clipping and no weight decay, as the peers are configured.
  tx = optim.make_optimizer({
      "learning_rate": workload.LEARNING_RATE, "warmup_steps": 0, "total_steps": 1000,
      "end_learning_rate_ratio": 1.0, "weight_decay": 0.0, "clip_norm": workload.CLIP_NORM})
  loss_kwargs = {"importance": "token", "epsilon_low": workload.EPSILON,
                 "epsilon_high": workload.EPSILON, "dual_clip": None, "beta": workload.BETA,
                 "kl_estimator": "k3", "entropy_coef": 0.0}
  loss_fn = functools.partial(grpo.grpo_loss, model=model, temperature=1.0, aggregation="grpo",
                              max_len=workload.NEW_TOKENS, loss_kwargs=loss_kwargs,
                              share_prompt=args.share_prompt)
  sampling = sampler_lib.SamplingConfig(max_new_tokens=workload.NEW_TOKENS, temperature=1.0,
                                        num_samples=workload.GENERATIONS, eos_token_id=None)
  prompts = np.asarray(workload.prompt_ids(args.iterations, cfg.vocab_size), np.int32)
  lengths = np.full((workload.PROMPTS,), workload.PROMPT_LEN, np.int32)
  with sharding.axis_rules(mesh, AXIS_RULES):
    # As `loop.train` does: the state made in its shardings, the reference placed like it.
    state, shardings = state_lib.init_state(cfg, tx, jax.random.key(workload.SEED), mesh=mesh,
                                            rules=AXIS_RULES, params=params)
    frozen = jax.device_put(params, shardings.params)
    del params
    train_step = None
    batch_shardings = None
    turns = workload.Turns(args.iterations, args.turns)
    workload.emit("ready", framework="reasonjax", params=models.param_count(cfg),
                  dtype=cfg.dtype)
    completion_tokens = []
    for i in range(args.iterations):
      if not turns.begin():
        break
      block = prompts[i * workload.PROMPTS:(i + 1) * workload.PROMPTS]
      rng = jax.random.fold_in(jax.random.key(workload.SEED + 1), i)
      start = time.perf_counter()
      output = jax.device_get(sampler_lib.sample(model, state.params, block, lengths, rng,
                                                 sampling))
      sampled = time.perf_counter()
      completion_tokens += output.lengths.tolist()
      rewards = np.array([workload.reward(row[:n])
                          for row, n in zip(output.tokens, output.lengths)])
      advantages = np.asarray(policy.group_advantages(rewards, workload.GENERATIONS))
      batch = grpo.rollout_batch(block, lengths, output, advantages)
      if train_step is None:  # Built on the first batch, whose shapes every later one has.
        batch_shardings = sharding.batch_shardings(batch, mesh, AXIS_RULES)
        train_step = step_lib.jit_train_step(loss_fn, tx, shardings, batch_shardings,
                                             shardings.params)
      hosted = time.perf_counter()
      state, metrics = train_step(state, sharding.put_batch(batch, batch_shardings), frozen)
      jax.block_until_ready((state, metrics))
      turns.end(sample_s=sampled - start, host_s=hosted - sampled,
                train_step_s=time.perf_counter() - hosted)
  if min(completion_tokens) != workload.NEW_TOKENS:
    sys.exit(f"reasonjax generated completions of {min(completion_tokens)}.."
             f"{max(completion_tokens)} tokens, not {workload.NEW_TOKENS}")
  # The policy moved away from the reference: the updates were applied.
  change = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params),
                                                            jax.tree.leaves(frozen)))
  turns.done(framework="reasonjax",
             completion_tokens=[min(completion_tokens), max(completion_tokens)],
             updates=int(state.step), max_param_change=change,
             final_loss=float(metrics["loss"]), final_kl=float(metrics["kl"]),
             versions={"jax": jax.__version__, "flax": flax.__version__,
                       "jax_backend": jax.default_backend()})


def write_model(path: str) -> dict:
  """Random weights of the preset (initializer_range 0.02) as a Hugging Face folder."""
  import jax

  from reasonjax import models
  cfg, params = models.load({"preset": PRESET}, jax.random.key(workload.SEED))
  models.save_hf(cfg, params, path)
  return {"preset": PRESET, "params": models.param_count(cfg), "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
          "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
          "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim}


class Runner:
  """One framework's runner process, driven through `workload`'s protocol."""

  def __init__(self, name: str, command: list[str], log_path: str):
    self.name, self.log_path = name, log_path
    self.log = open(log_path, "w")
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self.log, text=True, cwd=os.path.dirname(HERE),
                                    bufsize=1)
    try:
      self.info = self.expect("ready")
    except BaseException:
      self.close()
      raise

  def expect(self, event: str) -> dict:
    """The next protocol message, which must be `event`; raises with the log's tail if the
    process ends or says something else."""
    for line in self.process.stdout:
      line = line.strip()
      if not line.startswith("{"):
        continue
      try:
        message = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not isinstance(message, dict) or "event" not in message:
        continue
      if message["event"] == "unsupported":
        raise Unsupported(message["reason"])
      if message["event"] != event:
        raise RuntimeError(f"{self.name}: expected {event!r}, got {message}")
      return message
    self.process.wait()
    raise RuntimeError(f"{self.name} exited with code {self.process.returncode} before "
                       f"{event!r}; the end of its log ({self.log_path}):\n{self.tail()}")

  def step(self) -> dict:
    """Runs one iteration; its 'iteration' message."""
    self.process.stdin.write("step\n")
    self.process.stdin.flush()
    return self.expect("iteration")

  def finish(self) -> dict:
    """Lets the runner end its run; returns its 'done' message."""
    summary = self.expect("done")
    self.process.wait(timeout=120)
    return summary

  def tail(self, lines: int = 25) -> str:
    self.log.flush()
    with open(self.log_path) as f:
      return "".join(f.readlines()[-lines:])

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()
    self.log.close()


class Unsupported(Exception):
  """A runner that cannot run the workload here, with its reason."""


def command(name: str, model_dir: str, iterations: int, args: argparse.Namespace
            ) -> list[str] | str:
  """The runner's command line, or why it is skipped."""
  flags = [f"--model_dir={model_dir}", f"--iterations={iterations}", "--turns"]
  if name == "trl":
    flags.append(f"--threads={args.torch_threads}")
  if name == "reasonjax":
    return ([sys.executable, os.path.abspath(__file__), "--worker",
             f"--share_prompt={args.share_prompt}"] + flags)
  python = os.path.join(args.peers_dir, name, "bin", "python")
  if not os.path.exists(python):
    return f"skipped ({SETUP}: no {python})"
  return [python, os.path.join(PEERS_DIR, f"{name}_grpo.py")] + flags


def quartiles(values: list[float]) -> list[float]:
  q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
  return [q[0], q[2]]


def run(args: argparse.Namespace) -> dict:
  peers = [p for p in args.peers.split(",") if p]
  for name in peers:
    if name not in FRAMEWORKS[1:]:
      raise ValueError(f"unknown peer {name!r}; valid: {FRAMEWORKS[1:]}")
  names = ["reasonjax"] + peers
  total = WARMUP + args.iterations
  load_before = os.getloadavg()[0]
  results = {name: {} for name in names}
  runners: dict[str, Runner] = {}
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, "model")
    model = write_model(model_dir)
    try:
      for name in names:  # One at a time: each builds (and loads its framework) alone.
        cmd = command(name, model_dir, total, args)
        if isinstance(cmd, str):
          results[name]["status"] = cmd
          print(f"{name}: {cmd}", flush=True)
          continue
        start = time.perf_counter()
        try:
          runners[name] = Runner(name, cmd, os.path.join(tmp, f"{name}.log"))
        except Unsupported as e:
          results[name]["status"] = f"skipped ({e})"
          print(f"{name}: skipped: {e}", flush=True)
          continue
        except RuntimeError as e:
          if name == "reasonjax":
            raise
          results[name]["status"] = f"failed: {str(e).splitlines()[-1]}"
          print(f"{name}: failed:\n{e}", flush=True)
          continue
        results[name]["startup_s"] = round(time.perf_counter() - start, 2)
        print(f"{name}: ready in {results[name]['startup_s']} s: {runners[name].info}",
              flush=True)
      times = {name: [] for name in runners}
      phases = {name: [] for name in runners}  # seconds of an iteration's parts, where told
      for round_ in range(total):
        order = list(runners)[::1 if round_ % 2 == 0 else -1]
        for name in order:
          time.sleep(PAUSE_S)
          try:
            message = runners[name].step()
            times[name].append(message["seconds"])
            phases[name].append({k: v for k, v in message.items()
                                 if k not in ("event", "seconds", "index")})
          except RuntimeError as e:
            if name == "reasonjax":
              raise
            # A peer that fails mid-run is dropped; the others' rounds stay paired.
            results[name]["status"] = f"failed: {str(e).splitlines()[-1]}"
            print(f"{name}: failed:\n{e}", flush=True)
            runners.pop(name).close()
            del times[name], phases[name]
        print(f"round {round_}{' (warm-up)' if round_ < WARMUP else ''}: " +
              ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
      for name, runner in runners.items():
        summary = runner.finish()
        results[name] |= {"status": "ok", "iteration_s": [round(t, 4) for t in times[name]],
                          **{k: v for k, v in summary.items() if k not in ("event", "seconds")}}
        timed = phases[name][WARMUP:]
        if timed and timed[0]:
          results[name]["phases_median_s"] = {
              k: round(statistics.median(p[k] for p in timed), 4) for k in timed[0]}
    finally:
      for runner in runners.values():
        runner.close()
  ours = results["reasonjax"]["iteration_s"][WARMUP:]
  for name, row in results.items():
    if row.get("status") != "ok":
      continue
    timed = row["iteration_s"][WARMUP:]
    row |= {"median_s": round(statistics.median(timed), 4),
            "q1_q3_s": [round(q, 4) for q in quartiles(timed)],
            "warmup_s": row["iteration_s"][:WARMUP]}
    ratios = [theirs / mine for mine, theirs in zip(ours, timed)]
    row |= {"ratio_to_reasonjax": round(statistics.median(ratios), 2),
            "ratio_q1_q3": [round(q, 2) for q in quartiles(ratios)]}
  peers_ok = [n for n in names[1:] if results[n].get("status") == "ok"]
  target = None
  if peers_ok:
    fastest = min(peers_ok, key=lambda n: results[n]["median_s"])
    ratio = results[fastest]["ratio_to_reasonjax"]
    target = {"fastest_peer": fastest, "speedup": ratio, "goal": 2.0, "met": ratio >= 2.0}
  return {"frameworks": results, "target": target, "model": model,
          "settings": {"prompts": workload.PROMPTS, "generations": workload.GENERATIONS,
                       "prompt_len": workload.PROMPT_LEN, "new_tokens": workload.NEW_TOKENS,
                       "beta": workload.BETA, "epsilon": workload.EPSILON,
                       "learning_rate": workload.LEARNING_RATE, "clip_norm": workload.CLIP_NORM,
                       "reasonjax_share_prompt": bool(args.share_prompt),
                       "temperature": 1.0, "dtype": "float32", "reward": "fraction of even ids",
                       "warmup_iterations": WARMUP, "timed_iterations": args.iterations,
                       "torch_threads": args.torch_threads or os.cpu_count(),
                       "pause_between_iterations_s": PAUSE_S},
          "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
          "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "python": platform.python_version()}}


def table(report: dict) -> str:
  lines = ["| framework | s / iteration (median) | quartiles | ratio to reasonjax | "
           "ratio quartiles | status |", "|---|---|---|---|---|---|"]
  for name, row in report["frameworks"].items():
    if row.get("status") == "ok":
      q, r = row["q1_q3_s"], row["ratio_q1_q3"]
      lines.append(f"| {name} | {row['median_s']:.3f} | {q[0]:.3f}-{q[1]:.3f} | "
                   f"{row['ratio_to_reasonjax']:.2f} | {r[0]:.2f}-{r[1]:.2f} | ok |")
    else:
      lines.append(f"| {name} | - | - | - | - | {row.get('status')} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--iterations", type=int, default=10,
                      help=f"timed iterations per framework, after {WARMUP} warm-up ones")
  parser.add_argument("--peers", default="trl,tunix", help="comma-separated; '' for none")
  parser.add_argument("--peers_dir", default=os.environ.get(
      "REASONJAX_PEERS", os.path.expanduser("~/.cache/reasonjax/peers")))
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="TRL's torch threads (0: one per CPU, as benchmarks/train_step.py)")
  parser.add_argument("--share_prompt", type=int, default=1,
                      help="reasonjax runs each prompt once for its samples (0: every row)")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "grpo.json"))
  # The reasonjax runner's flags (`workload.arguments`); the parent passes them.
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    sys.path.insert(0, os.path.dirname(HERE))  # configs/ lives at the repository root
    return reasonjax_worker(args)
  print(f"{os.cpu_count()} CPUs; {workload.PROMPTS} prompts x {workload.GENERATIONS} generations x "
        f"{workload.NEW_TOKENS} tokens, beta {workload.BETA}, preset {PRESET}", flush=True)
  report = run(args)
  print("\n" + table(report))
  for name, row in report["frameworks"].items():
    if "phases_median_s" in row:
      print(f"\n{name} per iteration (median s): " +
            ", ".join(f"{k[:-2]} {v:.3f}" for k, v in row["phases_median_s"].items()))
  if report["target"]:
    t = report["target"]
    print(f"\nreasonjax vs the faster peer ({t['fastest_peer']}): {t['speedup']:.2f}x "
          f"(goal {t['goal']:.0f}x: {'met' if t['met'] else 'missed'})")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
