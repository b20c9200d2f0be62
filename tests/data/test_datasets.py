"""GSM8K / MATH JSONL loaders over the real files in ../shared/data and broken rows."""

import json
import os

import pytest

from reasonjax.data import datasets

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
GSM8K_TEST = os.path.join(DATA, "gsm8k", "test.jsonl")
MATH500 = os.path.join(DATA, "math500", "test.jsonl")
needs_data = pytest.mark.skipif(not os.path.exists(GSM8K_TEST),
                                reason=f"shared data not found at {DATA}")


@needs_data
def test_gsm8k_test_split_loads_completely():
  problems = datasets.load_gsm8k(GSM8K_TEST)
  with open(GSM8K_TEST) as f:
    rows = [json.loads(line) for line in f]
  assert len(problems) == len(rows) == 1319
  for problem, row in zip(problems, rows):
    assert problem.question == row["question"]
    assert problem.answer == row["answer"].split("####")[-1].strip().replace(",", "")
    assert "<<" not in problem.solution and problem.solution.endswith(f"#### {problem.answer}")
    float(problem.answer)  # every GSM8K answer is a number


@needs_data
def test_math500_loads_with_metadata():
  problems = datasets.load_math(MATH500)
  assert len(problems) == 500
  assert {p.data["level"] for p in problems} == {1, 2, 3, 4, 5}
  assert len({p.data["unique_id"] for p in problems}) == 500


def write(tmp_path, lines):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


GOOD = json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"})


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"bad\.jsonl:2: Expecting property name"),
    (json.dumps({"question": "q"}), r"bad\.jsonl:2: missing field 'answer'"),
    (json.dumps({"question": "q", "answer": "no final line"}), r"bad\.jsonl:2: answer does not end"),
    (json.dumps([1, 2]), r"bad\.jsonl:2: expected a JSON object"),
])
def test_broken_row_names_file_and_line(tmp_path, bad, message):
  path = write(tmp_path, [GOOD, bad, GOOD])
  with pytest.raises(datasets.DataError, match=message):
    datasets.load_gsm8k(path)
  problems, stats = datasets.load_jsonl(path, datasets._gsm8k_row, on_error="skip")
  assert len(problems) == 2 and stats.skipped == 1 and stats.rows == 3
  assert stats.errors[0].startswith(path + ":2:")


def test_commas_and_calculator_notes(tmp_path):
  row = {"question": "q", "answer": "10 * 100 = <<10*100=1000>>1000 coins\n#### 1,000"}
  problem = datasets.load_gsm8k(write(tmp_path, [json.dumps(row)]))[0]
  assert problem.answer == "1000"
  assert problem.solution == "10 * 100 = 1000 coins\n#### 1000"


def test_invalid_utf8_names_file_and_line_and_skip_skips_it(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(GOOD.encode() + b"\n" + GOOD.encode().replace(b"1 + 1?", b"1 \xe9 1?")
                   + b"\n" + GOOD.encode() + b"\n")
  with pytest.raises(datasets.DataError, match=r"bad\.jsonl:2: invalid UTF-8 at byte offset 16"):
    datasets.load_gsm8k(str(path))
  problems, stats = datasets.load_jsonl(str(path), datasets.ROW_PARSERS["gsm8k"],
                                        on_error="skip")
  assert len(problems) == 2 and stats.skipped == 1 and stats.rows == 3
  assert stats.errors[0].startswith(f"{path}:2: invalid UTF-8")


def test_byte_order_mark_and_non_ascii_text(tmp_path):
  row = {"question": "Zoë pays 3 €. And?", "answer": "#### 3"}
  path = tmp_path / "bom.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row, ensure_ascii=False) + "\n").encode() * 2)
  problems = datasets.load_gsm8k(str(path))
  assert [p.question for p in problems] == [row["question"]] * 2
