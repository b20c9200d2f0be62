"""Deterministic, checkpointable batches of fixed shape for SFT, preference, RL and PRM training.

    examples = [batching.sft_example(tok, prompt, completion) for prompt, completion in pairs]
    batches = batching.batches(examples, batch_size=8, seq_len=256, pack=True, seed=0,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    batch = next(batches)          # dict of numpy arrays [8, 256]
    state = batches.get_state()    # save with the checkpoint; batches.set_state(state) resumes

An example is a dict of 1-D int/float arrays of one length. Next-token targets are shifted per
example (`inputs` = seq[:-1], `targets` = seq[1:]), so packing several examples into one row never
predicts across a boundary. Batches are dicts of [B, T] arrays with `segment_ids` (0 = padding)
and `positions` (restarting in each segment), which `models.Model` takes directly.

All processes shuffle the examples alike (the shared seed, a new order every epoch) and each
reads only its rows of every global batch: process i of n takes rows [i*B, (i+1)*B) of each n*B
rows. Unpacked global batches are therefore the same whatever the process count, and so is
their position; packed ones are packed per process, so they and their positions differ with it.
The iterator state restores the exact order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

Example = dict[str, np.ndarray]


def sft_example(tokenizer, prompt: str, completion: str, *, eos: bool = True) -> Example:
  """Loss on the completion (and EOS) only; `eos=False` for a completion that does not end the
  text (one step of a solution).

  Returns inputs, targets int32 [L-1] and loss_mask float32 [L-1] (1 where the target is a
  completion token), L = len(bos + prompt + completion + eos).
  """
  prompt_ids = tokenizer.encode(prompt, add_bos=True)
  completion_ids = tokenizer.encode(completion, add_eos=eos)
  seq = np.asarray(prompt_ids + completion_ids, np.int32)
  is_completion = np.r_[np.zeros(len(prompt_ids)), np.ones(len(completion_ids))]
  return {"inputs": seq[:-1], "targets": seq[1:],
          "loss_mask": is_completion[1:].astype(np.float32)}


def preference_example(tokenizer, prompt: str, chosen: str, rejected: str, *,
                       eos: bool = True) -> Example:
  """A pair sharing its prompt: `chosen_*` and `rejected_*` fields as in `sft_example` (`eos`:
  both completions end the text)."""
  out = {}
  for name, completion in (("chosen", chosen), ("rejected", rejected)):
    out |= {f"{name}_{k}": v
            for k, v in sft_example(tokenizer, prompt, completion, eos=eos).items()}
  return out


def prm_example(tokenizer, prompt: str, steps: Sequence[str], labels: Sequence[float]) -> Example:
  """All steps of a solution in one sequence, a label at each step's last token.

  Each step is followed by the tokenizer's step delimiter. Returns inputs int32 [L], step_mask
  float32 [L] (1 at the last token of each step) and step_labels float32 [L] (the step's label
  there: 0/1, or a Monte-Carlo estimate in [0, 1]).
  """
  if len(steps) != len(labels):
    raise ValueError(f"prm_example: {len(steps)} steps but {len(labels)} labels")
  ids = tokenizer.encode(prompt, add_bos=True)
  step_mask, step_labels = [0.0] * len(ids), [0.0] * len(ids)
  for step, label in zip(steps, labels):
    step_ids = tokenizer.encode(step + tokenizer.step_delimiter)
    ids += step_ids
    step_mask += [0.0] * (len(step_ids) - 1) + [1.0]
    step_labels += [0.0] * (len(step_ids) - 1) + [float(label)]
  return {"inputs": np.asarray(ids, np.int32), "step_mask": np.asarray(step_mask, np.float32),
          "step_labels": np.asarray(step_labels, np.float32)}


def prompt_example(tokenizer, prompt: str, index: int) -> Example:
  """A prompt for on-policy sampling; `index` finds the problem (and its answer) on the host."""
  ids = np.asarray(tokenizer.encode(prompt, add_bos=True), np.int32)
  return {"prompt": ids, "index": np.asarray(index, np.int32)}


def pad_example(example: Example, seq_len: int) -> Example:
  """Right-pads (or truncates) every sequence field to seq_len, and adds the segment ids and
  positions of the unpacked layout (`prompt_length` too for prompt examples)."""
  out = {}
  for key, value in example.items():
    if value.ndim == 0:
      out[key] = value
      continue
    value = value[:seq_len]
    out[key] = np.pad(value, (0, seq_len - len(value)))
    if key.endswith("inputs") or key == "prompt":
      prefix = "prompt_" if key == "prompt" else key[: -len("inputs")]
      real = np.arange(seq_len) < len(value)
      out[prefix + "segment_ids"] = real.astype(np.int32)
      out[prefix + "positions"] = np.where(real, np.arange(seq_len), 0).astype(np.int32)
      if key == "prompt":
        out["prompt_length"] = np.asarray(len(value), np.int32)
  return out


def _unpack_names(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """Packing names `inputs_segment_ids`; keep one `segment_ids` / `positions` pair."""
  out = {k: v for k, v in batch.items() if not k.endswith(("_segment_ids", "_positions"))}
  out["segment_ids"] = batch["inputs_segment_ids"].astype(np.int32)
  out["positions"] = batch["inputs_positions"].astype(np.int32)
  return out


class _GlobalPosition:
  """An unpacked iterator whose state counts rows of the global batches: a checkpoint written
  by n processes restores in any other number of them (the global batches are the same)."""

  def __init__(self, rows: grain.DatasetIterator, count: int):
    self._rows, self._count = rows, count

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._rows)

  def get_state(self) -> dict[str, Any]:
    state = self._rows.get_state()
    return state | {"next_index": state["next_index"] * self._count}

  def set_state(self, state: dict[str, Any]) -> None:
    self._rows.set_state(state | {"next_index": state["next_index"] // self._count})


class _ProcessLocalPosition(_GlobalPosition):
  """A packed iterator of one of several processes: each packs its own rows, so its position
  is its own ("process_local"); a checkpoint keeps every process's (`training.loop`)."""

  def __init__(self, rows: grain.DatasetIterator):
    super().__init__(rows, 1)

  def get_state(self) -> dict[str, Any]:
    return self._rows.get_state() | {"process_local": True}

  def set_state(self, state: dict[str, Any]) -> None:
    self._rows.set_state({k: v for k, v in state.items() if k != "process_local"})


def _rows_of_process(dataset: grain.MapDataset, rows: int, index: int, count: int
                     ) -> grain.MapDataset:
  """Element k of process `index` is element (k // rows) * rows * count + index * rows +
  k % rows of `dataset`: its `rows` of every `rows * count`. Lazy: a lazy `dataset` (e.g. a
  data source mapped through a tokenizer) is read only at this process's elements."""
  block = rows * count
  return grain.MapDataset.range(len(dataset) // block * rows).map(
      lambda k: dataset[k // rows * block + index * rows + k % rows])


def batches(examples: Sequence[Example], *, batch_size: int, seq_len: int, pack: bool = False,
            seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
            process_index: int = 0, process_count: int = 1, drop_too_long: bool = False
            ) -> grain.DatasetIterator:
  """An iterator of fixed-shape batches over `examples` (see the module docstring).

  Args:
    examples: a sequence of examples from the `*_example` functions (all of one kind), or a
      lazy one (`grain.MapDataset.source(records).map(make_example)`).
    batch_size: rows per batch on this process.
    seq_len: T; longer examples are truncated, or dropped with `drop_too_long`.
    pack: first-fit packing of several examples per row (needs `inputs`; SFT and PRM).
    num_epochs: None repeats forever; the last partial batch of a finite run is dropped.
    process_index, process_count: this process's rows of each global batch (module docstring).

  Returns:
    A grain `DatasetIterator`: `next()` gives a batch; `get_state()` / `set_state()` save and
    restore the position exactly.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
  if len(examples) < process_count:
    raise ValueError(f"{len(examples)} examples cannot be sharded over {process_count} processes")
  dataset = grain.MapDataset.source(examples)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)  # Before repeat: a new order every epoch.
  dataset = dataset.repeat(num_epochs)
  if process_count > 1:
    dataset = _rows_of_process(dataset, batch_size, process_index, process_count)
  dataset = dataset.to_iter_dataset()
  if drop_too_long:
    dataset = dataset.filter(lambda e: all(v.ndim == 0 or len(v) <= seq_len for v in e.values()))
  if not pack:
    rows = iter(dataset.map(lambda e: pad_example(e, seq_len)).batch(batch_size,
                                                                     drop_remainder=True))
    return rows if process_count == 1 else _GlobalPosition(rows, process_count)
  if "inputs" not in examples[0]:
    raise ValueError("pack=True needs examples with `inputs` (sft_example or prm_example)")
  # Truncate first: the packer cannot place an example longer than a row.
  dataset = dataset.map(lambda e: {k: v[:seq_len] for k, v in e.items()})
  packed = grain.experimental.FirstFitPackIterDataset(
      dataset, length_struct={k: seq_len for k in examples[0]}, num_packing_bins=batch_size,
      seed=seed, shuffle_bins=False)
  rows = iter(packed.batch(batch_size, drop_remainder=True).map(_unpack_names))
  return rows if process_count == 1 else _ProcessLocalPosition(rows)
