"""The HRM reproduction's results page: tables with the spread over seeds, a plot of accuracy
against N, and which of the paper's claims hold at this scale (decided from the numbers, with
the rule stated beside each verdict)."""

from __future__ import annotations

import json
import os

import numpy as np

SCORERS = ("oracle", "orm", "prm", "hrm", "hrm_hnc")
NAMES = {"oracle": "oracle (check_steps)", "orm": "ORM", "prm": "PRM", "hrm": "HRM",
         "hrm_hnc": "HRM+HNC", "none": "majority vote"}


def curves(evaluation: list[dict]) -> dict[tuple[str, str], dict[int, list[float]]]:
  """(method, scorer) -> n -> accuracies over seeds."""
  out: dict[tuple[str, str], dict[int, list[float]]] = {}
  for row in evaluation:
    out.setdefault((row["method"], row["scorer"]), {}).setdefault(row["n"], []).append(
        row["accuracy"])
  return out


def _cell(values: list[float]) -> str:
  """mean ± sample standard deviation over seeds (n - 1; a single seed shows no spread); a
  dash for none."""
  if not values:
    return "—"
  mean = float(np.mean(values))
  if len(values) < 2:
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}"


def accuracy_table(evaluation: list[dict], method: str) -> str:
  c = curves(evaluation)
  keys = [k for k in c if k[0] == method or (method == "best_of_n" and k[0] == "majority_vote")]
  ns = sorted({n for k in keys for n in c[k]})
  lines = ["| scorer | " + " | ".join(f"N={n}" for n in ns) + " |",
           "|---" * (len(ns) + 1) + "|"]
  order = [s for s in (*SCORERS, "none") if any(k[1] == s for k in keys)]
  for scorer in order:
    key = next(k for k in keys if k[1] == scorer)
    lines.append(f"| {NAMES[scorer]} | "
                 + " | ".join(_cell(c[key][n]) if n in c[key] else "" for n in ns) + " |")
  return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _ranks(summary: dict) -> dict[str, dict[str, list[float]]]:
  """scorer -> ranking metric -> values over seeds."""
  out: dict[str, dict[str, list[float]]] = {}
  for row in summary.get("ranking", []):
    for key in ("step_auc", "solution_auc", "within_auc"):
      values = out.setdefault(row["scorer"], {}).setdefault(key, [])
      if row[key] is not None:  # no step AUC without per-step ground truth
        values.append(row[key])
  return out


def ranking_table(summary: dict) -> str:
  """Each scorer's AUCs on the held-out pool and each reward model's training loss."""
  ranks, losses = _ranks(summary), summary.get("reward_models", {})
  lines = ["| scorer | training loss, first -> last log (predicting the mean) | step AUC | "
           "solution AUC | within-problem AUC |", "|---|---|---|---|---|"]
  for scorer in (s for s in SCORERS if s in ranks):
    m, loss = ranks[scorer], losses.get(scorer)
    trained = (f"{loss['loss_first']:.3f} -> {loss['loss_last']:.3f} "
               f"({loss['constant_loss']:.3f})" if loss else "")
    lines.append(f"| {NAMES[scorer]} | {trained} | {_cell(m['step_auc'])} | "
                 f"{_cell(m['solution_auc'])} | {_cell(m['within_auc'])} |")
  return "\n".join(lines)


def diagnosis(summary: dict) -> list[str]:
  """Why best-of-N with the reward models goes where it goes, from their within-problem AUC:
  one sentence per finding, empty when the AUCs are missing."""
  ranks = _ranks(summary)
  models = {s: _mean_std(ranks[s]["within_auc"]) for s in SCORERS[1:] if s in ranks}
  if not models:
    return []
  text = ", ".join(f"{NAMES[s]} {m:.2f}" for s, (m, _) in models.items())
  if all(m - sd <= 0.55 for m, sd in models.values()):
    return [f"Within a problem, no reward model orders the solutions much better than chance "
            f"(within-problem AUC {text}; 0.5 is chance), so best-of-N with them picks among "
            "a problem's solutions nearly at random or worse, and its accuracy cannot rise "
            "with N: the claims that compare reward models at large N are not tested at this "
            "scale. What they score instead shows in the solution AUC: telling easier "
            "problems from harder ones."]
  return [f"Within-problem AUC (0.5 is chance): {text}."]


def claims(summary: dict) -> list[tuple[str, str, str]]:
  """[(claim, verdict, the numbers and the rule)], decided from the summary. A difference
  counts when it exceeds the larger of the two standard deviations over seeds (with one seed:
  any difference, and the verdict says one seed)."""
  c = curves(summary["evaluation"])
  out = []

  def at(method, scorer, n):
    return _mean_std(c[(method, scorer)][n])

  def differ(a, b):
    (ma, sa), (mb, sb) = a, b
    return ma - mb, max(sa, sb)

  for method in ("best_of_n", "step_greedy"):
    if (method, "prm") not in c or (method, "hrm") not in c:
      continue
    ns = sorted(c[(method, "prm")])
    top = ns[-1]
    for scorer in ("prm", "hrm"):
      peak_n = max(ns, key=lambda n: at(method, scorer, n)[0])
      drop, spread = differ(at(method, scorer, peak_n), at(method, scorer, top))
      verdict = ("falls off" if drop > spread else "stable") if peak_n != top else "stable"
      if at(method, scorer, peak_n)[0] == 0:  # flat at zero says nothing about stability
        verdict = "not tested (accuracy 0 at every N)"
      out.append((f"{NAMES[scorer]} with {method}: accuracy as N grows",
                  verdict, f"peak {at(method, scorer, peak_n)[0]:.3f} at N={peak_n}, "
                  f"{at(method, scorer, top)[0]:.3f} at N={top} (drop {drop:.3f}, spread "
                  f"{spread:.3f})"))
    for better, worse, claim in (("hrm", "prm", "HRM beats PRM"),
                                 ("hrm_hnc", "hrm", "HNC data improves HRM")):
      if (method, better) not in c:
        continue
      gap, spread = differ(at(method, better, top), at(method, worse, top))
      out.append((f"{claim} with {method} at N={top}",
                  "holds" if gap > spread else "does not hold" if gap < -spread else
                  "not resolved (within the spread)",
                  f"{NAMES[better]} {at(method, better, top)[0]:.3f} vs {NAMES[worse]} "
                  f"{at(method, worse, top)[0]:.3f} (spread {spread:.3f})"))
  start = summary.get("self_training_start", {}).get("accuracy")
  for key, row in summary.get("self_training", {}).items():
    if start is None or "accuracy" not in row:
      continue
    gain = row["accuracy"] - start
    out.append((f"self-training on {NAMES[row['reward_model']]} paths (KL weight "
                f"{row['kl_weight']:g}) improves the policy",
                "holds" if gain > 0 else "does not hold",
                f"greedy accuracy {start:.3f} -> {row['accuracy']:.3f} (one seed; the "
                "binomial spread is about sqrt(a(1-a)/problems))"))
  if len(summary.get("seeds", [])) < 2:
    out = [(a, v + " (one seed)", r) for a, v, r in out]
  return out


def page(summary: dict, *, command: str) -> str:
  """The results page in markdown."""
  seeds = summary.get("seeds", [])
  t, h = summary["trees"], summary["hnc"]
  lines = [
      "# HRM mini reproduction: ORM, PRM, HRM and HNC on a synthetic task", "",
      "Written by", "", f"    {command}", "",
      f"Seeds {seeds} for the search evaluation (one pool of solutions per seed, shared by "
      "every scorer); mean ± standard deviation over seeds. Other stages: seed "
      f"{summary['config'].get('seed', 0)}, one run. CPU timings differ between machines.", "",
      "Wall time on this machine, per stage (s): "
      + ", ".join(f"{k} {v:.0f}" for k, v in summary.get("seconds", {}).items())
      + f"; total {sum(summary.get('seconds', {}).values()) / 60:.1f} minutes.", "",
      "## Data", "",
      f"Trees: {t['problems']} problems, {t['nodes']} nodes, {t['leaves']} leaves "
      f"({t['correct_leaves']} correct), grown in {t['seconds']:.1f} s.", "",
      "Reward-model records: " + ", ".join(f"{NAMES[k]} {v}"
                                           for k, v in summary["records"].items()) + ".", "",
      f"HNC: {h['moved']} nodes moved out of {h['nodes']} in {h['seconds'] * 1000:.1f} ms; "
      f"label noise (nodes whose MC score changed) {h['label_noise']:.3f}.", "",
      "## Best-of-N accuracy", "", accuracy_table(summary["evaluation"], "best_of_n"), "",
      "## Step-level greedy search accuracy (N candidates per step)", "",
      accuracy_table(summary["evaluation"], "step_greedy"), "",
  ]
  if summary.get("ranking"):
    lines += ["## How each scorer ranks the held-out solutions", "",
              "On every seed's pool (the largest N's solutions of each problem), the AUC: the "
              "probability that a right step or solution outscores a wrong one. Step AUC: step "
              "scores against check_steps; solution AUC: solution scores against the answer, "
              "all problems pooled; within-problem AUC: the same inside each problem (what "
              "best-of-N depends on), averaged over problems with both right and wrong "
              "solutions. Training loss: the reward model's loss at its first and last log, "
              "beside the loss of always predicting the labels' mean.", "",
              ranking_table(summary), "", *diagnosis(summary), ""]
  fe = summary["first_error"]
  lines += [] if not fe else ["## First wrong step (against check_steps)", "",
            f"{fe['solutions']} sampled solutions, {fe['with_error']} with a wrong step, "
            f"{fe['corrected']} of them with a later right step (a corrected error); a "
            f"model's first step scored below {fe['threshold']} is its prediction.", "",
            "| model | precision | recall | F1 | on corrected: precision | recall | F1 |",
            "|---|---|---|---|---|---|---|"]
  for name, m in fe.get("models", {}).items():
    a, b = m["all"], m["corrected"]
    lines.append(f"| {NAMES[name]} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} "
                 f"| {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
  lines += ["", "## Reward hacking: GRPO with the reward model as the only reward", "",
            "Mean reward-model reward and true accuracy of the rollouts, first and last "
            "iteration, and the greedy accuracy before and after.", "",
            "| reward model | reward first -> last | true accuracy first -> last | greedy "
            "accuracy start -> end |", "|---|---|---|---|"]
  for name, hack in summary["hacking"].items():
    curve = hack["curve"]
    if not curve:
      continue
    first, last = curve[0], curve[-1]
    greedy = (f"{hack['start'].get('accuracy', float('nan')):.3f} -> "
              f"{hack['final'].get('accuracy', float('nan')):.3f}")
    lines.append(f"| {NAMES[name]} | {first['reward']:.3f} -> {last['reward']:.3f} | "
                 f"{first['true_accuracy']:.3f} -> {last['true_accuracy']:.3f} | {greedy} |")
  start = summary.get("self_training_start", {})
  lines += ["", "## Self-training on reward-model-selected tree paths", "",
            "Each reward model picks paths from the trees of the problems it was trained on "
            "(as in the paper), so the share of right paths shows how well it fits its own "
            f"training data. Starting policy: greedy accuracy "
            f"{start.get('accuracy', float('nan')):.3f}.", "",
            "| reward model | KL weight | paths | paths with a right answer | greedy accuracy |",
            "|---|---|---|---|---|"]
  for row in summary["self_training"].values():
    lines.append(f"| {NAMES[row['reward_model']]} | {row['kl_weight']:g} | {row['examples']} "
                 f"| {row.get('paths_correct', float('nan')):.3f} "
                 f"| {row.get('accuracy', float('nan')):.3f} |")
  lines += ["", "## The paper's claims at this scale", "",
            "| claim | verdict | numbers |", "|---|---|---|"]
  lines += [f"| {a} | {v} | {r} |" for a, v, r in claims(summary)]
  return "\n".join(lines) + "\n"


def write(path: str, summary: dict, text: str) -> None:
  """The page at `path`, its JSON and the accuracy-vs-N plot beside it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  stem = os.path.splitext(path)[0]
  with open(path, "w") as f:
    f.write(text + f"\n![accuracy vs N]({os.path.basename(stem)}.png)\n")
  with open(stem + ".json", "w") as f:
    json.dump(summary, f, indent=2)
  plot(summary["evaluation"], stem + ".png")


def plot(evaluation: list[dict], path: str) -> None:
  """Accuracy against N (log scale), one panel per search method, mean and spread."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  c = curves(evaluation)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, method in zip(axes, ("best_of_n", "step_greedy")):
    for (m, scorer), by_n in c.items():
      if m != method and not (m == "majority_vote" and method == "best_of_n"):
        continue
      ns = sorted(by_n)
      mean = np.asarray([np.mean(by_n[n]) for n in ns])
      std = np.asarray([np.std(by_n[n], ddof=1) if len(by_n[n]) > 1 else 0.0 for n in ns])
      ax.plot(ns, mean, marker="o", label=NAMES[scorer])
      ax.fill_between(ns, mean - std, mean + std, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_title(method.replace("_", " "))
  axes[0].set_ylabel("accuracy")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
