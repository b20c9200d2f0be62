"""HRM renderings against hand-worked cases and a brute force over every grouping of the steps
into singles and consecutive pairs."""

import numpy as np
import pytest

from reasonjax.data import step_labels


def groupings(n, start=0):
  """Every split of steps start..n-1 into consecutive groups of one or two steps."""
  if start == n:
    yield []
  for size in (1, 2):
    if start + size <= n:
      for rest in groupings(n, start + size):
        yield [tuple(range(start, start + size))] + rest


def brute_force(steps, labels):
  """The singles, then for each parity p the one grouping whose pairs are exactly the (i, i + 1)
  with i = p mod 2, found among all groupings; a group is labelled by its last step."""
  n = len(steps)
  if not n:
    return []
  out = [(list(steps), [float(y) for y in labels])]
  for parity in (0, 1):
    pairs = {(i, i + 1) for i in range(n - 1) if i % 2 == parity}
    if not pairs:
      continue
    [grouping] = [g for g in groupings(n) if {x for x in g if len(x) == 2} == pairs]
    out.append(([" ".join(steps[i] for i in group) for group in grouping],
                [float(labels[group[-1]]) for group in grouping]))
  return out


def test_hand_worked_cases():
  # A wrong step followed by a fixing one: the merged unit (1, 2) is correct.
  assert step_labels.hierarchical_units(["a", "b", "c"], [1, 0, 1]) == [
      (["a", "b", "c"], [1.0, 0.0, 1.0]),
      (["a b", "c"], [0.0, 1.0]),
      (["a", "b c"], [1.0, 1.0]),
  ]
  assert step_labels.hierarchical_units(["a", "b", "c", "d"], [1, 0, 0.5, 1]) == [
      (["a", "b", "c", "d"], [1.0, 0.0, 0.5, 1.0]),
      (["a b", "c d"], [0.0, 1.0]),
      (["a", "b c", "d"], [1.0, 0.5, 1.0]),
  ]
  # Two steps: one pair, so one merged rendering; one step: nothing to merge.
  assert step_labels.hierarchical_units(["a", "b"], [0, 1]) == [
      (["a", "b"], [0.0, 1.0]), (["a b"], [1.0])]
  assert step_labels.hierarchical_units(["a"], [0.25]) == [(["a"], [0.25])]
  assert step_labels.hierarchical_units([], []) == []


@pytest.mark.parametrize("num_steps", range(0, 9))
def test_matches_brute_force_and_covers_every_pair_once(num_steps):
  rng = np.random.default_rng(num_steps)
  labels = rng.integers(0, 2, num_steps).tolist()
  steps = [f"s{i}" for i in range(num_steps)]
  units = step_labels.hierarchical_units(steps, labels)
  assert units == brute_force(steps, labels)
  assert all(isinstance(y, float) for _, ys in units for y in ys)
  # Across the merged renderings, every consecutive pair once, with its later step's label.
  merged = [(tuple(int(s[1:]) for s in unit.split(" ")), y)
            for rendering, ys in units[1:] for unit, y in zip(rendering, ys) if " " in unit]
  assert sorted(pair for pair, _ in merged) == [(i, i + 1) for i in range(num_steps - 1)]
  assert all(y == labels[j] for (_, j), y in merged)


def test_mismatched_lengths_raise():
  with pytest.raises(ValueError, match="2 steps but 1 labels"):
    step_labels.hierarchical_units(["a", "b"], [1.0])


def test_merge_steps_joins_with_one_space_as_the_merged_renderings_do():
  assert step_labels.merge_steps("7 + 5 = 12", "12 * 3 = 36") == "7 + 5 = 12 12 * 3 = 36"
  assert step_labels.merge_steps("a", "") == "a "
  # The renderings' merged units are exactly merge_steps of their pairs.
  steps = ["a", "b", "c"]
  units = step_labels.hierarchical_units(steps, [1, 0, 1])
  assert units[1][0] == [step_labels.merge_steps("a", "b"), "c"]
  assert units[2][0] == ["a", step_labels.merge_steps("b", "c")]
