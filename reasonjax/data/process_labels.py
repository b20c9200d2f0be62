"""Human step labels from local files: ProcessBench, PRM800K (OpenAI's original format) and the
one-row-per-rated-step conversion of PRM800K phase 1.

    bench = process_labels.load_processbench("processbench/gsm8k.json")  # [LabelledSolution]
    prm = process_labels.load_prm800k("prm800k/phase1_test.jsonl", branches=True)
    rows = process_labels.load_prm800k_stepwise("phase1_train_plus.stepwise-critic.jsonl.gz")
    paths = process_labels.stepwise_solutions(rows)                     # [LabelledSolution]
    train = process_labels.training_records(paths, neutral=1.0)         # steps, labels in [0, 1]
    examples = [batching.prm_example(tok, prompt(r.problem), r.steps, r.labels) for r in train]

Every loader yields `LabelledSolution`s, except the stepwise one, whose rows `stepwise_solutions`
groups into them. Paths are any local files; a name ending in `.gz` is read through gzip and
JSONL is streamed line by line. A row that breaks its format raises `DataError` (a ValueError)
naming the file, the line (JSONL, 1-based) or row (JSON list, 0-based) and the field.

PRM800K ratings: +1 a good step, -1 a wrong one, 0 one that "isn't incorrect, but does not make
any progress" (the PRM800K README). Conventions here:
  * first_error is the first step rated -1; a 0 is not an error.
  * A human-written step has rating None. Phase-1 labellers write one, as a +1 step, when every
    completion of a step was rated -1; it counts as correct.
  * Training labels (`rating_label`): +1 -> 1, -1 -> 0, 0 -> `neutral`, human -> `human`.
    neutral defaults to 1.0, the reading first_error uses (not wrong). 0.0 counts no progress as
    bad, 0.5 is a soft label, and None drops the step, as the HRM authors' phase-1 data
    builder drops neutral completions.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from reasonjax.data.datasets import DataError

RATINGS = (-1, 0, 1)
FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")
ANSWER_LINE = "\n\n# Answer\n\n"  # PRM800K's separator before a step's final answer


@dataclasses.dataclass(frozen=True)
class LabelledSolution:
  """One solution with its step labels.

  first_error: index of the first wrong step, -1 if none is wrong.
  step_ratings: one per step: -1.0, 0.0, +1.0, or None for a human-written (or unrated chosen)
    step; None as a whole where only first_error is known (ProcessBench).
  source: the data set, e.g. "processbench/gsm8k"; id: unique within it.
  final_answer_correct: ProcessBench's flag, None elsewhere.
  """
  problem: str
  steps: tuple[str, ...]
  first_error: int
  step_ratings: tuple[float | None, ...] | None
  source: str
  id: str
  final_answer_correct: bool | None = None


@dataclasses.dataclass(frozen=True)
class StepRow:
  """One row of the stepwise PRM800K conversion: a step rated after the chosen previous steps."""
  problem: str
  previous: tuple[str, ...]
  step: str
  rating: float | None  # -1.0, 0.0, 1.0; None for a human step or an unrated completion
  is_human: bool
  is_preferred: bool  # the labeller continued from this step (the chosen completion)
  is_solution: bool  # the chosen step that ends the solution
  answer: str | None  # the answer the step states, if it states one
  id: str  # "<file stem>:<line>"


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """A training record for a PRM or HRM: steps with one label each, in [0, 1]."""
  problem: str
  steps: tuple[str, ...]
  labels: tuple[float, ...]
  id: str


class _RowError(Exception):
  """A broken row; the loader adds the file and the line or row."""


# ----------------------------------------------------------------------------- file reading


def _stem(path: str) -> str:
  """'phase1_test' for '.../phase1_test.jsonl.gz'."""
  name = os.path.basename(path)
  for ext in (".gz", ".jsonl", ".json"):
    name = name[: -len(ext)] if name.endswith(ext) else name
  return name


def _open(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _objects(path: str) -> Iterator[tuple[str, int, Any]]:
  """(where, index, object) for each row of a JSON list or each line of a JSONL file.

  where is "path:line" and index the 1-based line for JSONL; "path: row i" and the 0-based row
  for a list. JSONL is read line by line; a JSON list is parsed whole (the stdlib cannot
  stream one).
  """
  with _open(path) as f:
    if not path.endswith((".jsonl", ".jsonl.gz")):
      try:
        rows = json.loads(f.read().decode("utf-8-sig"))
      except ValueError as e:  # JSON and UTF-8 errors
        raise DataError(f"{path}: not valid JSON: {e}") from None
      if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
      yield from ((f"{path}: row {i}", i, row) for i, row in enumerate(rows))
      return
    for line_number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        # utf-8-sig on the first line: editors on Windows start files with a byte-order mark.
        row = json.loads(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
      except ValueError as e:
        raise DataError(f"{where}: not valid JSON: {e}") from None
      yield where, line_number, row


def _parse(path: str, parse: Callable[[int, dict[str, Any]], Any]) -> Iterator[Any]:
  """parse(index, row) for every row (see `_objects`); a `_RowError` becomes a DataError
  naming the file and the row."""
  for where, index, row in _objects(path):
    try:
      if not isinstance(row, dict):
        raise _RowError(f"expected a JSON object, got {type(row).__name__}")
      yield parse(index, row)
    except _RowError as e:
      raise DataError(f"{where}: {e}") from None


def _get(obj: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...] | None = None,
         *, nullable: bool = False) -> Any:
  """obj[key], of type kind unless kind is None; `name` is the dotted name errors report."""
  if key not in obj:
    raise _RowError(f"missing field {name!r}")
  value = obj[key]
  if kind is None or (value is None and nullable):
    return value
  # bool is an int: a flag is never a number here, nor a number a flag.
  if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
    raise _RowError(f"field {name!r} is {type(value).__name__}, expected "
                    f"{' or '.join(t.__name__ for t in _tuple(kind))}")
  return value


def _tuple(kind) -> tuple[type, ...]:
  return kind if isinstance(kind, tuple) else (kind,)


def _strings(values: list[Any], name: str) -> tuple[str, ...]:
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise _RowError(f"field '{name}[{i}]' is {type(value).__name__}, expected str")
  return tuple(values)


def _rating(value: Any, name: str) -> float | None:
  """A PRM800K rating -1, 0 or +1 (ints, or floats after a parquet round trip) or null."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in RATINGS:
    raise _RowError(f"field {name!r} is {value!r}, expected -1, 0, 1 or null")
  return float(value)


def _first_error(ratings: Sequence[float | None]) -> int:
  return next((i for i, r in enumerate(ratings) if r == -1), -1)


# ----------------------------------------------------------------------------- ProcessBench


def load_processbench(path: str, *, source: str | None = None) -> list[LabelledSolution]:
  """ProcessBench rows {id, problem, steps, label[, final_answer_correct, generator]}.

  label is the 0-based index of the first wrong step, -1 if none; step_ratings is None.

  Args:
    path: a JSON list (the published files) or JSONL, optionally gzipped.
    source: the records' source; default "processbench/<file stem>".

  Returns:
    One record per row, in file order; id is the row's id, or "<stem>:<row>" without one.
  """
  source = source or f"processbench/{_stem(path)}"

  def parse(index: int, row: dict[str, Any]) -> LabelledSolution:
    problem = _get(row, "problem", "problem", str)
    steps = _strings(_get(row, "steps", "steps", list), "steps")
    label = _get(row, "label", "label", int)
    if not -1 <= label < len(steps):
      raise _RowError(f"field 'label' is {label}, expected -1 or a step index < {len(steps)}")
    correct = None
    if "final_answer_correct" in row:
      correct = _get(row, "final_answer_correct", "final_answer_correct", bool, nullable=True)
    row_id = f"{_stem(path)}:{index}" if row.get("id") is None else str(row["id"])
    return LabelledSolution(problem=problem, steps=steps, first_error=label, step_ratings=None,
                            source=source, id=row_id, final_answer_correct=correct)

  return list(_parse(path, parse))


# ----------------------------------------------------------------------------- PRM800K


def load_prm800k(path: str, *, finish_reasons: Collection[str] = ("solution", "found_error"),
                 branches: bool = False) -> list[LabelledSolution]:
  """PRM800K labelled solutions in OpenAI's original format (phase 1; see the module docstring).

  A solution's steps are, per labelled step, the chosen completion or else the human-written
  one. A step where the labeller chose neither is where labelling stopped (give_up,
  found_error); it must be the last. It is left out, except that with finish_reason
  "found_error" its first completion rated -1 ends the path: that is the error found.

  Which rows: `finish_reasons` keeps "solution" (the path reached the right answer) and
  "found_error" by default. "give_up" paths stop unfinished, with no rating where they stop,
  and "bad_problem" ones are broken problems; the HRM authors' data builder drops both too.

  Phase-1 labellers only continue from a step they rate +1 (or write), so a chosen path has no
  -1 and its first_error is -1. The wrong steps are among the alternatives: `branches=True` adds,
  for every completion rated -1 that is not on the path, the path up to that step followed by
  it, with first_error at that step (id "<path id>/<step>.<completion>"). Its last step is the
  wrong one, so a branch tests where the error is, not whether a model notices what follows it.

  Args:
    path: a JSONL file, optionally gzipped.
    finish_reasons: the finish_reason values to keep, of FINISH_REASONS.
    branches: also return the wrong alternatives, after the solution they branch from.

  Returns:
    Records with source "prm800k" and id "<file stem>:<line>"; a path with no step (given up
    at the first) is left out, though not its branches.
  """
  unknown = set(finish_reasons) - set(FINISH_REASONS)
  if unknown:
    raise ValueError(f"unknown finish_reasons {sorted(unknown)}; valid: {FINISH_REASONS}")
  stem = _stem(path)

  def parse(index: int, row: dict[str, Any]) -> list[LabelledSolution]:
    question = _get(row, "question", "question", dict)
    problem = _get(question, "problem", "question.problem", str)
    label = _get(row, "label", "label", dict)
    finish = _get(label, "finish_reason", "label.finish_reason", str)
    if finish not in FINISH_REASONS:
      raise _RowError(f"field 'label.finish_reason' is {finish!r}, expected one of "
                      f"{FINISH_REASONS}")
    if finish not in finish_reasons:
      return []
    steps = _get(label, "steps", "label.steps", list)
    texts, ratings, wrong_alternatives = [], [], []  # wrong: (step, completion, text)
    for k, step in enumerate(steps):
      name = f"label.steps[{k}]"
      if not isinstance(step, dict):
        raise _RowError(f"field {name!r} is {type(step).__name__}, expected dict")
      completions = _get(step, "completions", f"{name}.completions", list, nullable=True) or []
      rated = []
      for j, completion in enumerate(completions):
        cname = f"{name}.completions[{j}]"
        if not isinstance(completion, dict):
          raise _RowError(f"field {cname!r} is {type(completion).__name__}, expected dict")
        rated.append((_get(completion, "text", f"{cname}.text", str),
                      _rating(_get(completion, "rating", f"{cname}.rating"), f"{cname}.rating")))
      chosen = _get(step, "chosen_completion", f"{name}.chosen_completion", int, nullable=True)
      human = _get(step, "human_completion", f"{name}.human_completion", (str, dict),
                   nullable=True)
      on_path = None
      if chosen is not None:
        if not 0 <= chosen < len(rated):
          raise _RowError(f"field '{name}.chosen_completion' is {chosen}, but the step has "
                          f"{len(rated)} completions")
        on_path = chosen
        texts.append(rated[chosen][0])
        ratings.append(rated[chosen][1])
      elif human is not None:
        # Phase 1 stores {text, rating: null, source: "human", ...}; the README shows a string.
        texts.append(human if isinstance(human, str)
                     else _get(human, "text", f"{name}.human_completion.text", str))
        ratings.append(None)
      else:
        if k != len(steps) - 1:
          raise _RowError(f"{name} has neither a chosen nor a human completion but is not the "
                          "last step")
        if finish == "found_error":
          on_path = next((j for j, (_, r) in enumerate(rated) if r == -1), None)
          if on_path is not None:
            texts.append(rated[on_path][0])
            ratings.append(-1.0)
      wrong_alternatives += [(k, j, text) for j, (text, r) in enumerate(rated)
                             if r == -1 and j != on_path]
    row_id = f"{stem}:{index}"
    out = []
    if texts:  # A labeller can give up at the first step.
      out.append(LabelledSolution(problem=problem, steps=tuple(texts),
                                  first_error=_first_error(ratings),
                                  step_ratings=tuple(ratings), source="prm800k", id=row_id))
    if branches:
      for k, j, text in wrong_alternatives:
        branch = tuple(ratings[:k]) + (-1.0,)
        out.append(LabelledSolution(problem=problem, steps=tuple(texts[:k]) + (text,),
                                    first_error=_first_error(branch), step_ratings=branch,
                                    source="prm800k", id=f"{row_id}/{k}.{j}"))
    return out

  return [solution for solutions in _parse(path, parse) for solution in solutions]


# ----------------------------------------------------------------------------- PRM800K stepwise


def iter_prm800k_stepwise(path: str) -> Iterator[StepRow]:
  """Streams the rows of a stepwise-critic file (JSONL, optionally gzipped): {instruction,
  responses, next_response, rating, is_human_response, is_preferred_response, is_solution[,
  answer]}.

  The conversion moved a step's answer line (PRM800K ends a step that answers with
  "\n\n# Answer\n\n<answer>") into `answer`; `step` puts it back, so step texts are those of
  the original format (checked against phase1_test.jsonl).
  """
  stem = _stem(path)

  def parse(index: int, row: dict[str, Any]) -> StepRow:
    step = _get(row, "next_response", "next_response", str)
    answer = _get(row, "answer", "answer", str, nullable=True) if "answer" in row else None
    return StepRow(
        problem=_get(row, "instruction", "instruction", str),
        previous=_strings(_get(row, "responses", "responses", list), "responses"),
        step=step if answer is None else f"{step}{ANSWER_LINE}{answer}",
        rating=_rating(_get(row, "rating", "rating"), "rating"),
        is_human=_get(row, "is_human_response", "is_human_response", bool),
        is_preferred=_get(row, "is_preferred_response", "is_preferred_response", bool),
        is_solution=_get(row, "is_solution", "is_solution", bool),
        answer=answer,
        id=f"{stem}:{index}")

  return _parse(path, parse)


def load_prm800k_stepwise(path: str) -> list[StepRow]:
  """All rows of a stepwise-critic file; see `iter_prm800k_stepwise`."""
  return list(iter_prm800k_stepwise(path))


def stepwise_solutions(rows: Iterable[StepRow], *, source: str = "prm800k_stepwise"
                       ) -> list[LabelledSolution]:
  """Groups per-step rows into paths from the problem: the steps leading to a rated step, then
  that step.

  The rows of a problem form a tree of steps (a step's parent is its last previous step). A
  step on the way to another takes the rating of the row that chose it (is_preferred: only
  that labeller continued from it; another labeller may have rated the same text differently).
  One path ends at every other (step, rating): the last step of each labelled trajectory, each
  rejected alternative, and a second rating of a step given by a labeller who did not choose
  it. So every rating of the file is on exactly one path's last step or on the paths through
  it. Identical (step, rating) rows count once; unrated model completions (rating null, not
  human; where a labeller gave up) are dropped. A path whose previous steps have no row of
  their own (a filtered file) is dropped too, as its labels are unknown.

  Args:
    rows: from `load_prm800k_stepwise` / `iter_prm800k_stepwise`, of one or more files.
    source: the records' source.

  Returns:
    Records in the order their last step first appears. id is the id of that step's first
    row, with "#r" added to the r-th (r >= 1) further path that ends at the same step.
  """
  ratings: dict[tuple, list[float | None]] = {}  # step key -> distinct ratings, in row order
  chosen: dict[tuple, float | None] = {}  # step key -> rating of its first preferred row
  ids: dict[tuple, str] = {}
  parents: set[tuple] = set()
  for row in rows:
    if row.rating is None and not row.is_human:
      continue
    key = (row.problem, row.previous, row.step)
    if key not in ratings:
      ratings[key], ids[key] = [], row.id
      if row.previous:
        parents.add((row.problem, row.previous[:-1], row.previous[-1]))
    if row.rating not in ratings[key]:
      ratings[key].append(row.rating)
    if row.is_preferred and key not in chosen:
      chosen[key] = row.rating

  def path_rating(key: tuple) -> float | None:
    return chosen[key] if key in chosen else ratings[key][0]

  out = []
  for key, distinct in ratings.items():
    problem, previous, step = key
    prefix = [(problem, previous[:i], previous[i]) for i in range(len(previous))]
    if any(p not in ratings for p in prefix):
      continue
    prefix_ratings = tuple(path_rating(p) for p in prefix)
    # A step others continue from ends no path with the rating they go through it with.
    ends = [r for r in distinct if key not in parents or r != path_rating(key)]
    for r, rating in enumerate(ends):
      step_ratings = prefix_ratings + (rating,)
      out.append(LabelledSolution(problem=problem, steps=previous + (step,),
                                  first_error=_first_error(step_ratings),
                                  step_ratings=step_ratings, source=source,
                                  id=ids[key] + (f"#{r}" if r else "")))
  return out


# ----------------------------------------------------------------------------- training labels


def rating_label(rating: float | None, *, neutral: float | None = 1.0,
                 human: float = 1.0) -> float | None:
  """A step's training label in [0, 1]: +1 -> 1, -1 -> 0, 0 -> neutral, None (human) -> human;
  None where neutral is None and the rating is 0 (the step is not used)."""
  if rating is None:
    return human
  if rating not in RATINGS:
    raise ValueError(f"rating {rating!r}; expected -1, 0, 1 or None")
  return {1: 1.0, -1: 0.0}.get(int(rating), neutral)


def training_records(solutions: Iterable[LabelledSolution], *, neutral: float | None = 1.0,
                     human: float = 1.0) -> list[StepRecord]:
  """PRM/HRM training records (`batching.prm_example`, `step_labels.hierarchical_units`).

  With step_ratings, the labels are `rating_label` of each; a solution with a step that gets no
  label (a 0 with neutral=None) is left out. Without them (ProcessBench), steps before
  first_error get 1 and first_error itself 0; the steps after it are cut off, since the data
  labels only the first error.

  Args:
    solutions: labelled solutions.
    neutral: the label of a 0 rating, in [0, 1], or None to leave its solution out.
    human: the label of a human-written step, in [0, 1].

  Returns:
    One record per solution kept, with the solution's id.
  """
  for name, value in (("neutral", neutral), ("human", human)):
    if value is not None and not 0.0 <= value <= 1.0:
      raise ValueError(f"{name}={value!r}; expected a label in [0, 1]")
  out = []
  for s in solutions:
    if s.step_ratings is None:
      end = len(s.steps) if s.first_error == -1 else s.first_error + 1
      steps, labels = s.steps[:end], tuple(float(i != s.first_error) for i in range(end))
    else:
      steps = s.steps
      labels = tuple(rating_label(r, neutral=neutral, human=human) for r in s.step_ratings)
      if any(y is None for y in labels):
        continue
    out.append(StepRecord(problem=s.problem, steps=steps, labels=labels, id=s.id))
  return out
