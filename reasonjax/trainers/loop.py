"""The training loop every method shares: checkpoints, exact resume, metrics, evaluation.

    state, final_eval = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                                   params=init_params, evaluate=evaluate_fn)

What it guarantees:
  - The run resumes from the newest checkpoint in `workdir/checkpoints` (parameters, optimizer,
    rng, step and the data iterator's position), so a resumed run equals an uninterrupted one.
  - SIGTERM or Ctrl-C saves a checkpoint of the current step and raises `Preempted`; a second
    Ctrl-C aborts without saving. A crash (or SIGKILL) loses the steps since the last checkpoint.
  - An update whose loss or gradients are not finite is skipped (`optim.make_optimizer`) and
    counted; `max_nonfinite_steps` of them in a row stop the run with `NonFiniteError`, leaving
    the last checkpoint (all of whose steps were finite) as it was.
  - Metrics go to `workdir/metrics.jsonl` and TensorBoard every `log_every` steps; the progress
    bar shows loss, tokens/s and MFU (model FLOPs over the devices' peak FLOP/s).
  - Step N+1 is dispatched before step N's metrics are read, so the host never stalls the device.

Config fields read here: seed, steps, accum_steps, log_every, eval_every, eval_at_start,
checkpoint_every, keep_checkpoints, optimizer, mesh, axis_rules (`configs/common.py:loop`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tqdm

from reasonjax import checkpoint, metrics as metrics_lib, models, sharding
from reasonjax.models import ModelConfig
from reasonjax.trainers import optim, state as state_lib, step as step_lib


class Preempted(Exception):  # noqa: N818 -- it is not an error: rerun the command to resume.
  """A signal stopped the run after saving a checkpoint; `signum` says which."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} after saving a "
                     "checkpoint; rerun the same command to resume")
    self.signum, self.step = signum, step


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


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
    tqdm.tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step "
                    "(Ctrl-C again aborts without saving)")

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def batch_fingerprint(batch: dict[str, np.ndarray]) -> int:
  """crc32 of the batch's arrays (sorted by key): logged so resumed runs can be compared."""
  crc = 0
  for key in sorted(batch):
    crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
  return crc


def _next_batch(batches, state: state_lib.TrainState) -> dict[str, np.ndarray]:
  """An on-policy source samples with the parameters of the step just dispatched."""
  return batches.next_batch(state.params) if hasattr(batches, "next_batch") else next(batches)


def _as_floats(tree: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in tree.items()}


def train(config, workdir: str, *, cfg: ModelConfig, loss_fn: step_lib.LossFn, batches,
          params=None, frozen=None,
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
      `params`.
    evaluate: `evaluate(params, rng) -> metrics`, run every `eval_every` steps and at the end.

  Returns:
    (final state, metrics of the final evaluation or {}).
  """
  mesh = sharding.make_mesh(**config.mesh)
  rules = tuple(config.axis_rules)
  # The schedule spans the run unless the config says otherwise.
  opt = optim.FIELDS | {"total_steps": config.steps} | dict(config.optimizer)
  tx = optim.make_optimizer(opt)
  schedule, max_nonfinite = optim.learning_rate_schedule(opt), opt["max_nonfinite_steps"]
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.keep_checkpoints)
  with sharding.axis_rules(mesh, rules):
    abstract, shardings = state_lib.abstract_state(cfg, tx, mesh=mesh, rules=rules)
    start = ckpt.latest_step()
    if start is not None:
      state, data_state = ckpt.restore(start, abstract)
      if data_state is not None:
        batches.set_state(data_state)
      tqdm.tqdm.write(f"resumed from the checkpoint of step {start} in {ckpt.directory}")
    else:
      state, _ = state_lib.init_state(cfg, tx, jax.random.key(config.seed), mesh=mesh,
                                      rules=rules, params=params)
    del params  # Now in the state; the caller's copy may be freed.
    frozen_args = () if frozen is None else (jax.device_put(frozen, shardings.params),)
    del frozen
    step = int(state.step)
    data_state = batches.get_state()  # The position after the last trained batch.
    host_batch = _next_batch(batches, state) if step < config.steps else None
    batch_shardings = (sharding.batch_shardings(host_batch, mesh, rules)
                       if host_batch is not None else None)
    train_step = step_lib.jit_train_step(
        loss_fn, tx, shardings, batch_shardings,
        shardings.params if frozen_args else None, accum_steps=config.accum_steps)
    writer = metrics_lib.MetricWriter(workdir, resume_step=step)
    # Tokens through the model per step on this process: every `*inputs` field (preference
    # pairs have two). MFU compares this process's FLOPs with its own devices' peak.
    inputs = [v for k, v in (host_batch or {}).items() if k.endswith("inputs")]
    local_tokens = sum(x.size for x in inputs)
    flops_per_step = models.flops_per_token(cfg, inputs[0].shape[-1]) * local_tokens if inputs else 0
    peak = metrics_lib.peak_flops(cfg.dtype)
    final_eval: dict[str, float] = {}
    last_saved = start

    def run_eval(at_step: int) -> dict[str, float]:
      result = evaluate(state.params, jax.random.fold_in(jax.random.key(config.seed + 1), at_step))
      writer.write(at_step, result, prefix="eval")
      tqdm.tqdm.write(f"step {at_step} eval: " +
                      " ".join(f"{k}={v:.4g}" for k, v in result.items()))
      return result

    bar = tqdm.tqdm(total=config.steps, initial=step, desc=config.get("name", "train"),
                    dynamic_ncols=True)
    timer = None  # (time, step) of the last metrics read; None after a pause (compile, eval)

    def report(done: int, device_metrics, fingerprint: int):
      nonlocal timer
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
      bar.set_postfix({k: f"{values[k]:.3g}" for k in ("loss", "tokens_per_s", "mfu")
                       if k in values}, refresh=False)
      if values["nonfinite_streak"] >= max_nonfinite:
        raise NonFiniteError(
            f"step {done}: {int(values['nonfinite_streak'])} consecutive steps had a non-finite "
            f"loss or gradient (optimizer.max_nonfinite_steps={max_nonfinite}); the last "
            f"checkpoint (step {last_saved}) in {ckpt.directory} is kept. Lower "
            "optimizer.learning_rate or check the data, then rerun to resume from it.")

    pending = None  # (step, device metrics, fingerprint) of the step in flight
    try:
      if evaluate is not None and config.eval_at_start and step == 0:
        run_eval(0)
      with _stop_requests() as stop:
        while step < config.steps and stop["signum"] is None:
          fingerprint = batch_fingerprint(host_batch)
          state, device_metrics = train_step(
              state, sharding.put_batch(host_batch, batch_shardings), *frozen_args)
          step += 1
          data_state = batches.get_state()
          if pending is not None:  # Read step N-1's metrics while step N runs.
            report(*pending)
          # After the report: an on-policy source waits for step N to sample with its result.
          host_batch = _next_batch(batches, state) if step < config.steps else None
          pending = (step, device_metrics, fingerprint)
          save = step % config.checkpoint_every == 0 or step == config.steps
          evaluate_now = (evaluate is not None and config.eval_every
                          and step % config.eval_every == 0 and step < config.steps)
          if save or evaluate_now:
            # A checkpoint's metrics (and evaluation) are on disk before the checkpoint is.
            report(*pending)
            pending = None
          if evaluate_now:
            run_eval(step)
            timer = None
          if save:
            ckpt.save(step, state, data_state, force=True)
            last_saved = step
        if pending is not None:
          report(*pending)
        if stop["signum"] is not None:
          if last_saved != step:
            ckpt.save(step, state, data_state, force=True)
          ckpt.wait()
          raise Preempted(stop["signum"], step)
      if evaluate is not None:
        final_eval = run_eval(step)
    finally:
      bar.close()
      writer.close()
      ckpt.close()
  return state, final_eval
