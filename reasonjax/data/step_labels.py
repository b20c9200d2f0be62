"""Step-labelled solutions as reward-model examples, host side: the renderings of one solution
that a hierarchical reward model (HRM) learns from.

A rendering is a list of units (step texts) with one label each, the input of
`batching.prm_example`: each unit ends at a step delimiter, where its label is placed.

    hierarchical_units(["7 + 5 = 12", "12 * 3 = 35", "35 - 4 = 31"], [1.0, 0.0, 0.0])
    # [(the three steps, [1.0, 0.0, 0.0]),
    #  (["7 + 5 = 12 12 * 3 = 35", "35 - 4 = 31"], [0.0, 0.0]),
    #  (["7 + 5 = 12", "12 * 3 = 35 35 - 4 = 31"], [1.0, 0.0])]
"""

from __future__ import annotations

from collections.abc import Sequence


def merge_steps(first: str, second: str) -> str:
  """Two consecutive steps as one unit: joined by a single space, so the unit has one step end
  (HRM's merged pairs and the tree data's Hierarchical Node Compression share it)."""
  return f"{first} {second}"


def hierarchical_units(steps: Sequence[str], labels: Sequence[float]
                       ) -> list[tuple[list[str], list[float]]]:
  """The renderings an HRM learns from: every single step and every pair of consecutive steps.

  For L steps: the steps themselves; then the steps merged in pairs (0, 1), (2, 3), ...; then
  step 0 alone and the pairs (1, 2), (3, 4), ...; a step left without a partner stays alone.
  The two merged renderings hold each pair (i, i + 1) exactly once; one holding no pair (L < 2,
  or L = 2 for the second) is left out. A merged pair is its two steps joined by a space, so it
  has one step end, where it takes its later step's label.

  Why the later step's label: HRM's point (Wang et al. 2025, "Towards Hierarchical Multi-Step
  Reward Models for Enhanced Reasoning in Large Language Models") is to judge two consecutive
  steps as one unit, so that a step that fixes an earlier error makes the unit correct; what
  the unit leads to is where its later step ends. With Monte-Carlo labels this is exact: the
  label is the value of the state after the unit, whichever way the steps are grouped; their
  Hierarchical Node Compression likewise keeps a merged node's score. With human labels it is
  the later step's rating (the authors' PRM800K data builder labels a merged pair the same way).

  Args:
    steps: the L step texts of one solution.
    labels: their L labels, 0/1 or in [0, 1].

  Returns:
    [(units, unit_labels)], each one example: the singles first, then the merged renderings;
    [] for L = 0.
  """
  if len(steps) != len(labels):
    raise ValueError(f"hierarchical_units: {len(steps)} steps but {len(labels)} labels")
  steps, labels = list(steps), [float(y) for y in labels]
  if not steps:
    return []
  out = [(steps, labels)]
  for first in (0, 1):
    merged, merged_labels = steps[:first], labels[:first]
    for i in range(first, len(steps), 2):
      merged.append(merge_steps(*steps[i:i + 2]) if i + 1 < len(steps) else steps[i])
      merged_labels.append(labels[min(i + 1, len(steps) - 1)])
    if len(merged) < len(steps):  # It merged at least one pair.
      out.append((merged, merged_labels))
  return out
