"""TensorFlow-Datasets builders in array_record format, read with `tfds.data_source` + grain.

TensorFlow itself is not needed: array_record files are written by TFDS's writer and read by
random access, which grain's samplers use for deterministic, resumable, per-process shards.

    sources = builders.prepare("synthetic/arithmetic", data_dir="~/tensorflow_datasets")
    sources = builders.prepare("gsm8k", data_dir=..., source_dir="path/with/gsm8k/jsonl")
    problem = builders.to_problem(sources["train"][0])

Builders: `reasonjax_synthetic` (one config per task in `tasks.TASKS`), `reasonjax_gsm8k`
(train/test from `train.jsonl`/`test.jsonl` in `source_dir`), `reasonjax_math500` (test).
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow_datasets as tfds

from reasonjax.data import datasets, tasks
from reasonjax.data.tasks.base import Problem

_FEATURES = {"question": tfds.features.Text(), "answer": tfds.features.Text(),
             "solution": tfds.features.Text(), "data": tfds.features.Text()}
SYNTHETIC_SIZES = {"train": 20_000, "test": 1_000}


def _example(problem: Problem) -> dict[str, str]:
  return {"question": problem.question, "answer": problem.answer, "solution": problem.solution,
          "data": json.dumps(problem.data, default=list)}


def to_problem(record: dict[str, Any]) -> Problem:
  """A record read from a data source (bytes fields) back to a `Problem`."""
  text = {k: v.decode() if isinstance(v, bytes) else v for k, v in record.items()}
  data = json.loads(text["data"])
  # JSON has no tuples: restore them where the task checkers compare with tuples.
  data = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list)
          else v for k, v in data.items()}
  return Problem(text["question"], text["answer"], text["solution"], data)


class ReasonjaxSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic step-structured tasks with default difficulty; the split is from `tasks`."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in sorted(tasks.TASKS)]

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, size)
            for split, size in SYNTHETIC_SIZES.items()}

  def _generate_examples(self, split, size):
    task = tasks.get_task(self.builder_config.name)
    for i, problem in enumerate(task.iterate(seed=0, split=split, limit=size)):
      yield i, _example(problem)


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder):
  """Reads `<source_dir>/<split>.jsonl` with the JSONL loaders; nothing is downloaded."""

  VERSION = tfds.core.Version("1.0.0")
  SPLITS: tuple[str, ...] = ()
  LOADER = None

  def __init__(self, *, source_dir: str | None = None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES))

  def _split_generators(self, dl_manager):
    if not self._source_dir:
      raise ValueError(f"{self.name}: pass source_dir, the folder holding "
                       f"{[s + '.jsonl' for s in self.SPLITS]}")
    return {split: self._generate_examples(os.path.join(self._source_dir, split + ".jsonl"))
            for split in self.SPLITS}

  def _generate_examples(self, path):
    for i, problem in enumerate(type(self).LOADER(path)):
      yield i, _example(problem)


class ReasonjaxGsm8k(_JsonlBuilder):
  SPLITS = ("train", "test")
  LOADER = staticmethod(datasets.load_gsm8k)


class ReasonjaxMath500(_JsonlBuilder):
  SPLITS = ("test",)
  LOADER = staticmethod(datasets.load_math)


BUILDERS = {"synthetic": ReasonjaxSynthetic, "gsm8k": ReasonjaxGsm8k,
            "math500": ReasonjaxMath500}


def prepare(name: str, *, data_dir: str, source_dir: str | None = None):
  """Builds the dataset once (array_record files in `data_dir`) and returns
  {split: random-access data source}. `name` is 'gsm8k', 'math500' or 'synthetic/<task>'."""
  base, _, config = name.partition("/")
  if base not in BUILDERS or (base == "synthetic") != (config in tasks.TASKS):
    raise ValueError(f"unknown dataset {name!r}; valid: 'gsm8k', 'math500', "
                     f"{[f'synthetic/{t}' for t in sorted(tasks.TASKS)]}")
  kwargs = {"config": config} if config else {"source_dir": source_dir}
  builder = BUILDERS[base](data_dir=os.path.expanduser(data_dir), file_format="array_record",
                           **kwargs)
  builder.download_and_prepare()
  return builder.as_data_source()
