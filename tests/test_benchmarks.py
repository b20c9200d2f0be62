"""The search, Monte-Carlo label and LoRA benchmarks run (their --quick variants) and write what
their tables show."""

import json

import pytest

from benchmarks import lora, mc_labels, search


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


def test_lora_benchmark_quick(tmp_path, capsys):
  out = tmp_path / "lora.json"
  result = lora.main(["--quick", f"--out={out}"])
  full, adapted = result["rows"]
  assert (full["variant"], adapted["variant"]) == ("full", "lora r=4")
  # The adapters of every projection: (I + O) r per kernel and layer, far fewer than the model.
  assert adapted["trained"] < full["trained"] / 20
  # The same model at the first step; less state and less compiled memory.
  assert adapted["first_loss"] == pytest.approx(full["first_loss"], rel=1e-6)
  assert adapted["state_bytes"] < full["state_bytes"] / 2
  assert adapted["compiled_bytes"] < full["compiled_bytes"]
  assert json.loads(out.read_text())["rows"] == result["rows"]
  assert "| lora r=4 |" in capsys.readouterr().out
