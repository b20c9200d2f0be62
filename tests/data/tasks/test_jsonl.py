"""The gsm8k and math tasks over JSONL files: splits from the files, prompt templates, the
project's graders, errors that name the knob or the line, and the read cache."""

import json
import os
import pathlib

import pytest

from reasonjax.data import datasets, tasks
from reasonjax.data.tasks import jsonl
from tests.conftest import GSM8K_DIR, SHARED_DATA, tiny_gsm8k_tokenizer

GSM8K_TRAIN = os.path.join(GSM8K_DIR, "train.jsonl")
GSM8K_TEST = os.path.join(GSM8K_DIR, "test.jsonl")
MATH500 = os.path.join(SHARED_DATA, "math500", "test.jsonl")
needs_data = pytest.mark.skipif(not os.path.exists(GSM8K_TEST),
                                reason=f"shared data not found at {SHARED_DATA}")

ROWS = [{"question": f"Tom has {n} apples and eats 1. How many are left?",
         "answer": f"{n} - 1 = <<{n}-1={n - 1}>>{n - 1}\n#### {n - 1:,}"} for n in range(2, 9)]


def write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture
def gsm8k_files(tmp_path):
  return write(tmp_path / "train.jsonl", ROWS[:5]), write(tmp_path / "test.jsonl", ROWS[5:])


@needs_data
def test_splits_are_the_files_in_a_seeded_order():
  task = tasks.get_task("gsm8k", train_path=GSM8K_TRAIN, test_path=GSM8K_TEST)
  train = task.generate(50, seed=3)
  assert [p.question for p in train] == [p.question for p in task.generate(50, seed=3)]
  assert [p.question for p in train] != [p.question for p in task.generate(50, seed=4)]
  # A prefix of the same order: more problems extend the list, they do not reshuffle it.
  assert task.generate(20, seed=3) == train[:20]
  test = task.generate(1319, seed=3, split="test")
  assert {p.question for p in test} == {p.question for p in datasets.load_gsm8k(GSM8K_TEST)}
  assert not {p.question for p in train} & {p.question for p in test}


def test_more_problems_than_rows_gives_all_of_them(gsm8k_files):
  task = tasks.get_task("gsm8k", train_path=gsm8k_files[0])
  problems = task.generate(100, seed=0)
  assert sorted(p.question for p in problems) == sorted(r["question"] for r in ROWS[:5])


@needs_data
def test_every_gold_solution_passes_and_a_wrong_answer_fails():
  gsm8k = tasks.get_task("gsm8k", test_path=GSM8K_TEST)
  problems = gsm8k.generate(1319, split="test")
  assert all(gsm8k.check_answer(p, p.solution) for p in problems)
  math = tasks.get_task("math", test_path=MATH500)
  problems = math.generate(500, split="test")
  assert all(math.check_answer(p, p.solution) for p in problems)
  p = next(p for p in problems if p.answer == "10")
  assert math.check_answer(p, r"so it is $\boxed{10.0}$.")
  assert not math.check_answer(p, r"$\boxed{11}$") and not math.check_answer(p, "10")


def test_gsm8k_grader_reads_numbers_like_the_verifier(gsm8k_files):
  task = tasks.get_task("gsm8k", train_path=gsm8k_files[0])
  problem = datasets.load_gsm8k(gsm8k_files[0])[0]  # answer 1
  assert task.check_answer(problem, problem.solution)
  assert task.check_answer(problem, "2 - 1 = 1 apple.\nThe answer is $1.00.")
  assert not task.check_answer(problem, "#### 2") and not task.check_answer(problem, "none")
  with pytest.raises(NotImplementedError, match="no per-step ground truth"):
    task.check_steps(problem, task.parse_steps(problem.solution))


def test_plain_and_chat_prompts(gsm8k_files, tmp_path):
  tokenizer = tiny_gsm8k_tokenizer([r["question"] + r["answer"] for r in ROWS] * 20,
                                   vocab_size=300)
  tokenizer.save_pretrained(tmp_path / "tok")
  problem = datasets.load_gsm8k(gsm8k_files[0])[0]
  plain = tasks.get_task("gsm8k", train_path=gsm8k_files[0])
  assert plain.prompt(problem) == f"{problem.question}\n{jsonl.GSM8K_INSTRUCTION}\n"
  chat = tasks.get_task("gsm8k", train_path=gsm8k_files[0], template="chat",
                        tokenizer=str(tmp_path / "tok"), instruction="Be brief.")
  assert chat.prompt(problem) == (f"<|im_start|>user\n{problem.question}\nBe brief.<|im_end|>\n"
                                  "<|im_start|>assistant\n")
  system = tasks.get_task("math", template="chat", tokenizer=str(tmp_path / "tok"),
                          system="You are careful.", instruction="")
  assert system.prompt(problem).startswith(
      f"<|im_start|>system\nYou are careful.<|im_end|>\n<|im_start|>user\n{problem.question}"
      "<|im_end|>\n")


def test_errors_name_the_knob(gsm8k_files, tmp_path):
  task = tasks.get_task("math", test_path=gsm8k_files[1])
  with pytest.raises(ValueError, match=r"'math' has no train data: set the knob train_path"):
    task.generate(1)
  with pytest.raises(FileNotFoundError, match=r"test_path='.*nope.jsonl' is not a file"):
    tasks.get_task("gsm8k", test_path=str(tmp_path / "nope.jsonl"))
  with pytest.raises(ValueError, match="template='chat' needs the knob `tokenizer`"):
    tasks.get_task("gsm8k", template="chat")
  with pytest.raises(ValueError, match=r"template='html'; expected one of \('plain', 'chat'\)"):
    tasks.get_task("gsm8k", template="html")
  with pytest.raises(ValueError, match="on_error='ignore'"):
    tasks.get_task("gsm8k", on_error="ignore")
  with pytest.raises(ValueError, match=r"no knob\(s\) \['path'\]; valid knobs: .*'train_path'"):
    tasks.get_task("gsm8k", path="x")
  with pytest.raises(ValueError, match=r"valid tasks: \[.*'gsm8k', 'math'"):
    tasks.get_task("gsm9k")


def test_invalid_utf8_line_is_named_or_skipped(tmp_path):
  path = tmp_path / "train.jsonl"
  lines = [json.dumps(r).encode() for r in ROWS[:3]]
  lines[1] = lines[1].replace(b"Tom", b"T\xffm")
  path.write_bytes(b"\n".join(lines) + b"\n")
  with pytest.raises(datasets.DataError, match=r"train\.jsonl:2: invalid UTF-8 at byte offset 15"):
    tasks.get_task("gsm8k", train_path=str(path)).generate(3)
  task = tasks.get_task("gsm8k", train_path=str(path), on_error="skip")
  assert sorted(p.answer for p in task.generate(3)) == ["1", "3"]


def test_files_are_read_once_until_they_change(gsm8k_files, monkeypatch):
  reads = []
  load = datasets.load_jsonl
  monkeypatch.setattr(datasets, "load_jsonl", lambda path, *a, **k: reads.append(path) or load(
      path, *a, **k))
  jsonl._read.cache_clear()
  task = tasks.get_task("gsm8k", train_path=gsm8k_files[0], test_path=gsm8k_files[1])
  task.generate(2, seed=0)
  task.generate(3, seed=1)
  tasks.get_task("gsm8k", train_path=gsm8k_files[0]).generate(1)  # another task, same file
  task.generate(1, split="test")
  assert len(reads) == 2
  write(pathlib.Path(gsm8k_files[0]), ROWS)
  assert len(task.generate(100)) == len(ROWS) and len(reads) == 3
