r"""Answer extraction and equivalence for math tasks (GSM8K, MATH), on the host.

Extraction:
  * `extract_gsm8k(text)`: the final number of a GSM8K-style solution. The first rule that finds a
    number wins: the last `#### N`; the last "The answer is N" (any case; "the final answer is N"
    too); the last "Answer: N" or "A: N"; else the last number anywhere in the text. It comes back
    as a plain decimal string: no `$`, thousands commas, `%`, units or trailing period, no trailing
    zeros ("$1,000.50" -> "1000.5", "18.00" -> "18", "50%" -> "50").
  * `extract_boxed(text)`: the content of the last `\boxed{...}` or `\fbox{...}` (braces counted,
    so nested groups such as `\frac{1}{2}` stay whole), or the token after `\boxed ` ("\boxed 5").
    None if there is no box or the last one never closes (a truncated generation has no answer).

Equivalence, `is_equiv(pred, gold)`:
  1. Both sides are normalised (no spaces, `$`, `\left`/`\right`, `\!`, degree signs, `%`, trailing
     `.`, trailing unit words in `\text{...}`/`\mbox{...}`; `\dfrac`/`\tfrac` -> `\frac`; `\frac12`
     -> `\frac{1}{2}`; "(C)" -> "C"; plain numbers in canonical decimal form) and compared as
     strings. Two plain numbers that differ are unequal without going further.
  2. Otherwise math-verify parses both (as `$...$` LaTeX, then as plain expressions) and compares
     them symbolically, under a wall-clock limit: sympy can hang on adversarial input. A timeout or
     any error grades the answer wrong.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import re
import signal
import threading
import time
from collections.abc import Callable

# ----------------------------------------------------------------------------- GSM8K

# A number as written in prose: optional sign and `$` in either order, thousands commas, decimals.
# A sign must touch the digits and not follow a word character: "16-3" and "10 - 3" hold no -3.
_NUMBER = (r"(?<![\w.])(?:-\$?|\$\s*-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
           r"|(?<![\w.])-?\.\d+")
_NUMBER_RE = re.compile(_NUMBER)
_ANCHORS = (
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*[:=]?[\s*]*(" + _NUMBER + ")", re.IGNORECASE),
    re.compile(r"(?:\b[Aa]nswer|\bA)\s*:[\s*]*(" + _NUMBER + ")"),
)


def _canonical_number(text: str) -> str:
  """'-$1,000.50' -> '-1000.5'; '18.00' -> '18'; '.5' -> '0.5'; '-0' -> '0'.

  On the digits as text: `int` refuses over 4300 digits and `Decimal` rounds to 28, and a model can
  write either.
  """
  digits = re.sub(r"[\s$,]", "", text)
  sign = "-" if digits.startswith("-") else ""
  whole, _, frac = digits.lstrip("-").partition(".")
  whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
  if whole == "0" and not frac:
    sign = ""
  return sign + whole + ("." + frac if frac else "")


def extract_gsm8k(text: str) -> str | None:
  """The final numeric answer of a GSM8K-style solution, as a plain number string.

  Examples: "... #### 1,000" -> "1000"; "The answer is $18.00." -> "18";
  "Answer: -3 apples" -> "-3"; "so 50% of them" -> "50"; "no digits" -> None.

  Args:
    text: a reference solution or a model's completion.

  Returns:
    The number found by the first rule that matches (see the module docstring), or None.
  """
  for anchor in _ANCHORS:
    matches = anchor.findall(text)
    if matches:
      return _canonical_number(matches[-1])
  numbers = _NUMBER_RE.findall(text)
  return _canonical_number(numbers[-1]) if numbers else None


# ----------------------------------------------------------------------------- MATH

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
  r"""The content of the last `\boxed{...}` / `\fbox{...}` in `text`, or the token after `\boxed `.

  Examples: r"so $\boxed{\frac{1}{2}}$." -> r"\frac{1}{2}"; r"\boxed 5." -> "5";
  r"\boxed{1} then \boxed{2}" -> "2"; r"\boxed{12" -> None; "12" -> None.

  Args:
    text: a solution or a model's completion.

  Returns:
    The box content (outer braces removed), or None if there is no box or the last is unbalanced.
  """
  boxes = list(_BOX_RE.finditer(text))
  if not boxes:
    return None
  rest = text[boxes[-1].end():]
  body = rest.lstrip()
  if not body.startswith("{"):
    # `\boxed 5`: TeX takes one token; in practice, up to the next space or closing `$`.
    token = re.match(r"[^\s$]*", body).group(0).rstrip(".")
    return token if rest[:1].isspace() and token else None
  depth = 0
  i = 0
  while i < len(body):
    c = body[i]
    if c == "\\":
      i += 2  # `\{`, `\}` and `\\` are not grouping braces.
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return body[1:i]
    i += 1
  return None


# ----------------------------------------------------------------------------- normalisation

_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# A unit after a value: `5\text{ cm}`, `864 \mbox{ inches}^2`, `\frac{270}7\text{ degrees}`.
_TRAILING_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z\s.]*\}"
                               r"(?:\^\{?\d\}?)?\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm)\{([^{}]*)\}")


def _clean(s: str) -> str:
  """Clean-up for both paths. Spaces stay: they can separate LaTeX tokens (`\\pi r`)."""
  s = s.strip()
  s = s.replace("\\$", "").replace("$", "")
  s = re.sub(r"(\d),\\!\s*(?=\d{3}(?!\d))", r"\1", s)  # MATH's thousands: "10,\!080"
  s = re.sub(r"(?<!\\)\\[!,;: ]", " ", s)  # TeX spacing; `(?<!\\)` keeps `\\ ` row breaks
  s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])", "", s)
  s = re.sub(r"\\?%", "", s)
  s = _TRAILING_UNIT_RE.sub("", s)
  s = s.strip().rstrip(".").strip()
  return s


def _normalize(s: str) -> str:
  """The fast-path key: `_clean`, then no spaces, no text wrappers, canonical numbers."""
  s = _clean(s)
  s = _TEXT_RE.sub(r"\1", s)
  s = re.sub(r"\s+", "", s)
  # Single-token arguments, which TeX allows: \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}.
  s = re.sub(r"\\frac(\d)", r"\\frac{\1}", s)
  s = re.sub(r"(\\frac\{[^{}]*\})(\d)", r"\1{\2}", s)
  s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
  s = re.sub(r"^\(([A-Z])\)$", r"\1", s)  # multiple choice: "(C)" -> "C"
  if _PLAIN_NUMBER_RE.fullmatch(s):
    s = _canonical_number(s)
  return s


# ----------------------------------------------------------------------------- time limit


class _Timeout(BaseException):
  """The time limit passed. A BaseException so that the `except Exception` clauses inside
  math-verify and sympy cannot swallow it and carry on."""


def _raise_timeout(signum, frame):
  del signum, frame
  raise _Timeout()


def _with_alarm(fn: Callable[[], bool], seconds: float) -> bool:
  """fn() under a SIGALRM interval timer (main thread only); raises _Timeout."""
  old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
  old_delay, old_interval = 0.0, 0.0
  start = time.monotonic()
  try:
    try:
      old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
      return fn()
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
  finally:
    # Nested so the handler is restored even if the alarm lands just before the timer is cleared.
    # None: a handler installed outside Python, which cannot be put back; the default is closest.
    signal.signal(signal.SIGALRM, signal.SIG_DFL if old_handler is None else old_handler)
    if old_delay > 0:  # someone else's timer was pending (e.g. pytest-timeout): re-arm what is left
      left = max(old_delay - (time.monotonic() - start), 1e-3)
      signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _with_thread(fn: Callable[[], bool], seconds: float) -> bool:
  """fn() in a daemon thread, for callers off the main thread, where signals cannot be used.

  Weaker than the alarm: a single call into C that holds the GIL (sympy evaluating 9^(9^9) as an
  integer) blocks this thread too, until it returns. Python code is stopped at the limit.
  """
  result = []

  def target():
    with contextlib.suppress(BaseException):
      result.append(fn())

  worker = threading.Thread(target=target, name="is_equiv", daemon=True)
  worker.start()
  worker.join(seconds)
  if worker.is_alive():
    # Ask the worker to stop at its next bytecode; a long call into C runs on until it returns.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                               ctypes.py_object(_Timeout))
    raise _Timeout()
  return bool(result and result[0])


def _run_limited(fn: Callable[[], bool], seconds: float) -> bool:
  if threading.current_thread() is threading.main_thread():
    return _with_alarm(fn, seconds)
  return _with_thread(fn, seconds)


# ----------------------------------------------------------------------------- equivalence


def _drop_timeout_disabled(record: logging.LogRecord) -> bool:
  return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _math_verify() -> tuple[Callable, Callable, list]:
  """math-verify's (parse, verify, extraction config), imported on first use.

  Imported late: math-verify pulls in sympy and antlr, which most users of this module never need.
  """
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
  # Its own signal-based timeouts are off (they take whole seconds, and a nested `signal.alarm`
  # would cancel ours) and the caller bounds the time, so its warning that nothing does is noise.
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).addFilter(_drop_timeout_disabled)
  return parse, verify, [LatexExtractionConfig(), ExprExtractionConfig()]


def _verify(pred: str, gold: str) -> bool:
  """math-verify's symbolic comparison, without time limit (the caller sets one)."""
  parse, verify, config = _math_verify()
  gold_parsed = parse(f"${_clean(gold)}$", extraction_config=config, parsing_timeout=None)
  pred_parsed = parse(f"${_clean(pred)}$", extraction_config=config, parsing_timeout=None)
  if not gold_parsed or not pred_parsed:
    return False
  return verify(gold_parsed, pred_parsed, timeout_seconds=None)


def is_equiv(pred: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
  r"""Whether answer `pred` is mathematically equal to reference answer `gold`.

  Examples: ("18.0", "18"), (r"\dfrac{1}{2}", "0.5"), (r"90^\circ", "90"), (r"\text{(C)}", "C"),
  ("x=5", "5") are equal; ("0.5", "50\%") and ("(1,2)", "(2,1)") are not.

  Args:
    pred: the model's answer, e.g. from `extract_boxed`; None (no answer) is never equal.
    gold: the reference answer.
    timeout_s: wall-clock limit on the symbolic comparison; past it the answer is graded wrong.
      On the main thread a SIGALRM timer enforces it, even inside long integer arithmetic. Off the
      main thread the comparison runs in a worker thread, which cannot interrupt one long call
      into C (a giant integer power); grade in the main thread of worker processes to be safe.

  Returns:
    True if equal; False if not, or if the comparison failed or timed out.
  """
  if not isinstance(gold, str):
    raise TypeError(f"gold must be a str, got {type(gold).__name__}: {gold!r}")
  if pred is None:
    return False
  if not isinstance(pred, str):
    raise TypeError(f"pred must be a str or None, got {type(pred).__name__}: {pred!r}")
  if not 0 < timeout_s < float("inf"):
    raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
  pred_key, gold_key = _normalize(pred), _normalize(gold)
  if not pred_key or not gold_key:
    return False
  if pred_key == gold_key:
    return True
  if _PLAIN_NUMBER_RE.fullmatch(pred_key) and _PLAIN_NUMBER_RE.fullmatch(gold_key):
    return False  # two canonical decimals that differ as strings differ as numbers
  _math_verify()  # import outside the limit: a timeout mid-import would leave sympy half-loaded
  try:
    return bool(_run_limited(lambda: _verify(pred, gold), timeout_s))
  except _Timeout:
    return False
  except Exception:  # noqa: BLE001 -- malformed LaTeX, sympy errors: graded wrong, never raised
    return False
