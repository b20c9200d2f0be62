"""TFDS array_record builders read back through tfds data sources and grain."""

import os

import grain.python as grain
import pytest

from reasonjax.data import builders, datasets, tasks

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def small_synthetic(monkeypatch):
  monkeypatch.setattr(builders, "SYNTHETIC_SIZES", {"train": 200, "test": 50})


def test_synthetic_round_trip_equals_generator(tmp_path):
  sources = builders.prepare("synthetic/countdown", data_dir=str(tmp_path))
  assert len(sources["train"]) == 200 and len(sources["test"]) == 50
  expected = {p.question: p for p in tasks.get_task("countdown").generate(200, seed=0)}
  task = tasks.get_task("countdown")
  for i in range(len(sources["train"])):
    problem = builders.to_problem(sources["train"][i])
    assert problem == expected[problem.question]
    # The checker's data survives the round trip: the gold solution still checks.
    assert task.check_steps(problem, task.parse_steps(problem.solution)).all_correct
  test_questions = {builders.to_problem(r).question
                    for r in (sources["test"][i] for i in range(50))}
  assert not test_questions & set(expected)


def test_grain_reads_a_deterministic_shard(tmp_path):
  source = builders.prepare("synthetic/arithmetic", data_dir=str(tmp_path))["train"]

  def order(shard_index, seed):
    sampler = grain.IndexSampler(len(source), shuffle=True, seed=seed, num_epochs=1,
                                 shard_options=grain.ShardOptions(shard_index, 2))
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=0)
    return [builders.to_problem(r).question for r in loader]

  first, again, other = order(0, seed=1), order(0, seed=1), order(1, seed=1)
  assert first == again and len(first) == 100
  assert not set(first) & set(other) and len(set(first) | set(other)) == 200


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "math500")), reason="no shared data")
def test_math500_from_local_jsonl(tmp_path):
  sources = builders.prepare("math500", data_dir=str(tmp_path),
                             source_dir=os.path.join(DATA, "math500"))
  assert list(sources) == ["test"] and len(sources["test"]) == 500
  by_question = {p.question: p for p in datasets.load_math(os.path.join(DATA, "math500",
                                                                        "test.jsonl"))}
  record = builders.to_problem(sources["test"][7])
  assert record.answer == by_question[record.question].answer


def test_errors_name_the_valid_choices(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'synthetic/chess'; valid"):
    builders.prepare("synthetic/chess", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="pass source_dir"):
    builders.prepare("gsm8k", data_dir=str(tmp_path))
