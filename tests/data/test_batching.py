"""Batches: shapes, masks and packing against brute force; exact resume; process shards."""

import grain
import numpy as np
import pytest

from reasonjax.data import batching, tasks, tokenizers

TOK = tokenizers.load("synthetic")
TASK = tasks.get_task("arithmetic")
PROBLEMS = TASK.generate(60, seed=0)
SFT = [batching.sft_example(TOK, TASK.prompt(p), p.solution) for p in PROBLEMS]


def test_sft_example_masks_exactly_the_completion():
  problem, example = PROBLEMS[0], SFT[0]
  np.testing.assert_array_equal(example["inputs"][1:], example["targets"][:-1])
  supervised = example["targets"][example["loss_mask"] == 1]
  assert supervised[-1] == TOK.eos_id
  assert TOK.decode(supervised[:-1]) == problem.solution
  assert TOK.decode(example["inputs"][1:int((example["loss_mask"] == 0).sum()) + 1]
                    ) == TASK.prompt(problem)


def test_padded_batches_hold_the_examples():
  it = batching.batches(SFT, batch_size=4, seq_len=96, shuffle=False, num_epochs=1)
  for b in range(3):
    batch = next(it)
    assert all(v.shape == (4, 96) for v in batch.values())
    for r in range(4):
      example, n = SFT[4 * b + r], len(SFT[4 * b + r]["inputs"])
      np.testing.assert_array_equal(batch["inputs"][r, :n], example["inputs"])
      np.testing.assert_array_equal(batch["loss_mask"][r, :n], example["loss_mask"])
      assert (batch["inputs"][r, n:] == 0).all() and (batch["loss_mask"][r, n:] == 0).all()
      np.testing.assert_array_equal(batch["segment_ids"][r], np.arange(96) < n)
      np.testing.assert_array_equal(batch["positions"][r, :n], np.arange(n))


def test_packed_rows_are_whole_examples_seen_once():
  it = batching.batches(SFT, batch_size=4, seq_len=128, pack=True, num_epochs=1, seed=3)
  by_tokens = {tuple(e["inputs"]): e for e in SFT}
  seen = []
  for batch in it:
    for r in range(4):
      segments = batch["segment_ids"][r]
      for s in sorted(set(segments) - {0}):
        where = segments == s
        tokens = tuple(batch["inputs"][r][where])
        example = by_tokens[tokens]  # KeyError if a segment is not a whole example
        np.testing.assert_array_equal(batch["targets"][r][where], example["targets"])
        np.testing.assert_array_equal(batch["loss_mask"][r][where], example["loss_mask"])
        np.testing.assert_array_equal(batch["positions"][r][where], np.arange(len(tokens)))
        seen.append(tokens)
      assert (batch["loss_mask"][r][segments == 0] == 0).all()
  assert len(seen) == len(set(seen)) and len(seen) > 0.7 * len(SFT)


@pytest.mark.parametrize("pack", [False, True])
def test_restoring_the_state_resumes_the_exact_order(pack):
  def make():
    return batching.batches(SFT, batch_size=4, seq_len=128, pack=pack, seed=7)

  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(20)]  # crosses epoch boundaries (60 examples)
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(expected, (next(resumed) for _ in range(20))):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_seed_changes_order_and_epochs_reshuffle():
  def first_rows(seed, n):
    it = batching.batches(SFT, batch_size=60, seq_len=96, seed=seed)
    return [tuple(row.tobytes() for row in next(it)["inputs"]) for _ in range(n)]

  a, b = first_rows(0, 2), first_rows(1, 1)
  assert a[0] != b[0] and a[0] != a[1] and sorted(a[0]) == sorted(a[1])


def test_process_shards_are_disjoint_and_cover():
  prompts = [batching.prompt_example(TOK, TASK.prompt(p), i) for i, p in enumerate(PROBLEMS)]
  indices = []
  for process in range(3):
    it = batching.batches(prompts, batch_size=5, seq_len=64, num_epochs=1, seed=1,
                          process_index=process, process_count=3)
    mine = [int(i) for batch in it for i in batch["index"]]
    assert len(mine) == 20
    indices.append(set(mine))
  assert set.union(*indices) == set(range(60)) and sum(map(len, indices)) == 60


def test_lazy_examples_are_made_only_for_this_process():
  made = []

  def make(index):
    made.append(index)
    return batching.prompt_example(TOK, TASK.prompt(PROBLEMS[index]), index)

  lazy = grain.MapDataset.range(len(PROBLEMS)).map(make)
  it = batching.batches(lazy, batch_size=5, seq_len=64, num_epochs=1, process_index=1,
                        process_count=4, shuffle=False)
  # Rows 5-9 of each global batch of 20.
  want = [i for start in (5, 25, 45) for i in range(start, start + 5)]
  assert [int(i) for batch in it for i in batch["index"]] == want
  assert set(made) == set(want)


def test_global_batches_do_not_depend_on_the_process_count():
  def global_batches(count, steps=4):
    its = [batching.batches(SFT * 4, batch_size=4 // count, seq_len=16, seed=3,
                            process_index=i, process_count=count) for i in range(count)]
    return [np.concatenate([next(it)["inputs"] for it in its]) for _ in range(steps)]

  one, two, four = global_batches(1), global_batches(2), global_batches(4)
  assert all(np.array_equal(a, b) for a, b in zip(one, two))
  assert all(np.array_equal(a, b) for a, b in zip(one, four))
  assert not np.array_equal(one[0], one[1])



def test_a_packed_position_is_process_local_and_restores_exactly():
  make = lambda: batching.batches(SFT * 4, batch_size=2, seq_len=64, pack=True, seed=1,
                                  process_index=1, process_count=2)
  it = make()
  next(it)
  state = it.get_state()
  assert state["process_local"] is True
  want = next(it)["inputs"]
  again = make()
  again.set_state(state)
  assert np.array_equal(next(again)["inputs"], want)


def test_prompt_batches_give_lengths():
  prompts = [batching.prompt_example(TOK, TASK.prompt(p), i) for i, p in enumerate(PROBLEMS)]
  batch = next(batching.batches(prompts, batch_size=4, seq_len=64, shuffle=False))
  for r in range(4):
    n = int(batch["prompt_length"][r])
    assert TOK.decode(batch["prompt"][r, 1:n]) == TASK.prompt(PROBLEMS[r])


def test_preference_and_prm_examples():
  problem = PROBLEMS[0]
  pair = batching.preference_example(TOK, TASK.prompt(problem), problem.solution,
                                     problem.solution.replace("=", "= 1", 1))
  batch = next(batching.batches([pair] * 4, batch_size=2, seq_len=96))
  assert {"chosen_inputs", "rejected_loss_mask", "chosen_segment_ids"} <= set(batch)
  steps = TASK.parse_steps(problem.solution)
  labels = [1.0] * (len(steps) - 1) + [0.0]
  prm = batching.prm_example(TOK, TASK.prompt(problem), steps, labels)
  ends = np.flatnonzero(prm["step_mask"])
  assert len(ends) == len(steps)
  assert all((int(prm["inputs"][i]),) in TOK.step_end_sequences() for i in ends)
  np.testing.assert_array_equal(prm["step_labels"][ends], labels)
  packed = next(batching.batches([prm] * 8, batch_size=2, seq_len=128, pack=True))
  segments = int(packed["segment_ids"].max(axis=1).sum())
  assert segments >= 2 and packed["step_mask"].sum() == segments * len(steps)


def test_errors_are_named():
  with pytest.raises(ValueError, match=r"process_index=3 must be in \[0, 2\)"):
    batching.batches(SFT, batch_size=2, seq_len=8, process_index=3, process_count=2)
  prompts = [batching.prompt_example(TOK, "q", 0)] * 4
  with pytest.raises(ValueError, match="pack=True needs examples with `inputs`"):
    batching.batches(prompts, batch_size=2, seq_len=8, pack=True)
  with pytest.raises(ValueError, match="2 steps but 1 labels"):
    batching.prm_example(TOK, "q", ["a", "b"], [1.0])


def test_an_unpacked_position_restores_under_another_process_count():
  one = batching.batches(SFT, batch_size=4, seq_len=16, seed=2)
  for _ in range(3):
    next(one)
  state = one.get_state()
  want = next(one)["inputs"]
  two = [batching.batches(SFT, batch_size=2, seq_len=16, seed=2, process_index=i,
                          process_count=2) for i in range(2)]
  for it in two:
    it.set_state(state)
  assert np.array_equal(np.concatenate([next(it)["inputs"] for it in two]), want)
  # And back: the two processes' state (the same on both) restores in one.
  after = next(one)["inputs"]  # one has now given batches 0-4
  one.set_state(two[1].get_state())  # two have given batches 0-3
  assert np.array_equal(next(one)["inputs"], after)
