"""Preference optimisation (the DPO family) on pairs of the policy's own samples or steps.

    python -m reasonjax.main --config=configs/dpo_arith.py --workdir=runs/dpo
    python -m reasonjax.main --config=configs/step_dpo_arith.py --workdir=runs/step_dpo

The policy (an SFT run's export, `config.init_from`, or trained first by the nested `config.sft`)
samples `pairs.num_samples` solutions per training problem; a correct and an incorrect solution
of the same problem make a pair (chosen, rejected). With `pairs.source="trees"` (Step-DPO,
Step-APO) the pairs are steps instead: the policy grows a full step tree per problem
(`search.tree_data.grow`), each node is valued by the fraction of right leaves below it, and
at a node whose children's values differ by at least `pairs.margin` the best and the worst
child make a pair, the path to the node being part of the prompt (`step_pairs`). With
`pairs.source="corrections"` (SCL) the prompt is the problem, one of the policy's first attempts
and a cue to check it, and a right and a wrong second attempt make a pair
(`_correction_pairs`). The pairs are written to `workdir/pairs.jsonl` once, so a resumed run
trains on the same data. The frozen reference is the starting policy. Any loss in `losses.preference.LOSSES` (inputs: sequence log-probs,
lengths, the chosen NLL) can be named in `config.loss`, with its hyperparameters in
`config.loss_kwargs[loss]`.

One entry of `loss_kwargs[loss]` is the trainer's, not the loss's: `average_tokens` (default
False) feeds the loss per-token mean log-probs logp / len (policy and reference, lengths below 1
counting as 1) instead of sums. IPO's target margin 1 / (2 beta) is defined on means (Azar et al.
2023, as in TRL), so configs/dpo_arith.py sets it for `ipo`. Losses that take the lengths
normalise themselves and refuse it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reasonjax import models
from reasonjax.data import batching
from reasonjax.losses import preference, tokens
from reasonjax.programs import stages
from reasonjax.search import tree_data
from reasonjax.sampling import generate_texts, sampling_config
from reasonjax.search.policy import StepPolicy
from reasonjax.training import experiment, loop

# The arguments a preference loss may take, all [B], computed in `preference_loss`.
INPUTS = ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "len_w", "len_l", "nll_w")
# Where pairs come from: whole samples of a problem, sibling steps of a step tree, or second
# attempts after the policy's own first attempt (self-correction).
PAIR_SOURCES = ("samples", "trees", "corrections")
# A `loss_kwargs[loss]` entry the trainer reads instead of passing it to the loss.
AVERAGE_TOKENS = "average_tokens"


def loss_inputs(name: str) -> tuple[str, ...]:
  """The positional inputs of the preference loss `name`; raises if one cannot be provided."""
  params = [p.name for p in inspect.signature(preference.get_loss(name)).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  missing = [p for p in params if p not in INPUTS]
  if missing:
    raise ValueError(f"config.loss={name!r} needs {missing}, which preference pairs of whole "
                     f"solutions do not provide; usable inputs: {INPUTS}")
  return tuple(params)


def _sequence_logprobs(model, params, batch, prefix: str):
  logits = model.apply({"params": params}, batch[prefix + "inputs"],
                       positions=batch[prefix + "positions"],
                       segment_ids=batch[prefix + "segment_ids"])
  return tokens.sequence_logprobs(logits, batch[prefix + "targets"], batch[prefix + "loss_mask"])


def preference_loss(params, batch, rng, frozen, *, model, loss: str, loss_kwargs: dict,
                    beta_for_metrics: float):
  """Mean over pairs of `preference.LOSSES[loss]`; batch from `batching.preference_example`
  ([B, T] chosen_* and rejected_* fields). `frozen` holds the reference parameters (None for
  reference-free losses). `loss_kwargs`: the loss's hyperparameters, plus the trainer's
  `average_tokens` (module docstring); the reward metrics are of the log-probs the loss is fed.
  Weight: the number of pairs."""
  del rng
  names = loss_inputs(loss)
  loss_kwargs = dict(loss_kwargs)
  average_tokens = loss_kwargs.pop(AVERAGE_TOKENS, False)
  # One forward over chosen and rejected rows together: [2B, T].
  both = {k: jnp.concatenate([batch["chosen_" + k], batch["rejected_" + k]])
          for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
  logp_w, logp_l = jnp.split(_sequence_logprobs(model, params, both, ""), 2)
  len_w = jnp.sum(batch["chosen_loss_mask"], -1)
  values = {"logp_w": logp_w, "logp_l": logp_l, "len_w": len_w,
            "len_l": jnp.sum(batch["rejected_loss_mask"], -1),
            "nll_w": -logp_w / jnp.maximum(len_w, 1.0)}
  if frozen is not None:
    ref = jax.lax.stop_gradient(_sequence_logprobs(model, frozen, both, ""))
    values["ref_logp_w"], values["ref_logp_l"] = jnp.split(ref, 2)
  if average_tokens:
    for side, length in (("_w", values["len_w"]), ("_l", values["len_l"])):
      for key in ("logp" + side, "ref_logp" + side):
        if key in values:
          values[key] = values[key] / jnp.maximum(length, 1.0)
  per_pair = preference.get_loss(loss)(*(values[n] for n in names), **loss_kwargs)
  value = jnp.mean(per_pair)
  metrics = {"loss": value, "logp_chosen": jnp.mean(logp_w), "logp_rejected": jnp.mean(logp_l)}
  if frozen is not None:
    margins = preference.reward_margins(values["logp_w"], values["logp_l"], values["ref_logp_w"],
                                        values["ref_logp_l"], beta=beta_for_metrics)
    metrics |= {k: jnp.mean(v) for k, v in margins.items()}
  return value, (jnp.asarray(per_pair.shape[0], jnp.float32), metrics)


def make_pairs(samples: list[list[str]], correct: list[list[bool]], max_pairs: int
               ) -> list[list[tuple[str, str]]]:
  """Per problem, up to `max_pairs` (chosen, rejected) pairs of distinct correct and incorrect
  samples, matched in sample order."""
  out = []
  for texts, ok in zip(samples, correct):
    good = list(dict.fromkeys(t for t, c in zip(texts, ok) if c))
    bad = list(dict.fromkeys(t for t, c in zip(texts, ok) if not c))
    out.append(list(zip(good, bad))[:max_pairs])
  return out


def step_pairs(tree: tree_data.StepTree, values: np.ndarray, *, margin: float,
               max_pairs: int) -> list[tuple[int, int, int]]:
  """(node, chosen child, rejected child) of a step tree: at each node with two or more
  children, its highest- and lowest-valued children (the first of equals) when their values
  differ by at least `margin` (values: e.g. `tree_data.mc_scores`, a Q-value estimate); the
  `max_pairs` largest differences, ties by node id."""
  children: dict[int, list[int]] = {}
  for child in range(1, tree.num_nodes):
    children.setdefault(tree.parent[child], []).append(child)
  found = []
  for node, kids in children.items():
    if len(kids) < 2:
      continue
    best = max(kids, key=lambda c: values[c])
    worst = min(kids, key=lambda c: values[c])
    if values[best] - values[worst] >= margin:
      found.append((values[worst] - values[best], node, best, worst))
  return [(node, best, worst) for _, node, best, worst in sorted(found)[:max_pairs]]


def _encoded_length(tokenizer, texts) -> int:
  """Tokens of sampled texts, re-encoded: what sampling them generated, give or take an EOS."""
  return sum(len(tokenizer.encode(t)) for t in texts)


def _tree_pairs(config, model, params, task, tokenizer, problems) -> tuple[list[dict], int]:
  """Step pairs (`step_pairs`) from a full step tree of each problem, and the trees' tokens."""
  section = config.pairs
  policy = StepPolicy(model, params, tokenizer, task, temperature=section.temperature,
                      top_p=section.top_p, max_step_tokens=section.max_step_tokens,
                      max_steps=section.max_depth, batch_size=section.batch_size)
  trees = tree_data.grow(policy, problems, jax.random.key(config.seed + 2),
                         num_children=section.num_samples, max_depth=section.max_depth,
                         progress="growing step trees")
  delimiter = tokenizer.step_delimiter
  out = []
  generated = sum(_encoded_length(tokenizer, tree.steps) for tree in trees)
  for problem, tree in zip(problems, trees):
    for node, best, worst in step_pairs(tree, tree_data.mc_scores(tree), margin=section.margin,
                                        max_pairs=section.max_per_problem):
      path, i = [], node
      while i > 0:
        path.append(tree.steps[i])
        i = tree.parent[i]
      final = [bool(tree.kind[c]) and tree.kind[c] != "depth" for c in (best, worst)]
      # A step that ends the solution ends the text; a pair shares one setting, so only a pair
      # of two endings keeps the EOS.
      ends = all(final)
      text = lambda c: tree.steps[c] + ("" if ends else delimiter)  # noqa: E731
      out.append({"prompt": task.prompt(problem) + "".join(s + delimiter for s in path[::-1]),
                  "chosen": text(best), "rejected": text(worst), "eos": ends})
  return out, generated


def correction_prompt(prompt: str, first: str, cue: str) -> str:
  """The second turn's prompt: the problem, the policy's first attempt, then `cue`."""
  return f"{prompt}{first}\n{cue}\n"


def _correction_pairs(config, model, params, task, tokenizer, problems
                      ) -> tuple[list[dict], int]:
  """Self-correction pairs (SCL): `pairs.first_samples` first attempts per problem, then
  `pairs.num_samples` second attempts after each (`correction_prompt`); a right and a wrong
  second attempt after the same first attempt make a pair (`make_pairs`). Each pair records
  whether its first attempt was right: a pair after a wrong one teaches correcting it, after a
  right one keeping it. Also returns the attempts' tokens."""
  section = config.pairs

  def attempts(prompts, n, seed, what):
    return generate_texts(model, params, tokenizer, prompts, jax.random.key(seed),
                          sampling_config(section, tokenizer, num_samples=n),
                          batch_size=max(1, section.batch_size // n), progress=what,
                          tool=task.tool)

  first = attempts([task.prompt(p) for p in problems], section.first_samples, config.seed + 2,
                   "first attempts")
  turns = [(p, y1) for p, row in zip(problems, first) for y1 in row]
  prompts = [correction_prompt(task.prompt(p), y1, section.cue) for p, y1 in turns]
  second = attempts(prompts, section.num_samples, config.seed + 3, "second attempts")
  correct = [[task.check_answer(p, y2) for y2 in row] for (p, _), row in zip(turns, second)]
  out = []
  for (p, y1), prompt, found in zip(turns, prompts,
                                    make_pairs(second, correct, section.max_per_problem)):
    out += [{"prompt": prompt, "chosen": c, "rejected": r,
             "first_right": bool(task.check_answer(p, y1))} for c, r in found]
  generated = sum(_encoded_length(tokenizer, row) for row in first + second)
  return out, generated


def _pairs(config, workdir, model, params, task, tokenizer) -> list[dict[str, str]]:
  """The training pairs, sampled once and kept in workdir/pairs.jsonl; the tokens sampling them
  generated go to workdir/pairs_tokens.json."""
  path = os.path.join(workdir, "pairs.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      return [json.loads(line) for line in f]
  problems = task.generate(config.task.num_train, seed=config.seed, split="train")
  if config.pairs.source == "trees":
    pairs, generated = _tree_pairs(config, model, params, task, tokenizer, problems)
    logging.info("%d step pairs from %d problems", len(pairs), len(problems))
    if not pairs:
      raise ValueError(f"no step pairs: no node of the {len(problems)} trees has children "
                       f"whose values differ by pairs.margin={config.pairs.margin} or more; "
                       "lower it, raise pairs.num_samples, or start from another policy")
  elif config.pairs.source == "corrections":
    pairs, generated = _correction_pairs(config, model, params, task, tokenizer,
                                         problems)
    fixes = sum(not p["first_right"] for p in pairs)
    logging.info("%d self-correction pairs (%d after a wrong first attempt)", len(pairs), fixes)
    if not pairs:
      raise ValueError("no self-correction pairs: after every first attempt the second "
                       f"attempts ({config.pairs.num_samples}) were all right or all wrong; "
                       "raise pairs.num_samples or pairs.temperature")
  else:
    samples = experiment.rollouts(config.pairs, model, params, task, tokenizer, problems,
                                  jax.random.key(config.seed + 2), progress="sampling pairs")
    correct = [[task.check_answer(p, t) for t in texts] for p, texts in zip(problems, samples)]
    generated = sum(_encoded_length(tokenizer, texts) for texts in samples)
    pairs = [{"prompt": task.prompt(p), "chosen": c, "rejected": r}
             for p, found in zip(problems, make_pairs(samples, correct,
                                                      config.pairs.max_per_problem))
             for c, r in found]
    rate = float(np.mean([c for ok in correct for c in ok]))
    logging.info("%d pairs from %d problems (sample accuracy %.3f)", len(pairs), len(problems),
                 rate)
    if not pairs:
      raise ValueError(f"no preference pairs: the policy's {config.pairs.num_samples} samples "
                       f"per problem were all correct or all wrong (sample accuracy {rate:.3f}); "
                       "raise pairs.num_samples or pairs.temperature, or start from another "
                       "policy")
  with open(os.path.join(workdir, "pairs_tokens.json"), "w") as f:
    json.dump({"generated_tokens": int(generated)}, f)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(pair) + "\n" for pair in pairs)
  os.replace(tmp, path)
  return pairs


def check_config(config) -> None:
  """Raises ValueError for a missing policy to start from, a loss the trainer cannot run, one
  without its `loss_kwargs` entry, or a bad `average_tokens`."""
  stages.check_policy_source(config)
  if config.pairs.source not in PAIR_SOURCES:
    raise ValueError(f"config.pairs.source={config.pairs.source!r}; expected one of "
                     f"{PAIR_SOURCES}")
  if config.pairs.source == "trees" and config.task.get("code") is not None:
    raise ValueError("config.pairs.source='trees' with config.task.code: step trees are grown "
                     "without running programs; use 'samples' or 'corrections'")
  names = loss_inputs(config.loss)
  if config.loss not in config.loss_kwargs:
    raise ValueError(f"config.loss={config.loss!r} has no config.loss_kwargs entry; "
                     f"configured losses: {sorted(config.loss_kwargs)}")
  average = config.loss_kwargs[config.loss].get(AVERAGE_TOKENS, False)
  field = f"config.loss_kwargs.{config.loss}.{AVERAGE_TOKENS}"
  if not isinstance(average, bool):
    raise ValueError(f"{field} must be True or False, got {average!r}")
  if average and "len_w" in names:
    raise ValueError(f"{field}=True: {config.loss} takes the lengths and normalises by them "
                     "itself; averaging first would divide twice")


def _beta_for_metrics(loss_kwargs: dict) -> float:
  """The beta of the logged implicit rewards: the loss's, a mixture's first component's, or 1."""
  if "beta" in loss_kwargs:
    return loss_kwargs["beta"]
  betas = [kw["beta"] for kw in (loss_kwargs.get("kwargs") or {}).values() if "beta" in kw]
  return betas[0] if betas else 1.0


def run(config, workdir: str) -> dict:
  """Samples pairs from the policy, trains, evaluates; returns the final evaluation metrics."""
  check_config(config)
  task, tokenizer = experiment.task_and_tokenizer(config)
  path, cfg, params = stages.load_policy(config, workdir)
  model = models.Model(cfg)
  pairs = _pairs(config, workdir, model, params, task, tokenizer)
  examples = [batching.preference_example(tokenizer, p["prompt"], p["chosen"], p["rejected"],
                                          eos=p.get("eos", True)) for p in pairs]
  batches = batching.batches(
      examples, batch_size=config.batch_size // jax.process_count(), seq_len=config.seq_len,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  uses_reference = "ref_logp_w" in loss_inputs(config.loss)
  loss_kwargs = config.loss_kwargs[config.loss].to_dict()
  loss_fn = functools.partial(preference_loss, model=model, loss=config.loss,
                              loss_kwargs=loss_kwargs,
                              beta_for_metrics=_beta_for_metrics(loss_kwargs))
  state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=batches,
                            params=params, frozen=params if uses_reference else None,
                            evaluate=experiment.evaluator(config, cfg, task, tokenizer))
  experiment.export(workdir, cfg, state.params, {"steps": int(state.step), "pairs": len(pairs),
                                                 **final}, tokenizer=tokenizer)
  return final
