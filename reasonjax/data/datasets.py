"""GSM8K and MATH loaders from local JSONL files (never downloaded at run time).

    problems = datasets.load_gsm8k("data/gsm8k/test.jsonl")      # fields: question, answer
    problems = datasets.load_math("data/math500/test.jsonl")     # problem, solution, answer, ...

Each row becomes a `tasks.Problem`. A row that breaks the schema raises `DataError` naming the
file and line, or, with `on_error="skip"`, is skipped and counted in the returned `LoadStats`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from absl import logging

from reasonjax.data.tasks.base import ANSWER_PREFIX, Problem

ON_ERROR = ("raise", "skip")
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: "<<16-3-4=9>>9"


class DataError(ValueError):
  """A malformed data row; the message names the file and line."""


@dataclasses.dataclass
class LoadStats:
  rows: int = 0
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)  # the first few messages


def _gsm8k_row(row: dict[str, Any]) -> Problem:
  question, answer = row["question"], row["answer"]
  if not isinstance(question, str) or not isinstance(answer, str):
    raise TypeError("question and answer must be strings")
  reasoning, sep, final = answer.rpartition(ANSWER_PREFIX)
  if not sep or not final.strip():
    raise ValueError(f"answer does not end in '{ANSWER_PREFIX} <number>'")
  final = final.strip().replace(",", "")
  steps = [line.strip() for line in _CALCULATOR.sub("", reasoning).split("\n") if line.strip()]
  return Problem(question=question, answer=final,
                 solution="\n".join(steps + [f"{ANSWER_PREFIX} {final}"]),
                 data={"raw_answer": answer})


def _math_row(row: dict[str, Any]) -> Problem:
  fields = {k: row[k] for k in ("problem", "solution", "answer")}
  if not all(isinstance(v, str) for v in fields.values()):
    raise TypeError("problem, solution and answer must be strings")
  extra = {k: row[k] for k in ("subject", "level", "unique_id") if k in row}
  return Problem(question=fields["problem"], answer=fields["answer"],
                 solution=fields["solution"], data=extra)


# Row schemas by dataset name (`tasks.jsonl` reads each task's files with its schema).
ROW_PARSERS: dict[str, Callable[[dict[str, Any]], Problem]] = {
    "gsm8k": _gsm8k_row, "math": _math_row}


def load_jsonl(path: str, parse_row: Callable[[dict[str, Any]], Problem], *,
               on_error: str = "raise", limit: int | None = None
               ) -> tuple[list[Problem], LoadStats]:
  """Parses each line of `path` with `parse_row`; see the module docstring for errors.

  Lines are decoded one at a time, so a line that is not valid UTF-8 is a broken row like any
  other (named, or skipped with on_error="skip"), not an error for the whole file.
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")
  problems, stats = [], LoadStats()
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      if limit is not None and len(problems) >= limit:
        break
      if not raw.strip():
        continue
      stats.rows += 1
      try:
        # utf-8-sig on the first line: editors on Windows start files with a byte-order mark.
        line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        row = json.loads(line)
        if not isinstance(row, dict):
          raise TypeError(f"expected a JSON object, got {type(row).__name__}")
        problems.append(parse_row(row))
      except (KeyError, TypeError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
        if isinstance(e, KeyError):
          reason = f"missing field {e}"
        elif isinstance(e, UnicodeDecodeError):
          reason = f"invalid UTF-8 at byte offset {e.start} of the line"
        else:
          reason = str(e)
        message = f"{path}:{line_number}: {reason}"
        if on_error == "raise":
          raise DataError(message) from None
        stats.skipped += 1
        if len(stats.errors) < 10:
          stats.errors.append(message)
  if stats.skipped:
    logging.warning("%s: skipped %d of %d rows; first: %s", path, stats.skipped, stats.rows,
                    stats.errors[0])
  return problems, stats


def load_gsm8k(path: str, **kwargs) -> list[Problem]:
  """GSM8K rows {question, answer ending in '#### N'}; calculator annotations are removed from
  the solution. kwargs: on_error, limit (see `load_jsonl`)."""
  return load_jsonl(path, _gsm8k_row, **kwargs)[0]


def load_math(path: str, **kwargs) -> list[Problem]:
  """MATH / MATH-500 rows {problem, solution, answer[, subject, level, unique_id]}."""
  return load_jsonl(path, _math_row, **kwargs)[0]


