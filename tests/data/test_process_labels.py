"""Step-label loaders on a few copied rows (tests/fixtures/process_labels), on broken rows, on
hand-made stepwise trees, and on the full files in ../shared/data when they are there."""

import collections
import gzip
import json
import os
import shutil

import pytest

from reasonjax.data import process_labels
from reasonjax.data.datasets import DataError

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "..", "fixtures", "process_labels")
PB_FIXTURE = os.path.join(FIXTURES, "processbench", "gsm8k.json")
PRM_FIXTURE = os.path.join(FIXTURES, "prm800k", "phase1_test.jsonl")
STEPWISE_FIXTURE = os.path.join(FIXTURES, "prm800k_stepwise",
                                "phase1_test.stepwise-critic.jsonl.gz")
DATA = os.path.join(HERE, "..", "..", "..", "shared", "data")
needs_data = pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "processbench")),
                                reason=f"shared data not found at {DATA}")


def fixture_rows(path):
  with open(path) as f:
    return json.load(f) if path.endswith(".json") else [json.loads(line) for line in f]


def write_jsonl(path, rows):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  return str(path)


# ----------------------------------------------------------------------------- ProcessBench


def test_processbench_fixture():
  solutions = process_labels.load_processbench(PB_FIXTURE)
  assert [s.id for s in solutions] == ["gsm8k-126", "gsm8k-386", "gsm8k-147"]
  assert [s.first_error for s in solutions] == [0, -1, 1]
  assert [len(s.steps) for s in solutions] == [2, 5, 4]
  assert [s.final_answer_correct for s in solutions] == [False, True, False]
  first = solutions[0]
  assert first.source == "processbench/gsm8k" and first.step_ratings is None
  assert first.problem.startswith("A bakery has 40 less than seven times")
  assert first.steps[1].endswith("The answer is: $\\boxed{430}$.")


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz", "rows.json.gz"])
def test_processbench_other_containers_load_the_same(tmp_path, name):
  rows = fixture_rows(PB_FIXTURE)
  path = tmp_path / name
  if name == "rows.json.gz":
    with gzip.open(path, "wt") as f:
      json.dump(rows, f)
  else:
    write_jsonl(path, rows)
  expected = process_labels.load_processbench(PB_FIXTURE, source="x")
  assert process_labels.load_processbench(str(path), source="x") == expected


@pytest.mark.parametrize("field", ["problem", "steps", "label"])
def test_processbench_missing_field_names_file_row_and_field(tmp_path, field):
  rows = fixture_rows(PB_FIXTURE)
  del rows[1][field]
  path = tmp_path / "bench.json"
  path.write_text(json.dumps(rows))
  with pytest.raises(ValueError, match=rf"bench\.json: row 1: missing field '{field}'"):
    process_labels.load_processbench(str(path))
  path = write_jsonl(tmp_path / "bench.jsonl", rows)
  with pytest.raises(DataError, match=rf"bench\.jsonl:2: missing field '{field}'"):
    process_labels.load_processbench(path)


@pytest.mark.parametrize("change, message", [
    ({"label": 5}, r"row 0: field 'label' is 5, expected -1 or a step index < 2"),
    ({"label": True}, r"row 0: field 'label' is bool, expected int"),
    ({"steps": ["a", 3]}, r"row 0: field 'steps\[1\]' is int, expected str"),
    ({"problem": None}, r"row 0: field 'problem' is NoneType, expected str"),
])
def test_processbench_bad_values(tmp_path, change, message):
  rows = fixture_rows(PB_FIXTURE)
  rows[0].update(change)
  path = tmp_path / "bench.json"
  path.write_text(json.dumps(rows))
  with pytest.raises(DataError, match=message):
    process_labels.load_processbench(str(path))


def test_broken_json_names_the_file(tmp_path):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"problem": "p", "steps": [], "label": -1}\n{not json\n')
  with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
    process_labels.load_processbench(str(path))
  path = tmp_path / "object.json"
  path.write_text("{}")
  with pytest.raises(DataError, match=r"object\.json: expected a JSON list"):
    process_labels.load_processbench(str(path))


# ----------------------------------------------------------------------------- PRM800K


def test_prm800k_fixture_paths():
  # Fixture lines: 1 a solution with a human step, 2 a solution, 3 a give-up at its first step.
  solutions = process_labels.load_prm800k(PRM_FIXTURE)
  assert [s.id for s in solutions] == ["phase1_test:1", "phase1_test:2"]
  pencils, witches = solutions
  assert pencils.source == "prm800k" and pencils.first_error == -1
  assert pencils.step_ratings == (1.0, None, 1.0, 1.0, 1.0, 1.0)  # step 1 is written by hand
  assert pencils.steps[1] == "We have $3p+e=1.24$ and $5p+e=1.82$."
  assert pencils.steps[5] == "That means a pencil costs 29 cents.\n\n# Answer\n\n29"
  assert witches.steps[-1] == "That is correct.\n\n# Answer\n\n60"
  assert witches.step_ratings == (1.0, 1.0, 1.0) and witches.first_error == -1
  # The give-up stops before choosing its first step: an empty path, left out either way.
  everything = process_labels.load_prm800k(PRM_FIXTURE,
                                           finish_reasons=process_labels.FINISH_REASONS)
  assert everything == solutions
  assert process_labels.load_prm800k(PRM_FIXTURE, finish_reasons=("give_up",)) == []


def test_prm800k_branches_are_the_wrong_alternatives():
  solutions = process_labels.load_prm800k(PRM_FIXTURE, branches=True)
  row = fixture_rows(PRM_FIXTURE)[0]
  step1 = [c["text"] for c in row["label"]["steps"][1]["completions"]]
  assert len(step1) == 5  # all rated -1, so the labeller wrote step 1
  branches = [s for s in solutions if "/" in s.id]
  assert [s.id for s in branches] == [f"phase1_test:1/1.{j}" for j in range(5)]
  for branch, text in zip(branches, step1):
    assert branch.steps == (solutions[0].steps[0], text)
    assert branch.step_ratings == (1.0, -1.0) and branch.first_error == 1
  assert [s.id for s in solutions if "/" not in s.id] == ["phase1_test:1", "phase1_test:2"]


def phase2_row(finish_reason):
  """A row shaped like the PRM800K README's phase-2 example: labelling stops at the error."""
  def step(*completions, chosen):
    return {"completions": [{"text": t, "rating": r, "flagged": None} for t, r in completions],
            "human_completion": None, "chosen_completion": chosen}
  return {"question": {"problem": "gcd(20!, 200000)?", "ground_truth_answer": "40000"},
          "label": {"finish_reason": finish_reason, "steps": [
              step(("a", 0), chosen=0), step(("b", 1), chosen=0),
              step(("c", 0), ("d", -1), ("e", -1), chosen=None)]}}


def test_prm800k_found_error_ends_with_the_error(tmp_path):
  path = write_jsonl(tmp_path / "phase2.jsonl", [phase2_row("found_error")])
  solution, branch = process_labels.load_prm800k(path, branches=True)
  assert solution.steps == ("a", "b", "d") and solution.first_error == 2
  assert solution.step_ratings == (0.0, 1.0, -1.0)
  assert branch.steps == ("a", "b", "e") and branch.id == "phase2:1/2.2"


def test_prm800k_broken_rows(tmp_path):
  row = phase2_row("found_error")
  del row["question"]["problem"]
  path = write_jsonl(tmp_path / "p.jsonl", [phase2_row("solution"), row])
  with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'question\.problem'"):
    process_labels.load_prm800k(path)
  row = phase2_row("solution")
  row["label"]["steps"][0]["completions"][0]["rating"] = 2
  path = write_jsonl(tmp_path / "p.jsonl", [row])
  with pytest.raises(DataError, match=r"p\.jsonl:1: field 'label\.steps\[0\]\.completions\[0\]"
                                      r"\.rating' is 2"):
    process_labels.load_prm800k(path)
  row = phase2_row("solution")
  row["label"]["steps"][1]["chosen_completion"] = None
  path = write_jsonl(tmp_path / "p.jsonl", [row])
  with pytest.raises(DataError, match=r"label\.steps\[1\] has neither a chosen nor a human"):
    process_labels.load_prm800k(path)
  with pytest.raises(ValueError, match="unknown finish_reasons"):
    process_labels.load_prm800k(path, finish_reasons=("solved",))


# ----------------------------------------------------------------------------- stepwise


def test_stepwise_fixture_restores_the_answer_and_matches_prm800k(tmp_path):
  rows = process_labels.load_prm800k_stepwise(STEPWISE_FIXTURE)
  assert [r.id for r in rows] == [f"phase1_test.stepwise-critic:{i}" for i in (1, 2, 3)]
  assert [len(r.previous) for r in rows] == [0, 1, 2]
  assert rows[2].answer == "60" and rows[2].is_solution
  assert rows[2].step == "That is correct.\n\n# Answer\n\n60"
  assert [r.rating for r in rows] == [1.0, 1.0, 1.0]
  # The same three rows, uncompressed, stream the same.
  plain = tmp_path / "rows.jsonl"
  with gzip.open(STEPWISE_FIXTURE, "rb") as f, open(plain, "wb") as out:
    shutil.copyfileobj(f, out)
  streamed = process_labels.iter_prm800k_stepwise(str(plain))
  assert [r.step for r in streamed] == [r.step for r in rows]
  # Grouped, they are the original format's solution they were converted from.
  (path,) = process_labels.stepwise_solutions(rows)
  witches = process_labels.load_prm800k(PRM_FIXTURE)[1]
  assert (path.problem, path.steps, path.step_ratings) == (
      witches.problem, witches.steps, witches.step_ratings)


@pytest.mark.parametrize("field", ["instruction", "responses", "next_response", "rating",
                                   "is_human_response"])
def test_stepwise_missing_field_names_file_line_and_field(tmp_path, field):
  with gzip.open(STEPWISE_FIXTURE, "rt") as f:
    rows = [json.loads(line) for line in f]
  del rows[2][field]
  path = write_jsonl(tmp_path / "steps.jsonl.gz", rows)
  with pytest.raises(DataError, match=rf"steps\.jsonl\.gz:3: missing field '{field}'"):
    process_labels.load_prm800k_stepwise(path)


def row(previous, step, rating, *, human=False, preferred=False, problem="p"):
  return process_labels.StepRow(problem=problem, previous=tuple(previous), step=step,
                                rating=rating, is_human=human, is_preferred=preferred,
                                is_solution=False, answer=None, id=f"{problem}:{step}")


def test_stepwise_solutions_tree_by_hand():
  rows = [
      row([], "a", 1.0, preferred=True),
      row(["a"], "x", -1.0),
      row(["a"], "x", -1.0),  # the same rating twice counts once
      row(["a"], "y", 0.0),
      row(["a"], "h", None, human=True, preferred=True),  # written by the labeller
      row(["a"], "u", None),  # unrated: dropped
      row(["a", "h"], "b", 1.0, preferred=True),
      # A second labeller continued from "a" too, but rated "b" -1 without choosing it.
      row(["a", "h"], "b", -1.0),
      row(["a", "h", "b"], "c", 1.0, preferred=True),
      row(["a", "missing"], "z", 1.0),  # its previous step has no row: unknown labels
      row([], "q", -1.0, problem="other"),
  ]
  got = {(s.steps, s.step_ratings, s.first_error, s.id)
         for s in process_labels.stepwise_solutions(rows)}
  assert got == {
      (("a", "x"), (1.0, -1.0), 1, "p:x"),
      (("a", "y"), (1.0, 0.0), -1, "p:y"),
      (("a", "h", "b"), (1.0, None, -1.0), 2, "p:b"),
      (("a", "h", "b", "c"), (1.0, None, 1.0, 1.0), -1, "p:c"),
      (("q",), (-1.0,), 0, "other:q"),
  }


def test_rating_labels_and_training_records():
  assert [process_labels.rating_label(r) for r in (1.0, -1.0, 0.0, None)] == [1, 0, 1, 1]
  assert process_labels.rating_label(0, neutral=0.5, human=0.9) == 0.5
  assert process_labels.rating_label(None, neutral=0.5, human=0.9) == 0.9
  assert process_labels.rating_label(0, neutral=None) is None
  solutions = process_labels.stepwise_solutions([
      row([], "a", 1.0, preferred=True), row(["a"], "x", -1.0), row(["a"], "y", 0.0),
      row(["a"], "h", None, human=True, preferred=True)])
  records = process_labels.training_records(solutions, neutral=0.0, human=0.75)
  assert [(r.steps, r.labels) for r in records] == [
      (("a", "x"), (1.0, 0.0)), (("a", "y"), (1.0, 0.0)), (("a", "h"), (1.0, 0.75))]
  dropped = process_labels.training_records(solutions, neutral=None)
  assert [r.steps for r in dropped] == [("a", "x"), ("a", "h")]
  # Without ratings (ProcessBench): 1 before the first error, 0 at it, nothing after it.
  bench = process_labels.load_processbench(PB_FIXTURE)
  assert [r.labels for r in process_labels.training_records(bench)] == [
      (0.0,), (1.0,) * 5, (1.0, 0.0)]
  with pytest.raises(ValueError, match="neutral=2"):
    process_labels.training_records(bench, neutral=2)


# ----------------------------------------------------------------------------- full files


@needs_data
@pytest.mark.parametrize("name, rows, no_error, right_answer_with_error", [
    ("gsm8k", 400, 193, 7), ("math", 1000, 406, 94), ("olympiadbench", 1000, 339, 161),
    ("omnimath", 1000, 241, 259)])
def test_processbench_full_files(name, rows, no_error, right_answer_with_error):
  solutions = process_labels.load_processbench(os.path.join(DATA, "processbench", f"{name}.json"))
  assert len(solutions) == rows and len({s.id for s in solutions}) == rows
  assert sum(s.first_error == -1 for s in solutions) == no_error
  assert sum(s.first_error != -1 and s.final_answer_correct for s in solutions) \
      == right_answer_with_error
  assert all(-1 <= s.first_error < len(s.steps) for s in solutions)


@needs_data
def test_prm800k_phase1_test_full_file():
  path = os.path.join(DATA, "prm800k", "phase1_test.jsonl")
  every = process_labels.FINISH_REASONS
  assert len(process_labels.load_prm800k(path)) == 90  # finish_reason "solution"
  solutions = process_labels.load_prm800k(path, finish_reasons=every, branches=True)
  paths = [s for s in solutions if "/" not in s.id]
  branches = [s for s in solutions if "/" in s.id]
  # 106 labelled solutions, 3 of them given up before a first step; 1873 steps of which the 16
  # give-ups' last ones were never chosen; 257 steps written by hand.
  assert len(paths) == 103 and sum(len(s.steps) for s in paths) == 1873 - 16
  assert sum(r is None for s in paths for r in s.step_ratings) == 254  # + 3 not chosen
  assert all(s.first_error == -1 for s in paths)  # phase 1 continues only from good steps
  assert len(branches) == 1970  # every completion rated -1
  assert all(s.first_error == len(s.steps) - 1 for s in branches)


@needs_data
@pytest.mark.parametrize("name, rows, ratings", [
    ("phase1_test", 5449, {1.0: 2245, 0.0: 867, -1.0: 1970, None: 367}),
    ("phase1_train_plus", 51835, {1.0: 18782, 0.0: 10234, -1.0: 19656, None: 3163})])
def test_prm800k_stepwise_full_files(name, rows, ratings):
  path = os.path.join(DATA, "prm800k_stepwise", f"{name}.stepwise-critic.jsonl.gz")
  steps = process_labels.load_prm800k_stepwise(path)
  assert len(steps) == rows
  assert collections.Counter(r.rating for r in steps) == ratings
  solutions = process_labels.stepwise_solutions(steps)
  records = process_labels.training_records(solutions)
  assert len(records) == len(solutions)
  assert all(0.0 <= y <= 1.0 for r in records for y in r.labels)
  assert all(len(r.steps) == len(r.labels) > 0 for r in records)


@needs_data
def test_stepwise_test_split_agrees_with_the_original_format():
  """Every path and wrong branch of phase1_test.jsonl is a grouped path of its stepwise copy,
  with the same ratings."""
  original = process_labels.load_prm800k(
      os.path.join(DATA, "prm800k", "phase1_test.jsonl"),
      finish_reasons=process_labels.FINISH_REASONS, branches=True)
  grouped = process_labels.stepwise_solutions(process_labels.load_prm800k_stepwise(
      os.path.join(DATA, "prm800k_stepwise", "phase1_test.stepwise-critic.jsonl.gz")))
  by_steps = {(s.problem, s.steps): s.step_ratings for s in grouped}
  assert all(by_steps.get((s.problem, s.steps)) == s.step_ratings for s in original)
