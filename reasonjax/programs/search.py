"""Inference-time search methods compared on held-out problems, for a range of budgets N.

    python -m reasonjax.main --config=configs/search_arith.py --workdir=runs/search_arith

For every method in `config.search.methods` (names in `search.METHODS`) and every N in
`config.search.n_values`, the policy searches each of `config.search.num_problems` test problems
and the chosen solutions are graded by the task. Steps are scored by a reward model
(`config.reward_model.path`), by a policy's own log-probabilities (`reward_model.granularity=
"implicit"`: Self-PRM, `search.scorers.ImplicitScorer`) or by the task's own step checker (the
oracle). Each (method, N)
row holds accuracy, generated tokens per problem (the budget the method spent) and wall time;
rows are written to workdir/search.json as they finish, so a rerun resumes after the last one,
and the table to workdir/search.md (and to `config.results_page` when set, e.g.
docs/results/search_arith.md, headed by the command that wrote it).
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import jax
import numpy as np
import tqdm

from reasonjax import checkpoint, distributed, models
from reasonjax.search import methods as methods_lib, scorers
from reasonjax.search.policy import StepPolicy
from reasonjax.programs import stages
from reasonjax.training import experiment

RESULTS = "search.json"
TABLE = "search.md"


# The reward_model granularity that scores with a policy's own log-probabilities.
IMPLICIT = "implicit"


def check_config(config) -> None:
  """Raises ValueError naming the field: unknown methods or aggregation, bad budgets, a missing
  reward model folder, MCTS fields out of range."""
  stages.check_policy_source(config)
  search = config.search
  for name in search.methods:
    methods_lib.get_method(name)
  scorers.check_aggregation(search.aggregation)
  if not search.n_values or any(int(n) != n or n < 1 for n in search.n_values):
    raise ValueError(f"config.search.n_values={search.n_values!r}: expected positive integers")
  if search.num_problems < 1:
    raise ValueError(f"config.search.num_problems={search.num_problems}: expected >= 1")
  path = config.reward_model.path
  if path and not os.path.isfile(os.path.join(path, "config.json")):
    raise ValueError(f"config.reward_model.path={path!r}: no config.json there; expected a "
                     "reward_model run's export (workdir/hf)")
  valid = scorers.GRANULARITIES + (IMPLICIT,)
  if config.reward_model.granularity not in valid:
    raise ValueError(f"config.reward_model.granularity={config.reward_model.granularity!r}; "
                     f"expected one of {valid}")
  reference = config.reward_model.reference
  if reference and not os.path.isfile(os.path.join(reference, "config.json")):
    raise ValueError(f"config.reward_model.reference={reference!r}: no config.json there; "
                     "expected a policy (a Hugging Face folder), or '' for none")
  if "mcts" in search.methods:
    from reasonjax.search import language
    language.check_settings(dict(search.mcts))


def table(rows: list[dict], scorer: str) -> str:
  """Markdown: accuracy (generated tokens per problem) per method and N."""
  ns = sorted({r["n"] for r in rows})
  names = list(dict.fromkeys(r.get("label", r["method"]) for r in rows))
  cell = {(r.get("label", r["method"]), r["n"]): r for r in rows}
  lines = [f"Accuracy (generated tokens per problem, seconds); steps scored by: {scorer}", "",
           "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
           "|---" * (len(ns) + 1) + "|"]
  for name in names:
    cells = [f"{c['accuracy']:.3f} ({c['tokens_per_problem']:.0f}, {c['seconds']:.1f}s)"
             if (c := cell.get((name, n))) else "" for n in ns]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Runs every (method, N); returns {"rows": [...], "scorer": ...} as written to search.json."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  path, cfg, params = stages.load_policy(config, workdir)
  s = config.search
  policy = StepPolicy(models.Model(cfg), params, tokenizer, task, temperature=s.temperature,
                      top_p=s.top_p, max_step_tokens=s.max_step_tokens, max_steps=s.max_steps,
                      max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
  rm = config.reward_model
  if rm.granularity == IMPLICIT:  # Self-PRM: a policy (by default the searching one) judges
    scorer = scorers.ImplicitScorer.load(rm.path or path, task, tokenizer,
                                         reference=rm.reference, beta=rm.beta,
                                         batch_size=rm.batch_size)
    scorer_name = (f"implicit PRM of {rm.path or path}"
                   + (f" against {rm.reference}" if rm.reference else " (its own confidence)"))
  elif rm.path:
    scorer = scorers.RewardModelScorer.load(rm.path, task, tokenizer,
                                            granularity=rm.granularity, batch_size=rm.batch_size)
    scorer_name = f"{rm.granularity} reward model ({rm.path})"
  else:
    scorer, scorer_name = scorers.OracleScorer(task), "oracle (the task's check_steps)"
  # Each process searches its share of the problems on its own devices; the rows sum over all.
  problems = distributed.share(task.generate(s.num_problems, seed=config.seed, split="test"))
  search = methods_lib.Search(policy, scorer, problems,
                              distributed.process_rng(jax.random.key(config.seed + 5)),
                              aggregation=s.aggregation, beam_width=s.beam_width,
                              mcts=dict(s.mcts), wait=s.wait)
  out_path = os.path.join(workdir, RESULTS)
  rows, settings = [], _settings(config, path)
  if os.path.exists(out_path):
    with open(out_path) as f:
      saved = json.load(f)
    changes = checkpoint.config_changes(saved.get("settings", {}), settings)
    if changes:
      raise ValueError(f"{out_path} holds rows of other settings ({'; '.join(changes)}); use a "
                       "new --workdir, or delete that file to start again")
    rows = saved["rows"]
  done = {(r["method"], r["n"]) for r in rows}
  todo = [(m, int(n)) for m in s.methods for n in s.n_values if (m, int(n)) not in done]
  for method, n in tqdm.tqdm(todo, desc="search", disable=not todo or jax.process_index() != 0):
    result = methods_lib.get_method(method)(search, n)
    correct = [task.check_answer(p, t) for p, t in zip(problems, result.texts)]
    right, tokens, count = distributed.job_sum([sum(correct), np.sum(result.tokens),
                                                len(problems)])
    rows.append({"method": method, "n": n, "label": _label(method, s),
                 "accuracy": float(right / count), "tokens_per_problem": float(tokens / count),
                 "seconds": float(distributed.job_max([result.seconds])[0]),
                 "problems": int(count)})
    _write(workdir, rows, scorer_name, settings)
  _write(workdir, rows, scorer_name, settings)
  if jax.process_index() == 0:
    print(table(rows, scorer_name), flush=True)
  if config.results_page and jax.process_index() == 0:
    _results_page(config.results_page, rows, scorer_name, config.seed)
  return {"rows": rows, "scorer": scorer_name}


def _settings(config, policy: str) -> dict:
  """What a row's numbers depend on besides its (method, N): a rerun with other settings must
  not mix its rows with these. Lists of methods and N may grow."""
  search = {k: v for k, v in config.search.to_dict().items() if k not in ("methods", "n_values")}
  return json.loads(json.dumps({"policy": policy, "reward_model": config.reward_model.to_dict(),
                                "task": config.task.to_dict(), "seed": config.seed,
                                "search": search}))


def _label(method: str, search) -> str:
  """The table's name of a method: MCTS valued by rollouts reads the gold answers, and says so."""
  if method == "mcts" and search.mcts.evaluation != "reward":
    return f"mcts ({search.mcts.evaluation}; reads gold answers)"
  return method


def _write(workdir: str, rows: list[dict], scorer: str, settings: dict) -> None:
  if jax.process_index() != 0:
    return
  tmp = os.path.join(workdir, RESULTS + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"rows": rows, "scorer": scorer, "settings": settings}, f, indent=2)
  os.replace(tmp, os.path.join(workdir, RESULTS))
  with open(os.path.join(workdir, TABLE), "w") as f:
    f.write(table(rows, scorer) + f"\nseed {settings['seed']}\n")


def _results_page(path: str, rows: list[dict], scorer: str, seed: int) -> None:
  """The table as a results page, headed by the command that wrote it."""
  command = " ".join(["python -m reasonjax.main"] + [shlex.quote(a) for a in sys.argv[1:]])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(f"# Search methods on held-out problems\n\nWritten by\n\n    {command}\n\n"
            f"{table(rows, scorer)}\nSeed {seed}, one run: between seeds an accuracy differs by "
            "about sqrt(a (1 - a) / problems). N is each method's own budget unit (solutions, "
            "candidates per step, simulations / simulations_per_n), not an equal token budget: "
            "compare the generated tokens beside each accuracy. Wall seconds include the "
            "compilation of shapes a row meets first.\n")
