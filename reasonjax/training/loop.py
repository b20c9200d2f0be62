"""The training loop every method shares: checkpoints, exact resume, metrics, evaluation.

    state, final_eval = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                                   params=init_params, evaluate=evaluate_fn)

What it guarantees:
  - The run resumes from the newest intact checkpoint in `workdir/checkpoints` (parameters,
    optimizer, rng, step and the data iterator's position), so a resumed run equals an
    uninterrupted one. A checkpoint that cannot be read back or fails its checksums is reported
    and skipped for the one before it (`config.resume_from`, `checkpoint.Checkpointer`); one
    written for another state shape stops the run with the config keys that changed.
  - SIGTERM or Ctrl-C saves a checkpoint of the current step and raises `Preempted`; a second
    Ctrl-C aborts without saving. A crash (or SIGKILL) loses the steps since the last checkpoint.
  - An update whose loss, gradients, update or new parameters are not finite is skipped
    (`optim.make_optimizer`) and counted; no checkpoint is saved while such a streak lasts, and
    `max_nonfinite_steps` of them in a row stop the run with `NonFiniteError`, naming the last
    checkpoint (all of whose steps were finite).
  - Metrics go to `workdir/metrics.jsonl` and TensorBoard every `log_every` steps; the progress
    bar shows loss (and reward, for on-policy methods), tokens/s and MFU (model FLOPs over the
    devices' peak FLOP/s).
  - Step N+1 is dispatched before step N's metrics are read, so the host never stalls the device.

Config fields read here: seed, steps, accum_steps, log_every, eval_every, eval_at_start,
checkpoint_every (0: only at the end and when stopped), keep_checkpoints, resume_from, optimizer,
mesh, axis_rules (`configs/common.py:loop`); `check_config` validates them. The memory per device
is planned and printed before the step compiles, and a run that cannot fit is refused
(`memory.DoesNotFit`) unless `check_memory` is False: one whose state alone cannot fit before the
state is made, the others at the first batch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from reasonjax import checkpoint, distributed, metrics as metrics_lib, models, sharding
from reasonjax.models import ModelConfig, lora
from reasonjax.models.decoder import init_boxed_params
from reasonjax.training import memory, optim, state as state_lib, step as step_lib


class Preempted(Exception):  # noqa: N818 -- it is not an error: rerun the command to resume.
  """A signal stopped the run after saving a checkpoint; `signum` says which."""

  def __init__(self, signum: int, step: int, saved: int | None):
    saved_text = ("after saving a checkpoint" if saved == step else
                  "(its updates were not finite: "
                  + (f"the last checkpoint is of step {saved})" if saved is not None
                     else "no checkpoint was saved)"))
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} {saved_text}; "
                     "rerun the same command to resume")
    self.signum, self.step, self.saved = signum, step, saved


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss, gradient or update."""


def check_config(config) -> None:
  """Raises ValueError naming the first loop field (module docstring) with an invalid value."""
  positive = ("steps", "log_every", "keep_checkpoints", "accum_steps", "batch_size")
  for name in positive:
    if name in config and not config[name] >= 1:
      raise ValueError(f"config.{name}={config[name]!r}; expected a positive integer")
  if "batch_size" in config and config.batch_size % jax.process_count():
    count = jax.process_count()
    raise ValueError(f"config.batch_size={config.batch_size} is the global batch: it must split "
                     f"evenly over the job's {count} processes (use a multiple of {count})")
  for name in ("checkpoint_every", "eval_every"):
    if not config[name] >= 0:
      raise ValueError(f"config.{name}={config[name]!r}; expected 0 (off: only at the end) or a "
                       "positive number of steps")
  resume_from = str(config.get("resume_from", "newest_intact"))
  if resume_from not in checkpoint.RESUME_FROM and not resume_from.isdigit():
    raise ValueError(f"config.resume_from={resume_from!r}; expected one of "
                     f"{checkpoint.RESUME_FROM} or a checkpoint's step number")
  optim.check_fields(optim.FIELDS | {"total_steps": config.steps} | dict(config.optimizer))
  adapters = config.get("lora")
  if adapters is not None and adapters.rank:
    lora.check(adapters.rank, tuple(adapters.targets))
    if not adapters.alpha > 0:
      raise ValueError(f"config.lora.alpha={adapters.alpha!r}: expected > 0 (the update is "
                       "scaled by alpha / rank)")


def _lora(config):
  """`config.lora` when adapters train (rank > 0), else None."""
  section = config.get("lora")
  return section if section is not None and section.rank else None


# Batch fields that measure the machine (wall-clock time, speed), not the data: left out of the
# batch fingerprint so that a resumed run's fingerprints match an uninterrupted run's.
TIMING_SUFFIXES = ("_seconds", "_per_s")
# Shown on the progress bar when a step's metrics have them: name -> metric.
PROGRESS = {"loss": "loss", "reward": "rollout_reward_mean", "tokens/s": "tokens_per_s",
            "mfu": "mfu"}


def _say(text: str) -> None:
  """A line above the progress bar, from process 0 only (it speaks for the job)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(text)


def _agreed_stop(request: dict[str, int | None]) -> int | None:
  """The signal any process got, seen by all at the same step: processes that stopped at
  different steps would wait forever in each other's collectives. One process: its own."""
  if jax.process_count() == 1:
    return request["signum"]
  return int(distributed.job_max([request["signum"] or 0])[0]) or None


def _job_data_state(state: dict) -> dict:
  """The data position to checkpoint. A process-local one (packed batches: "process_local" in
  it) differs between processes, and only process 0 writes the checkpoint, so it carries every
  process's: {"processes": [state of process 0, 1, ...]}. Collective: all processes call it."""
  if jax.process_count() == 1:
    return state
  states = distributed.gather_json(state)
  return {"processes": states} if any("process_local" in s for s in states) else state


def _own_data_state(state: dict, directory: str, step: int) -> dict:
  """This process's position from a checkpointed one (`_job_data_state`)."""
  if "processes" not in state:
    return state
  if len(state["processes"]) != jax.process_count():
    raise checkpoint.CheckpointError(
        f"the checkpoint of step {step} in {directory} holds the data positions of "
        f"{len(state['processes'])} processes (packed batches are made per process), and this "
        f"job has {jax.process_count()}: resume with {len(state['processes'])} processes, or "
        "train with pack=False, whose positions restore under any process count")
  return state["processes"][jax.process_index()]


@contextlib.contextmanager
def _stop_requests():
  """A dict whose `signum` is set by the first SIGTERM/SIGINT; a second SIGINT aborts."""
  request: dict[str, int | None] = {"signum": None}
  if threading.current_thread() is not threading.main_thread():
    yield request  # Signal handlers can only be installed from the main thread.
    return

  def handle(signum, frame):
    if request["signum"] is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    request["signum"] = signum
    _say(f"{signal.Signals(signum).name}: saving a checkpoint after this step "
         "(Ctrl-C again aborts without saving)")

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def batch_fingerprint(batch: dict[str, np.ndarray]) -> int:
  """crc32 of the batch's arrays (sorted by key) but timing fields (TIMING_SUFFIXES): logged so
  resumed runs can be compared."""
  crc = 0
  for key in sorted(batch):
    if not key.endswith(TIMING_SUFFIXES):
      crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
  return crc


def _logged_final_eval(workdir: str, step: int) -> dict[str, float]:
  """The evaluation a run that ended at `step` logged before it was stopped (or {})."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return {}
  rows = [row for row in metrics_lib.read_jsonl(path) if row["step"] == step]
  return {k[len("eval/"):]: v for row in rows for k, v in row.items() if k.startswith("eval/")}


def _next_batch(batches, policy: Callable[[], Any]) -> dict[str, np.ndarray]:
  """An on-policy source samples with the parameters of the step just dispatched (`policy()`:
  the model's parameters, LoRA adapters merged)."""
  return batches.next_batch(policy()) if hasattr(batches, "next_batch") else next(batches)


def _as_floats(tree: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in tree.items()}


def train(config, workdir: str, *, cfg: ModelConfig, loss_fn: step_lib.LossFn, batches,
          params=None, frozen=None, frozen_cfg: ModelConfig | None = None,
          evaluate: Callable[[Any, jax.Array], dict[str, float]] | None = None
          ) -> tuple[state_lib.TrainState, dict[str, float]]:
  """Trains `config.steps` steps (or resumes and finishes them).

  Args:
    config: the experiment config (fields in the module docstring).
    workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/.
    cfg: the model's ModelConfig.
    loss_fn: `loss_fn(params, batch, rng, frozen) -> (loss, (weight, metrics))` (see `step`).
    batches: a checkpointable iterator of host batches (`data.batching.batches`), or an
      on-policy source (`grpo.Rollouts`) whose `next_batch(params)` samples with the current
      parameters.
    params: initial parameters (e.g. from a checkpoint); None initialises them randomly.
    frozen: parameters the loss reads but does not train (a reference model), placed like
      `params`, or like the parameters of `frozen_cfg` when given (a distillation teacher of
      another shape).
    evaluate: `evaluate(params, rng) -> metrics`, run every `eval_every` steps and at the end
      (a rerun of a finished run reuses the final evaluation it logged).

  With `config.lora.rank` > 0 the state trains LoRA adapters (`models.lora`) of the targeted
  projections of `params`, which stay frozen (the optimizer holds the adapters' moments only),
  and in full the modules `lora.modules` names (`config.lora.modules_to_save`, a reward model's
  score head; replicated);
  the loss, the batch source and `evaluate` see the merged parameters, a frozen reference that
  is `params` itself is the frozen base, and the adapters are also written as a PEFT folder,
  workdir/adapter.

  Returns:
    (final state, metrics of the final evaluation or {}); with LoRA, the state's params are the
    merged parameters.
  """
  check_config(config)
  adapters = _lora(config)
  init_params, model_shardings = init_boxed_params, None
  if adapters is not None:
    if params is None:
      raise ValueError(f"config.lora.rank={adapters.rank}: adapters train on a starting model; "
                       "set config.init_from")
    loss_fn, frozen = _adapted(loss_fn, params, frozen, adapters.alpha / adapters.rank)
    init_params, params = _lora_start(config, cfg, params)
  # What the memory plan counts beside the model: a frozen model other than the LoRA base.
  reference = frozen_cfg or (frozen is not None and (adapters is None or "reference" in frozen))
  mesh = sharding.make_mesh(**config.mesh)
  rules = tuple(config.axis_rules)
  # The schedule spans the run unless the config says otherwise.
  opt = optim.FIELDS | {"total_steps": config.steps} | dict(config.optimizer)
  tx = optim.make_optimizer(opt)
  schedule, max_nonfinite = optim.learning_rate_schedule(opt), opt["max_nonfinite_steps"]
  # Stored in each checkpoint: a checkpoint that no longer fits names the keys that changed.
  config_dict = json.loads(config.to_json_best_effort())
  if config.get("check_memory", True):
    # Refused before the state takes the devices' memory: a model whose state alone cannot fit
    # (the whole plan, batch included, is checked at the first batch).
    memory.check_fits(memory.plan(cfg, mesh_shape=mesh.shape, rules=rules, batch_size=0,
                                  seq_len=0, accum_steps=config.accum_steps,
                                  reference=reference, lora_section=adapters),
                      memory.device_memory())
  with contextlib.ExitStack() as closing, sharding.axis_rules(mesh, rules):
    # Closed in reverse order however the run ends: bar, metrics writer, checkpointer.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
    closing.callback(ckpt.close)
    abstract, shardings = state_lib.abstract_state(cfg, tx, mesh=mesh, rules=rules,
                                                   init_params=init_params)
    found = ckpt.restore_for_resume(
        abstract, resume_from=str(config.get("resume_from", "newest_intact")), config=config_dict)
    if found is not None:
      start, state, data_state = found
      if data_state is not None:
        batches.set_state(_own_data_state(data_state, ckpt.directory, start))
      _say(f"resumed from the checkpoint of step {start} in {ckpt.directory}")
    else:
      start = None
      state, _ = state_lib.init_state(cfg, tx, jax.random.key(config.seed), mesh=mesh,
                                      rules=rules, params=params, init_params=init_params)
    del params  # Now in the state; the caller's copy may be freed.
    frozen_shardings = (shardings.params if frozen_cfg is None else
                        state_lib.state_shardings(frozen_cfg, tx, mesh, rules).params)
    if adapters is not None:  # {"base": the model, "reference": a frozen model of its own}
      model_shardings = state_lib.state_shardings(cfg, tx, mesh, rules).params
      frozen_shardings = {"base": model_shardings} | (
          {"reference": frozen_shardings if frozen_cfg is not None else model_shardings}
          if "reference" in frozen else {})
    frozen_args = () if frozen is None else (jax.device_put(frozen, frozen_shardings),)
    del frozen
    if adapters is None:
      policy = lambda: state.params  # noqa: E731
    else:
      merge = jax.jit(functools.partial(lora.merge, scale=adapters.alpha / adapters.rank),
                      out_shardings=model_shardings)
      policy = lambda: merge(frozen_args[0]["base"], state.params)  # noqa: E731
    step = int(state.step)
    data_state = batches.get_state()  # The position after the last trained batch.
    host_batch = _next_batch(batches, policy) if step < config.steps else None
    if host_batch is not None:
      # The longest field (a rollout batch's samples, not its prompts) carries the work.
      rows = max(len(v) for v in host_batch.values()) * jax.process_count()
      sharding.check_batch(rows, mesh, rules)
      # Before compiling the step: the memory breakdown, and a run that cannot fit refused.
      plan = memory.plan_for_run(config, cfg, mesh.shape, host_batch,
                                 reference=reference)
      available = memory.device_memory()
      _say(memory.format_plan(plan, available))
      if config.get("check_memory", True):
        memory.check_fits(plan, available)
    batch_shardings = (sharding.batch_shardings(host_batch, mesh, rules)
                       if host_batch is not None else None)
    train_step = step_lib.jit_train_step(
        loss_fn, tx, shardings, batch_shardings,
        frozen_shardings if frozen_args else None, accum_steps=config.accum_steps)
    # A run stopped after its final checkpoint has logged its final evaluation, or not.
    final_eval = (_logged_final_eval(workdir, step)
                  if step == config.steps and evaluate is not None else {})
    writer = metrics_lib.MetricWriter(workdir, resume_step=step)
    closing.callback(writer.close)
    # Tokens through the model per step on this process: every `*inputs` field (preference
    # pairs have two). MFU compares this process's FLOPs with its own devices' peak.
    inputs = [v for k, v in (host_batch or {}).items() if k.endswith("inputs")]
    local_tokens = sum(x.size for x in inputs)
    flops_per_step = models.flops_per_token(cfg, inputs[0].shape[-1]) * local_tokens if inputs else 0
    peak = metrics_lib.peak_flops(cfg.dtype)
    last_saved = start  # The newest checkpoint, all of whose steps were finite.
    streak = 0  # Consecutive skipped (non-finite) updates up to the last step reported.

    def run_eval(at_step: int) -> dict[str, float]:
      result = evaluate(policy(), jax.random.fold_in(jax.random.key(config.seed + 1), at_step))
      writer.write(at_step, result, prefix="eval")
      _say(f"step {at_step} eval: " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
      return result

    def save(at_step: int) -> None:
      nonlocal last_saved
      if streak:
        _say(f"step {at_step}: no checkpoint while updates are skipped ({streak} "
             "non-finite in a row); the last one is of step "
             f"{last_saved if last_saved is not None else '(none)'}")
        return
      ckpt.save(at_step, state, _job_data_state(data_state), config=config_dict, force=True)
      last_saved = at_step

    bar = tqdm.tqdm(total=config.steps, initial=step, desc=config.get("name", "train"),
                    dynamic_ncols=True, disable=jax.process_index() != 0)
    closing.callback(bar.close)
    timer = None  # (time, step) of the last metrics read; None after a pause (compile, eval)

    def report(done: int, device_metrics, fingerprint: int):
      nonlocal timer, streak
      values = _as_floats(jax.device_get(device_metrics))
      now = time.perf_counter()
      if timer is not None and done > timer[1]:
        seconds = (now - timer[0]) / (done - timer[1])
        values |= {"step_seconds": seconds,
                   "tokens_per_s": local_tokens * jax.process_count() / seconds,
                   "mfu": flops_per_step / seconds / peak}
      timer = (now, done)
      values |= {"learning_rate": float(schedule(done - 1)), "batch_crc32": fingerprint}
      if done % config.log_every == 0 or done == config.steps:
        writer.write(done, values)
      bar.update(done - bar.n)
      bar.set_postfix({name: f"{values[key]:.3g}" for name, key in PROGRESS.items()
                       if key in values}, refresh=False)
      streak = int(values["nonfinite_streak"])
      if streak >= max_nonfinite:
        where = (f"the checkpoint of step {last_saved} in {ckpt.directory} is the last one "
                 "saved, and all its steps were finite; rerun to resume from it"
                 if last_saved is not None else
                 "no checkpoint was saved; rerun to start again")
        raise NonFiniteError(
            f"step {done}: {streak} consecutive steps had a non-finite loss, gradient or update "
            f"(optimizer.max_nonfinite_steps={max_nonfinite}), so none of them was applied; "
            f"{where}. Lower optimizer.learning_rate or check the data first.")

    pending = None  # (step, device metrics, fingerprint) of the step in flight
    if evaluate is not None and config.eval_at_start and step == 0:
      run_eval(0)
    with _stop_requests() as stop:
      while step < config.steps and (signum := _agreed_stop(stop)) is None:
        fingerprint = batch_fingerprint(host_batch)
        state, device_metrics = train_step(
            state, sharding.put_batch(host_batch, batch_shardings), *frozen_args)
        step += 1
        data_state = batches.get_state()
        if pending is not None:  # Read step N-1's metrics while step N runs.
          report(*pending)
        # After the report: an on-policy source waits for step N to sample with its result.
        host_batch = _next_batch(batches, policy) if step < config.steps else None
        pending = (step, device_metrics, fingerprint)
        save_now = ((config.checkpoint_every and step % config.checkpoint_every == 0)
                    or step == config.steps)
        evaluate_now = (evaluate is not None and config.eval_every
                        and step % config.eval_every == 0 and step < config.steps)
        if save_now or evaluate_now:
          # A checkpoint's metrics (and evaluation) are on disk before the checkpoint is, and
          # its step's streak is known.
          report(*pending)
          pending = None
        if evaluate_now:
          run_eval(step)
          timer = None
        if save_now:
          save(step)
      if pending is not None:
        report(*pending)
      if step < config.steps:
        if last_saved != step:
          save(step)
        ckpt.wait()
        raise Preempted(signum, step, last_saved)
    if evaluate is not None and not final_eval:
      final_eval = run_eval(step)
    if adapters is not None:
      if jax.process_index() == 0:
        lora.save_peft(os.path.join(workdir, "adapter"), cfg, state.params, rank=adapters.rank,
                       alpha=adapters.alpha, targets=tuple(adapters.targets),
                       base_model=str(config.get("init_from", "")))
      state = state.replace(params=policy())
  return state, final_eval


def _lora_start(config, cfg: ModelConfig, base):
  """(init_params of the trained tree, its start): fresh adapters (b = 0, so the first step
  sees the base model) and the base's copy of each module trained in full (`lora.modules`)."""
  section = config.lora
  full = {m: base[m] for m in lora.modules(cfg, tuple(section.get("modules_to_save", ())))}
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), full)

  def init_params(cfg, rng):  # The full modules' values come in as the start, not constants.
    return lora.init(cfg, rng, rank=section.rank, targets=tuple(section.targets),
                     full=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

  start = lora.init(cfg, jax.random.key(config.seed), rank=section.rank,
                    targets=tuple(section.targets), full=full)
  return init_params, start


def _adapted(loss_fn: step_lib.LossFn, base, frozen, scale: float):
  """(the loss of LoRA adapters, the frozen tree it reads): `loss_fn` on the base with the
  adapters attached (`lora.attach`, the factored form); its frozen argument is the base where
  the caller's reference is the base itself (the start policy of DPO or GRPO's KL), else that
  reference."""
  reference = None if frozen is None else ("base" if frozen is base else "reference")

  def adapted(trained, batch, rng, frozen):
    attached = lora.attach(frozen["base"], trained, scale=scale)
    return loss_fn(attached, batch, rng, None if reference is None else frozen[reference])

  return adapted, {"base": base} | ({"reference": frozen} if reference == "reference" else {})
