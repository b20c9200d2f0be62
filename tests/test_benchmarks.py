"""The search benchmarks run (their --quick variants) and write what their tables show."""

import json

from benchmarks import mc_labels, search


def test_search_benchmark_quick(tmp_path):
  out = tmp_path / "search.json"
  results = search.main(["--quick", f"--out={out}"])
  row, = results["expansion"]["rows"]
  assert row["same_tokens"] and row["shared_tok_s"] > 0 and row["copied_tok_s"] > 0
  row, = results["mcts"]["rows"]
  assert row["batched_sims_s"] > 0 and row["host_sims_s"] > 0 and row["sampler_bound"] > 0
  # Both searches did the whole budget of every tree (a batched round may go over it).
  budget = row["trees"] * row["simulations"]
  assert budget <= row["host_simulations"] <= budget + row["trees"] * (row["k"] - 1)
  assert budget <= row["batched_simulations"] <= budget + row["trees"] * (row["W"] * row["k"] - 1)
  saved = json.loads(out.read_text())
  assert saved["expansion"]["quick"] and saved["mcts"]["rows"] == results["mcts"]["rows"]


def test_mc_labels_benchmark_quick(sft_workdir, tmp_path):
  out = tmp_path / "mc_labels.json"
  result = mc_labels.main(["--quick", f"--policy={sft_workdir}/hf", f"--out={out}"])
  methods = {r["method"]: r for r in result["rows"]}
  assert set(methods) == {"sweep", "binary_search"}
  assert all(0 <= methods[m]["recall"] <= 1 for m in methods)
  # Binary search spends at most the sweep's rollouts.
  assert methods["binary_search"]["rollouts"] <= methods["sweep"]["rollouts"]
  saved = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
  assert {m: r["recall"] for m, r in saved.items()} == {m: r["recall"] for m, r in methods.items()}
