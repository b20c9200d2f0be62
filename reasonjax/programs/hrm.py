"""The Hierarchical Reward Model paper's pipeline (Wang et al. 2025, "Towards Hierarchical
Multi-Step Reward Models for Enhanced Reasoning in Large Language Models"), one stage after the
other, each stored in the workdir and skipped when present:

    hrm_settings.json        the settings the stages were made with (a rerun must match)
    sft/hf                   the policy (`init_from`, or the nested SFT run)
    trees.jsonl, trees_info.json    full breadth-first step trees on training problems
    trees_hnc.jsonl, hnc.json       their HNC versions; its cost and label noise
    records.json             reward-model records per model: orm, prm, hrm, hrm_hnc
    rm_<name>/hf             each reward model (programs.reward_model.train)
    evaluation_seed<s>.json  best-of-N / step-level greedy per scorer, majority vote;
                             how each scorer ranks the held-out solutions
    first_error.json         first wrong step detection of the step models vs check_steps
    hack_<name>/             GRPO with the model's score as the reward (programs.grpo)
    paths.json               each reward model's best tree paths per problem
    self_training_start.json, self_<name>_kl<w>/    the policy's evaluation before and after
                             fine-tuning on those paths
    hrm.json, hrm.md         the tables; `config.results_page` (+ .json, .png) when set

    python -m reasonjax.main --config=configs/hrm_arith.py --workdir=runs/hrm_mini
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import jax
import numpy as np
import tqdm
from absl import logging

from reasonjax import distributed, metrics as metrics_lib, models
from reasonjax.data.tasks import Task
from reasonjax.losses import reward
from reasonjax.programs import grpo, hrm_report, reward_model, sft, stages
from reasonjax.search import methods as methods_lib, process_bench, scorers, tree_data
from reasonjax.search.policy import StepPolicy, is_answer, sample_solutions, solution_steps
from reasonjax.training import experiment, loop

REWARD_MODELS = ("orm", "prm", "hrm", "hrm_hnc")
SEARCHES = ("best_of_n", "step_greedy")
def check_config(config) -> None:
  """Raises ValueError naming a bad field before any work: reward model names, aggregation,
  budgets, the nested runs' loop fields and label kind."""
  stages.check_policy_source(config)
  for field in ("reward_models.names", "first_error.reward_models", "hacking_reward_models",
                "self_training_reward_models"):
    names = config
    for key in field.split("."):
      names = names[key]
    unknown = sorted(set(names) - set(REWARD_MODELS))
    if unknown:
      raise ValueError(f"config.{field} has unknown reward model(s) {unknown}; valid: "
                       f"{list(REWARD_MODELS)}")
    if field != "reward_models.names" and set(names) - set(config.reward_models.names):
      raise ValueError(f"config.{field}={list(names)} uses models that "
                       f"config.reward_models.names={list(config.reward_models.names)} does "
                       "not train")
  scorers.check_aggregation(config.evaluation.aggregation)
  if config.reward_models.label_kind not in reward.LABEL_KINDS:
    raise ValueError(f"config.reward_models.label_kind={config.reward_models.label_kind!r}; "
                     f"expected one of {reward.LABEL_KINDS}")
  for field in ("n_values", "step_greedy_n_values", "seeds"):
    values = config.evaluation[field]
    if not values or any(int(v) != v or v < (0 if field == "seeds" else 1) for v in values):
      raise ValueError(f"config.evaluation.{field}={values!r}: expected "
                       f"{'non-negative' if field == 'seeds' else 'positive'} integers")
  if any(w < 0 for w in config.kl_weights):
    raise ValueError(f"config.kl_weights={config.kl_weights!r}: expected weights >= 0")
  if config.trees.num_children < 1 or config.trees.max_depth < 1:
    raise ValueError("config.trees.num_children and max_depth must be >= 1")
  loop.check_config(config.reward_models)
  for name, program in (("hacking", grpo), ("self_training", sft)):
    try:
      nested = stages.nested_config(config, name)
      loop.check_config(nested)
      program.check_config(nested)
    except ValueError as e:
      raise ValueError(f"config.{name} (a nested {name} run): {e}") from None


def step_policy(config, section, cfg, params, task: Task, tokenizer) -> StepPolicy:
  """The `StepPolicy` of a config section (`config.trees` or `config.evaluation`)."""
  return StepPolicy(models.Model(cfg), params, tokenizer, task, temperature=section.temperature,
                    top_p=section.top_p, max_step_tokens=section.max_step_tokens,
                    max_steps=section.get("max_steps", config.trees.max_depth),
                    max_new_tokens=section.get("max_new_tokens", 128),
                    batch_size=section.batch_size)


def _trees(config, workdir, policy: StepPolicy, problems) -> tuple[list, list, dict]:
  """Trees, their HNC versions and HNC's cost and noise, made once (the trees of a multi-process
  job: each process grows its share of the problems)."""
  path = os.path.join(workdir, "trees.jsonl")
  if os.path.isfile(path):
    trees = tree_data.load_trees(path)
  else:
    start = time.perf_counter()
    rng = distributed.process_rng(jax.random.key(config.seed + 11))
    progress = "growing trees" if jax.process_index() == 0 else None
    grown = distributed.map_shared(
        lambda part: [t.to_json(ids=False) for t in tree_data.grow(
            policy, part, rng, num_children=config.trees.num_children,
            max_depth=config.trees.max_depth, progress=progress)], problems)
    # A tree's problem is its index among all the problems, not within a process's share.
    trees = [tree_data.StepTree.from_json(t | {"problem": i}) for i, t in enumerate(grown)]
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "trees_info.json"), "w") as f:
        json.dump({"seconds": time.perf_counter() - start}, f)
      tree_data.save_trees(path, trees, ids=False)
  hnc_path = os.path.join(workdir, "trees_hnc.jsonl")
  made = {}

  def compress():
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    out = [tree_data.compress(t, rng, min_children=config.data.hnc_min_children,
                              probability=config.data.hnc_probability) for t in trees]
    seconds = time.perf_counter() - start
    made["trees"] = [t for t, _ in out]
    if jax.process_index() == 0:
      tree_data.save_trees(hnc_path, made["trees"], ids=False)
    nodes = sum(t.num_nodes for t in trees)
    changed = sum(info["changed"] for _, info in out)
    return {"seconds": seconds, "moved": sum(len(info["moved"]) for _, info in out),
            "nodes": nodes, "label_noise": changed / max(nodes, 1)}

  # hnc.json is written after trees_hnc.jsonl: when it is there, so are the trees.
  info = stages.json_file(os.path.join(workdir, "hnc.json"), compress)
  return trees, made["trees"] if made else tree_data.load_trees(hnc_path), info


def records(config, trees, hnc_trees) -> dict[str, list]:
  """Each reward model's training records (`tree_data.StepExample` fields as lists)."""
  rng = np.random.default_rng(config.seed)
  select = dict(fraction=config.data.fraction,
                single_score_count=config.data.single_score_count)

  def chosen(tree):
    scores = tree_data.mc_scores(tree)
    return tree, tree_data.select_nodes(tree, scores, rng, **select), scores

  plain = [chosen(t) for t in trees]
  compressed = [chosen(t) for t in hnc_trees]
  # Each set without duplicates (a step sampled twice from one parent gives identical records),
  # so that HRM+HNC, the union of two HRM sets, is compared with sets built the same way.
  out = {
      "orm": tree_data.union([r for t in trees for r in tree_data.orm_examples(t)]),
      "prm": tree_data.union([r for t, n, s in plain for r in tree_data.prm_examples(t, n, s)]),
      "hrm": tree_data.union([r for t, n, s in plain for r in tree_data.hrm_examples(t, n, s)]),
  }
  out["hrm_hnc"] = tree_data.union(
      out["hrm"], [r for t, n, s in compressed for r in tree_data.hrm_examples(t, n, s)])
  return {name: [[r.problem, list(r.previous), r.current, r.label] for r in out[name]]
          for name in config.reward_models.names}


def _record(row) -> tree_data.StepExample:
  problem, previous, current, label = row
  return tree_data.StepExample(problem, tuple(previous), current, label)


def train_reward_models(config, workdir, policy_path, task, tokenizer, problems, rows
                        ) -> dict[str, str]:
  """name -> the export of each reward model (`config.reward_models.names`), trained on its
  records (`records`' rows of name) in workdir/rm_<name> unless it is there."""

  def train(c, d, name):
    examples = [tree_data.to_example(tokenizer, task.prompt(problems[r[0]]), _record(r))
                for r in rows[name]]
    logging.info("reward model %s: %d records", name, len(examples))
    return reward_model.train(c, d, policy_path, examples, tokenizer=tokenizer)

  return {name: stages.nested(lambda c, d, name=name: train(c, d, name),
                               stages.nested_config(config, "reward_models", policy_path),
                               os.path.join(workdir, f"rm_{name}"))
          for name in config.reward_models.names}


def named_scorers(config, paths, task, tokenizer) -> dict[str, tuple]:
  """name -> (scorer, aggregation): the oracle and each reward model (scored as trained: on
  every step, answer lines included; orm by its last score)."""
  out = {}
  if config.evaluation.oracle:
    out["oracle"] = (scorers.OracleScorer(task), config.evaluation.aggregation)
  for name, path in paths.items():
    scorer = scorers.RewardModelScorer.load(path, task, tokenizer, granularity="prm",
                                            batch_size=config.evaluation.score_batch_size,
                                            score_answers=True)
    out[name] = (scorer, "last" if name == "orm" else config.evaluation.aggregation)
  return out


def evaluate_search(config, policy: StepPolicy, problems, named_scorers, seed: int) -> dict:
  """{"search": rows {method, scorer, n, seed, accuracy, tokens_per_problem} of best-of-N and
  step-level greedy with each scorer and of majority vote, "ranking": `ranking` of each
  scorer on the largest pool}; the whole-solution methods share one pool. In a multi-process
  job each process searches its share of the problems, and the numbers are the job's."""
  e, task = config.evaluation, policy.task
  rng = distributed.process_rng(jax.random.key(seed))
  problems = distributed.share(problems)
  pool = methods_lib.SolutionPool(policy, problems, jax.random.fold_in(rng, 1))
  rows = []

  def row(method, scorer_name, n, result):
    correct = [task.check_answer(p, t) for p, t in zip(problems, result.texts)]
    right, tokens, count = distributed.job_sum([sum(correct), np.sum(result.tokens),
                                                len(problems)])
    rows.append({"method": method, "scorer": scorer_name, "n": int(n), "seed": seed,
                 "accuracy": float(right / count), "tokens_per_problem": float(tokens / count)})

  vote = methods_lib.Search(policy, None, problems, rng, pool=pool)
  for n in e.n_values:
    row("majority_vote", "none", n, methods_lib.majority_vote(vote, int(n)))
  todo = [(m, s, n) for s in named_scorers for m in SEARCHES
          for n in (e.n_values if m == "best_of_n" else e.step_greedy_n_values)]
  for method, name, n in tqdm.tqdm(todo, desc=f"search, seed {seed}",
                                   disable=jax.process_index() != 0):
    scorer, aggregation = named_scorers[name]
    search = methods_lib.Search(policy, scorer, problems, rng, aggregation=aggregation,
                                pool=pool)
    row(method, name, n, methods_lib.get_method(method)(search, int(n)))
  return {"search": rows, "ranking": [{"seed": seed, **r} for r in
                                      ranking(pool, named_scorers, max(e.n_values))]}


def ranking(pool: methods_lib.SolutionPool, named_scorers, n: int) -> list[dict]:
  """How each scorer orders the pool's first n solutions of every problem, one row each
  {scorer, step_auc, solution_auc, within_auc, problems_with_both} (AUC: the probability that
  a right one outscores a wrong one, ties 1/2):

    step_auc      its step scores against check_steps' grades (an answer line: the answer's);
                  None for a task without per-step ground truth
    solution_auc  solution scores (its aggregation of the steps) against the answers' grades,
                  all problems pooled: this also rewards telling easy problems from hard ones
    within_auc    the same within each problem, averaged over problems with both right and
                  wrong solutions: what best-of-N depends on

  In a multi-process job each process grades its pool's problems and the AUCs pool them all
  (collective).
  """
  task, problems = pool.policy.task, pool.problems
  texts, _, _ = pool.take(n)
  # The grades depend on the pool only: made once for every scorer.
  steps = [solution_steps(task, t) for row in texts for t in row]
  try:
    grades = np.concatenate(scorers.OracleScorer(task)(
        [p for p, row in zip(problems, texts) for _ in row], steps) or [[]]).tolist()
  except NotImplementedError:  # final answers only (GSM8K): no step AUC
    grades = None
  local = {"grades": grades, "values": {}, "steps": {},
           "correct": [[float(task.check_answer(p, t)) for t in row]
                       for p, row in zip(problems, texts)]}
  for name, (scorer, aggregation) in named_scorers.items():
    scores, _ = pool.scores(scorer, n)
    local["values"][name] = [[float(scorers.aggregate(s, aggregation)) for s in row]
                             for row in scores]
    local["steps"][name] = [float(x) for r in scores for s in r for x in s]
  parts = distributed.gather_json(local)
  correct = np.asarray([row for part in parts for row in part["correct"]])
  grades = (None if any(part["grades"] is None for part in parts) else
            np.asarray([g for part in parts for g in part["grades"]]))
  both = [i for i, c in enumerate(correct) if 0 < c.sum() < len(c)]
  out = []
  for name in named_scorers:
    value = np.asarray([row for part in parts for row in part["values"][name]])
    within = [reward_model.auc(value[i], correct[i]) for i in both]
    out.append({"scorer": name,
                "step_auc": None if grades is None else reward_model.auc(
                    np.asarray([x for part in parts for x in part["steps"][name]]), grades),
                "solution_auc": reward_model.auc(value.ravel(), correct.ravel()),
                "within_auc": float(np.mean(within)) if within else float("nan"),
                "problems_with_both": len(within)})
  return out


def first_error(config, policy: StepPolicy, problems, named_scorers, rng) -> dict:
  """First-wrong-step detection against check_steps, per step model: on all sampled solutions
  and on those where a wrong step is followed by a right one (a corrected error). In a
  multi-process job each process samples and scores its share of the problems."""
  f = config.first_error
  if not f.reward_models:
    return {}
  task, rng = policy.task, distributed.process_rng(rng)

  def detect(part) -> list[list[dict]]:
    """Per problem, per solution with reasoning steps: its first wrong step (gold; -1: none),
    whether a right step follows it, and each model's predicted first wrong step."""
    texts, _ = sample_solutions(policy, part, f.num_samples, rng)
    items = []
    for i, (problem, row) in enumerate(zip(part, texts)):
      for text in row:
        reasoning = [s for s in solution_steps(task, text) if not is_answer(s)]
        if reasoning:
          check = task.check_steps(problem, reasoning).correct
          gold = next((j for j, ok in enumerate(check) if not ok), -1)
          items.append((i, reasoning, gold, gold >= 0 and any(check[gold + 1:])))
    predicted = {name: [process_bench.first_error_prediction(s, f.threshold) for s in
                        named_scorers[name][0]([part[i] for i, *_ in items],
                                               [s for _, s, *_ in items])] if items else []
                 for name in f.reward_models}
    out = [[] for _ in part]
    for k, (i, _, gold, corrected) in enumerate(items):
      out[i].append({"gold": gold, "corrected": corrected,
                     "predicted": {name: predicted[name][k] for name in f.reward_models}})
    return out

  items = [item for row in distributed.map_shared(detect, problems) for item in row]
  gold = [item["gold"] for item in items]
  sub = [i for i, item in enumerate(items) if item["corrected"]]
  out = {"solutions": len(items), "with_error": sum(g >= 0 for g in gold),
         "corrected": len(sub), "threshold": f.threshold, "models": {}}
  for name in f.reward_models:
    predicted = [item["predicted"][name] for item in items]
    out["models"][name] = {
        "all": process_bench.first_error_detection(predicted, gold),
        "corrected": process_bench.first_error_detection([predicted[i] for i in sub],
                                                         [gold[i] for i in sub])}
  return out


def hacking(config, workdir, policy_path, rm_paths) -> dict:
  """GRPO runs with each reward model's score as the only reward: per iteration, the mean
  reward and the true accuracy of the rollouts (from metrics.jsonl)."""
  out = {}
  for name in config.hacking_reward_models:
    section = stages.nested_config(config, "hacking", policy_path)
    with section.unlocked():
      section.reward_model.path = rm_paths[name]
      section.reward_model.score_answers = True
      section.reward_model.aggregation = "last" if name == "orm" else (
          config.evaluation.aggregation)
    directory = os.path.join(workdir, f"hack_{name}")
    stages.nested(grpo.run, section, directory)
    curve = [{"step": r["step"], "reward": r["rollout_reward_mean"],
              "true_accuracy": r["rollout_true_accuracy"]}
             for r in metrics_lib.read_jsonl(os.path.join(directory, "metrics.jsonl"))
             if "rollout_true_accuracy" in r]
    with open(os.path.join(directory, "results.json")) as f:
      results = json.load(f)
    out[name] = {"curve": curve, "start": results.get("start", {}),
                 "final": results.get("final", {})}
  return out


def best_paths(config, trees, problems, named_scorers) -> dict[str, list]:
  """Per reward model, each tree's `paths_per_problem` best leaf paths by the model's solution
  score, paths that end in an answer first: [problem, solution text]. In a multi-process job
  each process scores its share of the paths."""
  out = {}
  # Each distinct path once: siblings sampled alike share a path.
  leaves = list(dict.fromkeys((t.problem, tuple(t.path_steps(leaf)), t.kind[leaf] == "answer")
                              for t in trees for leaf in t.leaves()))
  for name in config.self_training_reward_models:
    scorer, aggregation = named_scorers[name]
    values = distributed.map_shared(
        lambda part: [float(scorers.aggregate(s, aggregation)) for s in scorer(
            [problems[p] for p, _, _ in part], [list(s) for _, s, _ in part])], leaves)
    by_problem: dict[int, list] = {}
    for (p, steps, answered), value in zip(leaves, values):
      by_problem.setdefault(p, []).append(((answered, value), steps))
    out[name] = [[p, "\n".join(steps)] for p, ranked in sorted(by_problem.items())
                 for _, steps in sorted(ranked, key=lambda x: x[0],
                                        reverse=True)[:config.paths_per_problem]]
  return out


def self_training(config, workdir, policy_path, paths, task, problems) -> dict:
  """Fine-tunes the policy on each reward model's paths at each KL weight; their evaluations
  and the share of the paths with a right answer."""
  out = {}
  for name, rows in paths.items():
    for weight in config.kl_weights:
      section = stages.nested_config(config, "self_training", policy_path)
      with section.unlocked():
        section.kl_weight = float(weight)
      directory = os.path.join(workdir, f"self_{name}_kl{weight:g}")
      examples = [(problems[p], text) for p, text in rows]
      right = float(np.mean([task.check_answer(p, text) for p, text in examples]))
      stages.nested(lambda c, d, ex=examples: sft.train_on(c, d, ex), section, directory)
      with open(os.path.join(directory, "results.json")) as f:
        out[f"{name}_kl{weight:g}"] = {"reward_model": name, "kl_weight": float(weight),
                                        "examples": len(examples), "paths_correct": right,
                                        **json.load(f)}
  return out


def run(config, workdir: str) -> dict:
  """Every stage in order; returns the summary written to hrm.json."""
  check_config(config)
  settings = json.loads(config.to_json_best_effort())
  settings.pop("results_page")  # Where the page goes may change.
  stages.check_settings(os.path.join(workdir, "hrm_settings.json"), settings)
  clock = _Clock(workdir)
  task, tokenizer = experiment.task_and_tokenizer(config)
  policy_path, cfg, params = stages.load_policy(config, workdir)
  clock("policy")
  train_problems = task.generate(config.trees.num_problems, seed=config.seed + 1000,
                                 split="train")
  tree_policy = step_policy(config, config.trees, cfg, params, task, tokenizer)
  trees, hnc_trees, hnc = _trees(config, workdir, tree_policy, train_problems)
  rows = stages.json_file(os.path.join(workdir, "records.json"),
                          lambda: records(config, trees, hnc_trees))
  clock("trees, HNC and records")
  rm_paths = train_reward_models(config, workdir, policy_path, task, tokenizer,
                                 train_problems, rows)
  clock("reward models")
  named = named_scorers(config, rm_paths, task, tokenizer)
  test_problems = task.generate(config.evaluation.num_problems, seed=config.seed,
                                split="test")
  eval_policy = step_policy(config, config.evaluation, cfg, params, task, tokenizer)
  evaluation, ranked = [], []
  for seed in config.evaluation.seeds:
    out = stages.json_file(
        os.path.join(workdir, f"evaluation_seed{seed}.json"),
        lambda s=seed: evaluate_search(config, eval_policy, test_problems, named, int(s)))
    evaluation += out["search"]
    ranked += out["ranking"]
  clock("search evaluation")
  errors = stages.json_file(
      os.path.join(workdir, "first_error.json"),
      lambda: first_error(config, eval_policy,
                          task.generate(config.first_error.num_problems, seed=config.seed + 1,
                                        split="test"),
                          named, jax.random.key(config.seed + 7)))
  clock("first error")
  hacked = hacking(config, workdir, policy_path, rm_paths)
  clock("reward hacking")
  paths = stages.json_file(os.path.join(workdir, "paths.json"),
                           lambda: best_paths(config, trees, train_problems, named))
  evaluate = experiment.evaluator(stages.nested_config(config, "self_training", policy_path), cfg,
                                  task, tokenizer)
  start = stages.json_file(os.path.join(workdir, "self_training_start.json"),
                           lambda: evaluate(params, jax.random.key(config.seed + 1)))
  trained = self_training(config, workdir, policy_path, paths, task, train_problems)
  clock("self-training")
  summary = {"evaluation": evaluation, "ranking": ranked,
             "reward_models": _training_losses(config, workdir, rows), "first_error": errors,
             "hnc": hnc,
             "records": {k: len(v) for k, v in rows.items()},
             "trees": _tree_stats(trees, workdir), "hacking": hacked,
             "self_training": trained, "self_training_start": start,
             "seeds": list(config.evaluation.seeds), "seconds": clock.times,
             "config": json.loads(config.to_json_best_effort())}
  page = hrm_report.page(summary, command=_command())
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "hrm.json"), "w") as f:
      json.dump(summary, f, indent=2)
    with open(os.path.join(workdir, "hrm.md"), "w") as f:
      f.write(page)
    if config.results_page:
      hrm_report.write(config.results_page, summary, page)
    print(page, flush=True)
  return summary


class _Clock:
  """Wall seconds per stage, kept in workdir/timings.json across invocations: a stage found
  done keeps the time it took when it ran (an interrupted stage counts its last run only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "timings.json")
    self.times = {}
    if os.path.isfile(self.path):
      with open(self.path) as f:
        self.times = json.load(f)
    self.last = time.perf_counter()

  def __call__(self, stage: str) -> None:
    now = time.perf_counter()
    if stage not in self.times:
      self.times[stage] = now - self.last
      if jax.process_index() == 0:
        with open(self.path, "w") as f:
          json.dump(self.times, f, indent=2)
    self.last = now


def _training_losses(config, workdir, rows) -> dict:
  """Per reward model: its training loss at the first and last log, beside the loss of always
  predicting its labels' mean m (mse: their variance; bce: mean -y log m - (1 - y) log(1 - m))."""
  out = {}
  for name, records in rows.items():
    path = os.path.join(workdir, f"rm_{name}", "metrics.jsonl")
    losses = [r["loss"] for r in metrics_lib.read_jsonl(path) if "loss" in r]
    y = np.asarray([r[3] for r in records], np.float64)
    m = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    constant = (np.mean((y - m) ** 2) if config.reward_models.label_kind == "mse" else
                -np.mean(y * np.log(m) + (1 - y) * np.log1p(-m)))
    if losses:
      out[name] = {"loss_first": losses[0], "loss_last": losses[-1],
                   "constant_loss": float(constant)}
  return out


def _tree_stats(trees, workdir) -> dict:
  with open(os.path.join(workdir, "trees_info.json")) as f:
    info = json.load(f)
  leaves = [leaf for t in trees for leaf in t.leaves()]
  correct = sum(t.correct[leaf] for t in trees for leaf in t.leaves())
  return {"problems": len(trees), "nodes": sum(t.num_nodes for t in trees),
          "leaves": len(leaves), "correct_leaves": int(correct),
          "seconds": info["seconds"]}


def _command() -> str:
  return " ".join(["python -m reasonjax.main"] + [shlex.quote(a) for a in sys.argv[1:]])
