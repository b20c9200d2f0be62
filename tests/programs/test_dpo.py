"""The pure parts of the DPO trainer: loss inputs by name, pair making, and `preference_loss`
against per-sequence log-probs computed in numpy float64 from the model's logits."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dpo_arith
from reasonjax import models
from reasonjax.data import batching, tokenizers
from reasonjax.data.tasks import get_task
from reasonjax.losses import preference
from reasonjax.programs import dpo
from tests.conftest import random_params


# ----------------------------------------------------------------------------- loss_inputs


@pytest.mark.parametrize("name, inputs", [
    ("dpo", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")),
    ("robust_dpo", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")),
    ("ipo", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")),
    ("hinge", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")),
    ("reference_free", ("logp_w", "logp_l")),
    ("simpo", ("logp_w", "logp_l", "len_w", "len_l")),
    ("orpo", ("logp_w", "logp_l", "len_w", "len_l", "nll_w")),
    ("aot_unpaired", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")),
    ("ln_dpo", ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "len_w", "len_l")),
    ("mixture", dpo.INPUTS),
])
def test_loss_inputs_name_the_positional_arguments(name, inputs):
  assert dpo.loss_inputs(name) == inputs


def test_every_registered_loss_can_be_fed():
  for name in preference.LOSSES:
    assert set(dpo.loss_inputs(name)) <= set(dpo.INPUTS)


def test_step_apo_is_not_a_dpo_loss():
  with pytest.raises(ValueError, match="unknown preference loss 'step_apo'"):
    dpo.loss_inputs("step_apo")


def test_a_loss_with_inputs_pairs_lack_raises_naming_them(monkeypatch):
  monkeypatch.setitem(preference.LOSSES, "step_apo", preference.step_apo)
  with pytest.raises(ValueError, match=r"step_apo.*\['q_w', 'q_l'\]"):
    dpo.loss_inputs("step_apo")


def test_unknown_loss_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid: .*'dpo'"):
    dpo.loss_inputs("kto")


def test_config_runs_every_loss_with_its_kwargs():
  """Every loss of LOSSES has a `loss_kwargs` entry that passes `check_config` and the loss's
  own range checks."""
  config = dpo_arith.get_config("runlocal")
  assert set(config.loss_kwargs) == set(preference.LOSSES)
  inputs = {"logp_w": -jnp.asarray([3.0, 9.0]), "logp_l": -jnp.asarray([5.0, 7.0]),
            "ref_logp_w": -jnp.asarray([4.0, 8.0]), "ref_logp_l": -jnp.asarray([4.5, 7.5]),
            "len_w": jnp.asarray([3, 9]), "len_l": jnp.asarray([5, 7]),
            "nll_w": jnp.asarray([1.0, 1.0])}
  for name in preference.LOSSES:
    config.loss = name
    dpo.check_config(config)
    kwargs = config.loss_kwargs[name].to_dict()
    kwargs.pop(dpo.AVERAGE_TOKENS, None)
    got = preference.get_loss(name)(*(inputs[n] for n in dpo.loss_inputs(name)), **kwargs)
    assert got.shape == (2,) and np.isfinite(np.asarray(got)).all(), name
  # IPO's default is the paper's: per-token means.
  assert config.loss_kwargs.ipo.average_tokens is True


def test_check_config_refuses_a_bad_average_tokens():
  config = dpo_arith.get_config("runlocal")
  config.loss = "simpo"
  with config.unlocked():
    config.loss_kwargs.simpo.average_tokens = True
    with pytest.raises(ValueError, match="simpo.average_tokens=True: simpo takes the lengths"):
      dpo.check_config(config)
    config.loss = "ipo"
    config.loss_kwargs = ml_collections.ConfigDict({"ipo": {"beta": 0.1, "average_tokens": 1}})
  with pytest.raises(ValueError, match="ipo.average_tokens must be True or False, got 1"):
    dpo.check_config(config)


# ----------------------------------------------------------------------------- make_pairs


def test_make_pairs_dedups_and_matches_in_sample_order():
  samples = [
      ["a", "x", "a", "b", "y", "x", "c", "z"],  # correct a, a, b, c; wrong x, y, x, z
      ["p", "q", "r"],  # all correct
      ["u", "v"],  # all wrong
      [],
      ["g", "w1", "w2", "w3"],  # one correct, three wrong: one pair
  ]
  correct = [
      [True, False, True, True, False, False, True, False],
      [True, True, True],
      [False, False],
      [],
      [True, False, False, False],
  ]
  assert dpo.make_pairs(samples, correct, max_pairs=10) == [
      [("a", "x"), ("b", "y"), ("c", "z")], [], [], [], [("g", "w1")]]
  assert dpo.make_pairs(samples, correct, max_pairs=2) == [
      [("a", "x"), ("b", "y")], [], [], [], [("g", "w1")]]
  assert dpo.make_pairs(samples, correct, max_pairs=0) == [[], [], [], [], []]


def test_make_pairs_brute_force_on_random_groups():
  rng = np.random.default_rng(0)
  for _ in range(50):
    groups = [[str(t) for t in rng.integers(0, 6, rng.integers(0, 9))] for _ in range(3)]
    # Correctness is a property of the text: even digits are correct.
    correct = [[int(t) % 2 == 0 for t in g] for g in groups]
    max_pairs = int(rng.integers(1, 4))
    for group, pairs in zip(groups, dpo.make_pairs(groups, correct, max_pairs)):
      good, bad = [], []
      for t in group:
        target = good if int(t) % 2 == 0 else bad
        if t not in target:
          target.append(t)
      assert pairs == [(good[i], bad[i])
                       for i in range(min(len(good), len(bad), max_pairs))]


# ----------------------------------------------------------------------------- preference_loss


CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MODEL = models.Model(CFG)
BETA = 0.1


@pytest.fixture(scope="module")
def batch():
  """Four pairs of (gold, wrong) arithmetic solutions, [4, 96] fields, in order."""
  tok = tokenizers.load("synthetic")
  task = get_task("arithmetic")
  examples = []
  for i, p in enumerate(task.generate(4, seed=1)):
    rejected = p.solution.replace(f"#### {p.answer}", f"#### {int(p.answer) + 1 + i}")
    if i == 3:
      rejected = "no idea"  # Chosen and rejected of different lengths.
    examples.append(batching.preference_example(tok, task.prompt(p), p.solution, rejected))
  out = next(batching.batches(examples, batch_size=4, seq_len=96, shuffle=False))
  assert out["chosen_segment_ids"][:, -1].max() == 0  # Nothing truncated.
  return {k: jnp.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def params():
  return random_params(CFG, 0), random_params(CFG, 1)


IPO_BETA = 1.0  # target margin 1 / (2 beta) = 0.5: the scale of per-token mean log-ratios
MPO = {"weights": {"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0},
       "kwargs": {"dpo": {"beta": BETA}, "bco_pair": {"beta": 0.5}}}
# Name of a run in `out` -> (loss, loss_kwargs).
RUNS = {"dpo": ("dpo", {"beta": BETA}), "reference_free": ("reference_free", {"beta": BETA}),
        "simpo": ("simpo", {"beta": 2.0, "gamma": 0.5}), "orpo": ("orpo", {"lam": 0.3}),
        "ipo": ("ipo", {"beta": IPO_BETA, "average_tokens": True}),
        "ipo_summed": ("ipo", {"beta": IPO_BETA}),
        "mixture": ("mixture", MPO)}


@pytest.fixture(scope="module")
def out(batch, params):
  """Everything the tests read, from one compiled program (compiling takes seconds): the
  model's plain logits for the references, dpo against a frozen copy, the losses with a
  reference against another model, and the reference-free ones without frozen parameters."""
  policy, other = params

  @jax.jit
  def run(policy, other, batch):
    def loss(run_name, frozen):
      name, kwargs = RUNS[run_name]
      return dpo.preference_loss(policy, batch, None, frozen, model=MODEL, loss=name,
                                 loss_kwargs=kwargs, beta_for_metrics=dpo._beta_for_metrics(kwargs))

    logits = {(i, prefix): MODEL.apply({"params": p}, batch[prefix + "inputs"])
              for i, p in enumerate((policy, other)) for prefix in ("chosen_", "rejected_")}
    return logits, {"dpo_self": loss("dpo", policy),
                    **{name: loss(name, other) for name in ("dpo", "ipo", "ipo_summed", "mixture")},
                    **{name: loss(name, None) for name in ("reference_free", "simpo", "orpo")}}

  logits, losses = jax.device_get(run(policy, other, batch))
  return {"logp": {key: reference_logps(x, batch, key[1]) for key, x in logits.items()},
          **losses}


def reference_logps(logits, batch, prefix):
  """Brute force: sum over completion targets of the float64 log-softmax of the logits (plain
  positions 0..T-1, no segment ids: the rows are right-padded). -> [B]."""
  logits = np.asarray(logits, np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.asarray(batch[prefix + "targets"])
  picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return (picked * np.asarray(batch[prefix + "loss_mask"], np.float64)).sum(-1)


def log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def test_frozen_equal_to_params_gives_log_2_and_zero_margins(out):
  value, (weight, metrics) = out["dpo_self"]
  assert float(weight) == 4.0
  assert float(value) == pytest.approx(np.log(2.0), abs=1e-6)
  for name in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
    assert float(metrics[name]) == 0.0, name


def test_dpo_equals_the_formula_on_float64_sequence_logprobs(out):
  logp_w, logp_l = out["logp"][0, "chosen_"], out["logp"][0, "rejected_"]
  ref_w, ref_l = out["logp"][1, "chosen_"], out["logp"][1, "rejected_"]
  z = BETA * ((logp_w - ref_w) - (logp_l - ref_l))
  expected = -log_sigmoid(z).mean()
  assert 0.05 < expected < 5 and np.ptp(z) > 0.1  # Neither saturated nor degenerate.
  value, (weight, metrics) = out["dpo"]
  assert float(weight) == 4.0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["logp_chosen"]), logp_w.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["logp_rejected"]), logp_l.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_chosen"]), BETA * (logp_w - ref_w).mean(),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(metrics["reward_rejected"]), BETA * (logp_l - ref_l).mean(),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(metrics["reward_margin"]), z.mean(), rtol=1e-4, atol=1e-4)
  assert float(metrics["reward_accuracy"]) == np.mean(z > 0)


def test_reference_free_losses_take_no_frozen_params(batch, out):
  logp_w, logp_l = out["logp"][0, "chosen_"], out["logp"][0, "rejected_"]
  len_w = np.asarray(batch["chosen_loss_mask"]).sum(-1)
  len_l = np.asarray(batch["rejected_loss_mask"]).sum(-1)
  assert (len_w != len_l).any()
  x_w, x_l = logp_w / len_w, logp_l / len_l  # mean token log-probs
  log_odds = lambda x: x - np.log1p(-np.exp(x))  # noqa: E731
  expected = {
      "reference_free": -log_sigmoid(BETA * (logp_w - logp_l)).mean(),
      "simpo": -log_sigmoid(2.0 * (x_w - x_l) - 0.5).mean(),
      "orpo": (-x_w - 0.3 * log_sigmoid(log_odds(x_w) - log_odds(x_l))).mean(),
  }
  for name, value in expected.items():
    loss, (weight, metrics) = out[name]
    np.testing.assert_allclose(float(loss), value, rtol=1e-4, err_msg=name)
    assert float(weight) == 4.0
    assert set(metrics) == {"loss", "logp_chosen", "logp_rejected"}, name



def test_ipo_is_fed_per_token_means(batch, out):
  """The trainer's IPO with `average_tokens` (the config's default, as in the paper) equals
  `preference.ipo` and its formula on per-token means of float64 log-probs; without it, sums."""
  len_w = np.asarray(batch["chosen_loss_mask"]).sum(-1)
  len_l = np.asarray(batch["rejected_loss_mask"]).sum(-1)
  assert (len_w != len_l).any()
  logp = out["logp"]
  mean_w, mean_l = logp[0, "chosen_"] / len_w, logp[0, "rejected_"] / len_l
  ref_w, ref_l = logp[1, "chosen_"] / len_w, logp[1, "rejected_"] / len_l
  delta = (mean_w - ref_w) - (mean_l - ref_l)
  expected = np.mean((delta - 1 / (2 * IPO_BETA)) ** 2)
  value, (weight, metrics) = out["ipo"]
  assert float(weight) == 4.0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)
  np.testing.assert_allclose(
      float(value), float(preference.ipo(mean_w, mean_l, ref_w, ref_l, beta=IPO_BETA).mean()),
      rtol=1e-4)
  # The logged implicit rewards are of the log-probs the loss is fed.
  np.testing.assert_allclose(float(metrics["reward_margin"]), IPO_BETA * delta.mean(),
                             rtol=1e-4, atol=1e-5)
  delta_summed = ((logp[0, "chosen_"] - logp[1, "chosen_"])
                  - (logp[0, "rejected_"] - logp[1, "rejected_"]))
  summed = np.mean((delta_summed - 1 / (2 * IPO_BETA)) ** 2)
  np.testing.assert_allclose(float(out["ipo_summed"][0]), summed, rtol=1e-4)
  assert abs(summed - expected) > 0.1 * expected  # The option matters on this batch.


def test_mixture_by_name_feeds_each_component(batch, out):
  """MPO's mixture through the trainer: nested kwargs reach the components and "sft" is the
  chosen response's mean token NLL."""
  len_w = np.asarray(batch["chosen_loss_mask"]).sum(-1)
  logp = out["logp"]
  r_w = logp[0, "chosen_"] - logp[1, "chosen_"]
  r_l = logp[0, "rejected_"] - logp[1, "rejected_"]
  b = MPO["kwargs"]["bco_pair"]["beta"]
  delta = np.concatenate([b * r_w, b * r_l]).mean()
  per_pair = (-0.8 * log_sigmoid(BETA * (r_w - r_l))
              + 0.2 * (-log_sigmoid(b * r_w - delta) - log_sigmoid(delta - b * r_l))
              - logp[0, "chosen_"] / len_w)
  value, (weight, metrics) = out["mixture"]
  assert float(weight) == 4.0
  np.testing.assert_allclose(float(value), per_pair.mean(), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["reward_margin"]), BETA * (r_w - r_l).mean(),
                             rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- step pairs


def _brute_step_pairs(tree, values, margin, max_pairs):
  found = []
  for node in range(tree.num_nodes):
    kids = [c for c in range(tree.num_nodes) if tree.parent[c] == node]
    if len(kids) < 2:
      continue
    best = [c for c in kids if values[c] == max(values[k] for k in kids)][0]
    worst = [c for c in kids if values[c] == min(values[k] for k in kids)][0]
    if values[best] - values[worst] >= margin:
      found.append((-(values[best] - values[worst]), node, best, worst))
  found.sort()
  return [f[1:] for f in found[:max_pairs]]


@pytest.mark.parametrize("seed", range(6))
def test_step_pairs_against_brute_force(seed):
  from tests.search.test_tree_data import make_tree
  rng = np.random.default_rng(seed)
  nodes, queue = [], [0]
  while queue and len(nodes) < 30:  # breadth first: a node's children after all earlier ones
    parent = queue.pop(0)
    for _ in range(int(rng.integers(2 if parent == 0 else 0, 4))):
      nodes.append((parent, f"s{len(nodes) + 1}", "", False))
      queue.append(len(nodes))
  inner = {p for p, *_ in nodes}
  tree = make_tree([(p, step, "" if i + 1 in inner else "answer", False)
                    for i, (p, step, _, _) in enumerate(nodes)])
  values = rng.integers(0, 4, tree.num_nodes) / 4  # ties and equal siblings
  assert dpo.step_pairs(tree, values, margin=0.0, max_pairs=100)  # the root has two children
  for margin, max_pairs in ((0.0, 100), (0.5, 100), (0.25, 3)):
    assert dpo.step_pairs(tree, values, margin=margin, max_pairs=max_pairs) == \
        _brute_step_pairs(tree, values, margin, max_pairs)


def test_tree_pairs_render_the_path_in_the_prompt(monkeypatch):
  """Root -> a (two children: a right answer and a wrong one) and b (a dead end): the pairs
  are (a: the right answer over the wrong; values 1 and 0), with the path in the prompt and
  both endings keeping the EOS, then (root: a over b; values 1/2 and 0), without the EOS."""
  from tests.search.test_tree_data import make_tree
  task = get_task("arithmetic")
  problem = task.generate(1, seed=0)[0]
  tree = make_tree([(0, "1 + 2 = 3", "", False), (0, "1 + 2 = 4", "failed", False),
                    (1, "#### 3", "answer", True), (1, "#### 5", "answer", False)])
  monkeypatch.setattr(dpo.tree_data, "grow", lambda *args, **kwargs: [tree])
  config = dpo_arith.get_config("runlocal")
  config.pairs.update({"source": "trees", "margin": 0.5, "max_per_problem": 4})
  tok = tokenizers.load("synthetic")
  pairs, generated = dpo._tree_pairs(config, None, None, task, tok, [problem])
  # The tokens growing the tree took: every node's step, once.
  assert generated == sum(len(tok.encode(s)) for s in
                          ("1 + 2 = 3", "1 + 2 = 4", "#### 3", "#### 5"))
  delimiter = tok.step_delimiter
  assert pairs == [
      {"prompt": task.prompt(problem) + "1 + 2 = 3" + delimiter, "chosen": "#### 3",
       "rejected": "#### 5", "eos": True},
      {"prompt": task.prompt(problem), "chosen": "1 + 2 = 3" + delimiter,
       "rejected": "1 + 2 = 4" + delimiter, "eos": False}]
  example = batching.preference_example(tok, pairs[1]["prompt"], pairs[1]["chosen"],
                                        pairs[1]["rejected"], eos=False)
  assert tok.eos_id not in example["chosen_targets"][example["chosen_loss_mask"] > 0]


@pytest.mark.slow
def test_step_dpo_runlocal_trains_on_step_pairs(sft_workdir, tmp_path):
  """From the shared SFT start: step trees, pairs of sibling steps (the prompts extend the
  task's prompt by the path), and a few DPO steps on them."""
  import json
  import os
  from tests.conftest import run_main
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/step_dpo_arith.py:runlocal",
                 f"--config.init_from={sft_workdir}/hf", "--config.steps=4",
                 "--config.checkpoint_every=4", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "pairs.jsonl") as f:
    pairs = [json.loads(line) for line in f]
  task = get_task("arithmetic", **dpo_arith.get_config("runlocal").task.knobs)
  prompts = {task.prompt(p) for p in task.generate(16, seed=0, split="train")}
  assert pairs and all(any(p["prompt"].startswith(q) for q in prompts) for p in pairs)
  assert all(p["chosen"] != p["rejected"] for p in pairs)
  assert any(p["prompt"] not in prompts for p in pairs)  # some pairs are past the first step
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["pairs"] == len(pairs)
  with open(tmp_path / "pairs_tokens.json") as f:  # at least the pairs' own step texts
    assert json.load(f)["generated_tokens"] >= len(pairs)


def test_correction_pairs_pair_second_attempts_after_each_first(monkeypatch):
  """Scripted attempts: the first attempts of each problem, then second attempts keyed by the
  prompt; pairs are right vs wrong second attempts after the same first attempt, in the
  correction prompt, with the first attempt's correctness recorded."""
  task = get_task("arithmetic")
  problems = task.generate(2, seed=0)
  right = {p.question: p.solution for p in problems}
  wrong = {p.question: p.solution.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}"
           for p in problems}
  config = dpo_arith.get_config("runlocal")
  config.pairs.update({"source": "corrections", "first_samples": 2, "num_samples": 3,
                       "max_per_problem": 1})
  cue = config.pairs.cue

  def fake(model, params, tokenizer, prompts, rng, sampling, **kwargs):
    out = []
    for prompt in prompts:
      question = prompt.split("\n")[0]
      if cue not in prompt:  # first attempts: one right, one wrong
        out.append([right[question], wrong[question]])
      elif prompt.startswith(question + "\n" + right[question]):  # kept right, or broken
        out.append([right[question], right[question], wrong[question]])
      else:  # after a wrong first attempt: all wrong for problem 0, corrected for problem 1
        fixed = question == problems[1].question
        out.append([wrong[question], right[question] if fixed else wrong[question],
                    wrong[question]])
    return out

  sampled = []  # every attempt, first and second: what the token count adds up
  def recorded(*args, **kwargs):
    out = fake(*args, **kwargs)
    sampled.extend(out)
    return out

  monkeypatch.setattr(dpo, "generate_texts", recorded)
  tok = tokenizers.load("synthetic")
  pairs, generated = dpo._correction_pairs(config, None, None, task, tok, problems)
  assert generated == sum(len(tok.encode(t)) for row in sampled for t in row)
  prompt = lambda p, first: dpo.correction_prompt(task.prompt(p), first, cue)  # noqa: E731
  assert pairs == [
      {"prompt": prompt(problems[0], right[problems[0].question]),
       "chosen": right[problems[0].question], "rejected": wrong[problems[0].question],
       "first_right": True},
      {"prompt": prompt(problems[1], right[problems[1].question]),
       "chosen": right[problems[1].question], "rejected": wrong[problems[1].question],
       "first_right": True},
      {"prompt": prompt(problems[1], wrong[problems[1].question]),
       "chosen": right[problems[1].question], "rejected": wrong[problems[1].question],
       "first_right": False}]
