"""Math answer extraction and equivalence: hand-written cases for each rule, every gold solution of
GSM8K test and MATH-500 graded right against its own answer and wrong against another's, and the
time limit on the symbolic comparison."""

import json
import os
import signal
import threading
import time

import pytest

from reasonjax.rewards import math as rmath

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def read_jsonl(name: str) -> list[dict]:
  path = os.path.join(DATA, name)
  if not os.path.exists(path):
    pytest.skip(f"shared data not found at {os.path.abspath(path)}")
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def no_verifier(monkeypatch):
  """Fails the test if is_equiv reaches math-verify: the case must be settled by the fast path."""
  calls = []

  def spy(pred, gold):
    calls.append((pred, gold))
    return False

  monkeypatch.setattr(rmath, "_verify", spy)
  yield
  assert not calls, f"math-verify was called for {calls}"


# ----------------------------------------------------------------------------- extract_gsm8k


@pytest.mark.parametrize("text, expected", [
    # `#### N`: the last one wins, and it outranks every other rule.
    ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", "7"),
    ("#### 5\nwait, redo\n#### 6", "6"),
    ("#### 12\nThe answer is 99. Answer: 98. Finally 97", "12"),
    ("####-4", "-4"),
    # "The answer is N": any case, the last one, outranks "Answer:" and the last number.
    ("So the answer is 42 after 7 steps.", "42"),
    ("THE ANSWER IS 4. Checking: the Answer Is 5. Total 100 items.", "5"),
    ("Answer: 3. Therefore, the answer is 8, from 2 boxes", "8"),
    ("The final answer is 10 and 11", "10"),
    ("The answer is: **15** cookies", "15"),
    # "Answer: N" / "A: N": outrank the last number.
    ("Answer: 12 dollars for 3 days", "12"),
    ("Q: how many? A: 7 (out of 9)", "7"),
    ("answer: 6 then 1", "6"),
    # The last number as a fallback.
    ("First 3, then 4, so 17 in all", "17"),
    ("16 - 3 - 4 = 9 eggs", "9"),
    ("<<16-3-4=9>>9", "9"),
    # A rule whose anchor has no number falls through to the next rule.
    ("#### unknown. The answer is 8", "8"),
    ("The answer is unclear. Answer: 2", "2"),
    # Normalisation: commas, $, units and trailing words, trailing period, zeros, %, signs.
    ("#### 1,000", "1000"),
    ("#### 1,450,000", "1450000"),
    ("The answer is $18.00.", "18"),
    ("The answer is $1,234.50 in total", "1234.5"),
    ("The answer is 1.5 hours.", "1.5"),
    ("The answer is -3.", "-3"),
    ("The answer is -$5", "-5"),
    ("The answer is $-5", "-5"),
    ("The answer is 50%.", "50"),
    ("The answer is .25", "0.25"),
    ("The answer is 0.0", "0"),
    ("it costs 7 dollars.", "7"),
    # A minus between numbers is subtraction, not a sign.
    ("10 - 3", "3"),
    ("10-3", "3"),
    ("1,2,3", "3"),
])
def test_extract_gsm8k(text, expected):
  assert rmath.extract_gsm8k(text) == expected


def test_extract_gsm8k_long_numbers():
  assert rmath.extract_gsm8k("#### " + "9" * 5000) == "9" * 5000
  assert rmath.extract_gsm8k("The answer is 0." + "0" * 40 + "1000") == "0." + "0" * 40 + "1"


@pytest.mark.parametrize("text", ["", "no numbers here", "#### ", "The answer is x. Answer: y"])
def test_extract_gsm8k_none(text):
  assert rmath.extract_gsm8k(text) is None


# ----------------------------------------------------------------------------- extract_boxed


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{3}}{2} + \left(\frac{1}{2}\right)^{2}}",
     r"\frac{\sqrt{3}}{2} + \left(\frac{1}{2}\right)^{2}"),
    (r"first \boxed{1}, then \fbox{2}, finally \boxed{3} done", "3"),
    (r"\boxed{3} or maybe \fbox{x^{2}}", "x^{2}"),
    (r"\boxed 5", "5"),
    (r"The answer is $\boxed 7$.", "7"),
    (r"\boxed 12.", "12"),
    (r"\boxed {9}", "9"),
    # Escaped braces and row breaks are not grouping.
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{}", ""),
    # `\boxedx` is another command, so the earlier box is the last one.
    (r"\boxed{4} \boxedx{5}", "4"),
])
def test_extract_boxed(text, expected):
  assert rmath.extract_boxed(text) == expected


@pytest.mark.parametrize("text", [
    "", "the answer is 5", r"\boxed{12", r"\boxed{\frac{1}{2}", r"\boxed{1} and then \boxed{2",
    r"\boxed{", r"\boxed", r"\boxed\frac12",
])
def test_extract_boxed_none(text):
  assert rmath.extract_boxed(text) is None


# ----------------------------------------------------------------------------- is_equiv


@pytest.mark.parametrize("pred, gold", [
    ("18", "18"),
    ("18.0", "18"),
    ("18.00", "18.0"),
    (".5", "0.5"),
    ("1,000", "1000"),
    (r"10,\!080", "10080"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"),
    (r"\$32,\!348", "32348"),
    (r"$\frac{1}{2}$", r"\frac{1}{2}"),
    (r"\frac{1}{2}.", r"\frac{1}{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"\tfrac{3}{4}", r"\frac 34"),
    (r"\frac9{19}", r"\frac{9}{19}"),
    (r"\frac{270}7", r"\frac{270}{7}"),
    (r"11\sqrt2", r"11\sqrt{2}"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"5.4 \text{ cents}", "5.4"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"\text{(C)}", "C"),
    (r"(C)", r"\text{(C)}"),
    (r"50\%", "50"),
    ("p - q", "p-q"),
])
def test_is_equiv_fast_path(pred, gold, no_verifier):
  assert rmath.is_equiv(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("18", "19"), ("0.5", "0.05"), ("1000", "100"), ("-3", "3"), ("0.5", r"50\%"),
])
def test_is_not_equiv_numbers_fast_path(pred, gold, no_verifier):
  assert not rmath.is_equiv(pred, gold)


def test_is_equiv_long_numbers(no_verifier):
  """Past float and Decimal precision, and past `int`'s 4300-digit limit on parsing text."""
  assert rmath.is_equiv("9" * 5000, "9" * 5000 + ".000")
  assert not rmath.is_equiv("9" * 5000, "9" * 4999 + "8")
  assert not rmath.is_equiv("0." + "3" * 40, "0." + "3" * 39 + "4")


@pytest.mark.parametrize("pred, gold", [
    ("0.5", "1/2"),
    ("0.5", r"\frac{1}{2}"),
    ("1/2", r"\dfrac{1}{2}"),
    ("2(x+1)", "2x+2"),
    ("x=5", "5"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    ("9/5", r"1\frac{4}{5}"),
    (r"\{2, 1\}", r"\{1,2\}"),
    ("(3,4]", r"\left(3, 4\right]"),
])
def test_is_equiv_symbolic(pred, gold):
  assert rmath.is_equiv(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("(1,2)", "(2,1)"),
    ("[1,2]", "(1,2)"),
    (r"\pi", "3.14"),
    ("2x+1", "2x+2"),
    (r"\text{(C)}", r"\text{(E)}"),
    (r"\text{Evelyn}", r"\text{Navin}"),
    (r"\sqrt{2}", "2"),
    ("", "0"),
    ("   ", "0"),
    (r"\frac{1}{", r"\frac{1}{2}"),
])
def test_is_not_equiv(pred, gold):
  assert not rmath.is_equiv(pred, gold)


def test_is_equiv_arguments():
  assert not rmath.is_equiv(None, "1")
  with pytest.raises(TypeError, match="gold must be a str"):
    rmath.is_equiv("1", None)
  with pytest.raises(TypeError, match="pred must be a str"):
    rmath.is_equiv(1, "1")
  for timeout_s in (0, -1.0, float("inf"), float("nan")):
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
      rmath.is_equiv("1/2", "0.5", timeout_s=timeout_s)


def test_verifier_error_grades_wrong(monkeypatch):
  def broken(pred, gold):
    raise RuntimeError("parser bug")
  monkeypatch.setattr(rmath, "_verify", broken)
  assert not rmath.is_equiv("1/2", "0.5")


# ----------------------------------------------------------------------------- time limit


def _sleeps(pred, gold):
  time.sleep(30)
  return True


def _spins(pred, gold):
  deadline = time.monotonic() + 30  # bounded, so a broken time limit fails instead of hanging
  while time.monotonic() < deadline:
    pass
  return True


def _swallows_errors(pred, gold):
  """Like math-verify and sympy, which catch `Exception` and try the next reading."""
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    try:
      time.sleep(30)
    except Exception:  # noqa: BLE001
      pass
  return True


@pytest.mark.parametrize("verifier", [_sleeps, _spins, _swallows_errors])
def test_timeout_main_thread(monkeypatch, verifier):
  monkeypatch.setattr(rmath, "_verify", verifier)
  start = time.monotonic()
  assert not rmath.is_equiv("1/2", "0.5", timeout_s=0.5)
  assert time.monotonic() - start < 0.5 + 1.0


def test_timeout_restores_the_alarm(monkeypatch):
  """A SIGALRM handler and timer set by someone else survive, with the timer's remaining time."""
  monkeypatch.setattr(rmath, "_verify", _sleeps)
  fired = []
  old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
  try:
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    assert not rmath.is_equiv("1/2", "0.5", timeout_s=0.3)
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    assert 15.0 < remaining < 20.0
    assert not fired
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    time.sleep(0.5)
    assert fired
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_no_alarm_left_behind():
  handler = signal.getsignal(signal.SIGALRM)
  assert rmath.is_equiv("0.5", "1/2")
  assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
  assert signal.getsignal(signal.SIGALRM) is handler


def test_timeout_real_pathological_input():
  """An integer tower sympy would evaluate for hours: cut off by the alarm inside the C power."""
  rmath.is_equiv("0.5", "1/2")  # warm: the one-off math-verify import is outside the limit anyway
  start = time.monotonic()
  assert not rmath.is_equiv(r"9^{9^{9^{9}}}", "1", timeout_s=1.0)
  assert time.monotonic() - start < 1.0 + 1.5


def test_off_main_thread(monkeypatch):
  """Off the main thread signals are unusable; a worker thread bounds Python-level work."""
  results = {}

  def grade(key, pred, gold, timeout_s):
    start = time.monotonic()
    results[key] = (rmath.is_equiv(pred, gold, timeout_s=timeout_s), time.monotonic() - start)

  thread = threading.Thread(target=grade, args=("real", "0.5", "1/2", 10.0))
  thread.start()
  thread.join(30)
  assert results["real"][0]

  for verifier in (_sleeps, _spins):
    monkeypatch.setattr(rmath, "_verify", verifier)
    thread = threading.Thread(target=grade, args=(verifier.__name__, "1/2", "0.5", 0.5))
    thread.start()
    thread.join(10)
    equal, seconds = results[verifier.__name__]
    assert not equal and seconds < 0.5 + 1.0


# ----------------------------------------------------------------------------- real data


def test_gsm8k_gold_solutions():
  rows = read_jsonl("gsm8k/test.jsonl")
  assert len(rows) == 1319
  golds = []
  for i, row in enumerate(rows):
    head, final = row["answer"].rsplit("####", 1)
    assert "####" not in head, i
    # The reference number, normalised here by hand: GSM8K writes integers, some with commas.
    gold = final.strip().replace(",", "")
    assert gold.lstrip("-").isdigit(), (i, final)
    golds.append(gold)
    pred = rmath.extract_gsm8k(row["answer"])
    assert pred == gold, (i, pred, gold)
    assert rmath.is_equiv(pred, final.strip()), (i, pred, final)
  wrong = 0
  for i, row in enumerate(rows):
    other = golds[(i + 1) % len(rows)]
    if other != golds[i]:
      wrong += 1
      assert not rmath.is_equiv(rmath.extract_gsm8k(row["answer"]), other), (i, other)
  assert wrong > 1200


# Consecutive rows whose reference answers differ as strings yet are the same value.
MATH500_SAME_VALUE = {
    ("test/algebra/1837.json", "test/algebra/2193.json"): "'5' and 'x=5' both say 5",
}


def test_math500_gold_solutions():
  rows = read_jsonl("math500/test.jsonl")
  assert len(rows) == 500
  preds = [rmath.extract_boxed(row["solution"]) for row in rows]
  not_equal = [(row["unique_id"], pred, row["answer"]) for row, pred in zip(rows, preds)
               if not rmath.is_equiv(pred, row["answer"])]
  assert not not_equal
  skipped = set()
  for i, row in enumerate(rows):
    nxt = rows[(i + 1) % len(rows)]
    if "".join(nxt["answer"].split()) == "".join(row["answer"].split()):
      continue  # the same answer, up to spaces
    if (row["unique_id"], nxt["unique_id"]) in MATH500_SAME_VALUE:
      skipped.add((row["unique_id"], nxt["unique_id"]))
      continue
    assert not rmath.is_equiv(preds[i], nxt["answer"]), (row["unique_id"], preds[i], nxt["answer"])
  assert skipped == set(MATH500_SAME_VALUE)  # the list holds no stale entries
