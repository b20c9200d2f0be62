"""The SPIRAL self-play trainer's parts: training rows against the episodes played (their text,
the trainer's log-probs, brute-force RAE advantages and statistics), the batch source's exact
resume, play against a random opponent against exact outcome probabilities, the config checks,
and a short runlocal run."""

import collections
import functools
import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import spiral_games
from reasonjax import games, models
from reasonjax.data import tokenizers
from reasonjax.games import kuhn_poker, tictactoe
from reasonjax.metrics import read_jsonl
from reasonjax.programs import grpo, self_play as program
from tests.conftest import assert_same_batches, random_params, run_main

CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MODEL = models.Model(CFG)
TOK = tokenizers.load("synthetic")
LENIENT = ("lenient_tictactoe", "lenient_kuhn")


def _lenient(base, name):
  """`base` whose reply names a move by its hash, and is invalid for one hash in five: a random
  model's replies almost never hold a bracketed move, and the rows need episodes of many turns
  and of unequal lengths."""

  def parse_action(self, state, text):
    legal = self.legal_actions(state)
    h = zlib.crc32(text.encode())
    return None if h % 5 == 0 else legal[h % len(legal)]

  return type(name, (base,), {"name": name, "parse_action": parse_action})


@pytest.fixture
def lenient(monkeypatch):
  monkeypatch.setitem(games.GAMES, LENIENT[0], _lenient(tictactoe.TicTacToe, LENIENT[0]))
  monkeypatch.setitem(games.GAMES, LENIENT[1], _lenient(kuhn_poker.KuhnPoker, LENIENT[1]))


def _config(**self_play):
  config = spiral_games.get_config("runlocal")
  config.self_play.update({"games": LENIENT, "episodes": 4, "max_new_tokens": 8,
                           "batch_rows": 8, "rae_alpha": 0.5} | self_play)
  return config


def _text(row_ids, length) -> str:
  return TOK.decode(np.asarray(row_ids[:length]).tolist())


def _rows(batches):
  """(prompt text, reply text, advantage, reply tokens) of every real row."""
  out = []
  for b in batches:
    for i in range(len(b["loss_mask"])):
      n = int(b["loss_mask"][i].sum())
      if not n:
        continue
      length = b["prompt_lengths"][i]
      prompt = b["prompt_inputs"][i]
      assert prompt[0] == TOK.bos_id and np.all(prompt[length:] == TOK.pad_id)
      completion = b["completion_inputs"][i, :n]
      reply = completion[:-1] if completion[-1] == TOK.eos_id else completion
      out.append((_text(prompt[1:], length - 1), _text(reply, len(reply)),
                  float(b["advantages"][i]), n))
  return out


def test_rows_are_the_turns_with_the_samplers_logprobs_and_rae_advantages(lenient):
  config = _config()
  params = random_params(CFG, 0)
  source = program.SelfPlay(config, MODEL, TOK)
  prior = {(LENIENT[0], 0): 0.3, (LENIENT[1], 1): -0.2}  # earlier baselines, not all 0
  source.baselines = dict(prior)
  batches = [source.next_batch(params)] + source.pending
  episodes = source.last_episodes
  assert [ep.game for ep in episodes] == [LENIENT[0]] * 4 + [LENIENT[1]] * 4
  lengths = [len(ep.turns) for ep in episodes]
  assert max(lengths) >= 3 and len(set(lengths)) > 1  # many turns, unequal episodes
  turns = sum(lengths)
  assert len(batches) == -(-turns // 8)
  for b in batches:
    assert b["prompt_inputs"].shape == (8, 512) and b["completion_inputs"].shape == (8, 8)
    assert np.all(b["advantages"][b["loss_mask"].sum(1) == 0] == 0)

  # RAE by brute force: each (game, role) baseline moved once towards its batch mean return.
  alpha = config.self_play.rae_alpha
  baselines = {}
  for game in LENIENT:
    for p in (0, 1):
      returns = [ep.returns[p] for ep in episodes if ep.game == game]
      baselines[(game, p)] = alpha * prior.get((game, p), 0.0) + (1 - alpha) * np.mean(returns)
  assert source.baselines == pytest.approx(baselines)
  want = collections.defaultdict(list)
  for ep in episodes:
    for turn in ep.turns:
      want[(turn.observation + "\n", turn.reply)].append(
          ep.returns[turn.player] - baselines[(ep.game, turn.player)])
  rows = _rows(batches)
  assert len(rows) == turns
  got = collections.defaultdict(list)
  for prompt, reply, advantage, _ in rows:
    got[(prompt, reply)].append(advantage)
  assert got.keys() == want.keys()
  for key in want:
    assert sorted(got[key]) == pytest.approx(sorted(want[key]), abs=1e-6), key

  # The statistics riding in the batch, from the episodes.
  first = batches[0]
  for game in LENIENT:
    eps = [ep for ep in episodes if ep.game == game]
    assert first[f"rollout_{game}_p0_win"][0] == pytest.approx(
        np.mean([ep.returns[0] > ep.returns[1] for ep in eps]))
    assert first[f"rollout_{game}_invalid"][0] == pytest.approx(
        np.mean([ep.invalid is not None for ep in eps]))
    assert first[f"rollout_{game}_turns"][0] == pytest.approx(
        np.mean([len(ep.turns) for ep in eps]))
    assert first[f"rollout_{game}_baseline_p1"][0] == pytest.approx(baselines[(game, 1)])
  assert first["rollout_turns"][0] == turns

  # The sampler's log-probs are those the trainer computes for the same tokens.
  loss = functools.partial(grpo.grpo_loss, model=MODEL, temperature=1.0, aggregation="grpo",
                           max_len=8, loss_kwargs=grpo.policy_loss_kwargs(config),
                           share_prompt=False)
  for b in batches:
    _, (weight, metrics) = loss(params, {k: jnp.asarray(v) for k, v in b.items()}, None, None)
    assert float(metrics["tokens"]) == b["loss_mask"].sum()
    assert float(weight) == np.sum(b["loss_mask"].sum(1) > 0)  # padding rows left out
    assert float(metrics["logprob_gap_max"]) < 2e-4


def test_reply_tokens_per_game_are_the_rows_completion_lengths(lenient):
  config = _config(games=(LENIENT[1],), episodes=3)
  source = program.SelfPlay(config, MODEL, TOK)
  batches = [source.next_batch(random_params(CFG, 1))] + source.pending
  rows = _rows(batches)
  assert batches[0][f"rollout_{LENIENT[1]}_reply_tokens"][0] == pytest.approx(
      np.mean([n for *_, n in rows]))


def test_self_play_resumes_exactly(lenient):
  config = _config()
  params = random_params(CFG, 0)
  source = program.SelfPlay(config, MODEL, TOK)
  source.next_batch(params)
  left = len(source.pending)
  state = json.loads(json.dumps(source.get_state()))  # what a checkpoint keeps
  resumed = program.SelfPlay(config, MODEL, TOK)
  resumed.set_state(state)
  assert resumed.baselines == source.baselines and resumed.iteration == 1
  for _ in range(left + 2):  # the rest of iteration 0, then iteration 1 played afresh
    assert_same_batches(source.next_batch(params), resumed.next_batch(params))
  assert source.iteration == resumed.iteration == 2
  assert source.baselines == resumed.baselines


def test_a_longer_observation_than_the_prompt_width_is_refused():
  sampling = program.sampling_config(_config().self_play, TOK)
  policy = program.TextPolicy(MODEL, random_params(CFG, 0), TOK, sampling, width=100, rows=2,
                              rng=None, name="tictactoe")
  observation = games.make("tictactoe").observation(tictactoe.State(), 0)
  with pytest.raises(ValueError, match=r"tictactoe: an observation takes 4\d\d tokens .* "
                                       r"config.self_play.prompt_width=100"):
    policy([observation])


def test_turn_rows_refuse_calls_that_are_not_the_turns():
  game = games.make("tictactoe")
  calls = []
  rng = np.random.default_rng(0)

  def policy(observations):  # a random legal move, or now and then none
    out = [f"[{rng.choice(game.actions)}]" if rng.random() > 0.15 else "pass"
           for o in observations]
    calls.append({"observations": list(observations), "replies": out})
    return out

  episodes = games.play_batch(game, policy, [0, 1, 2, 3])
  lengths = [len(e.turns) for e in episodes]
  assert len(set(lengths)) > 1
  # Turn t of episode i: call t's row among the episodes still running at t, after the calls
  # before t.
  want = [sum(sum(n > u for n in lengths) for u in range(t)) + sum(n > t for n in lengths[:i])
          for i, n in enumerate(lengths) for t in range(n)]
  assert program.turn_rows(episodes, calls) == want
  calls[0]["replies"] = calls[0]["replies"][::-1]
  calls[0]["replies"][0] = "other"
  with pytest.raises(RuntimeError, match="is not row 0 of policy call 0"):
    program.turn_rows(episodes, calls)


@pytest.mark.parametrize("name", ["tictactoe", "kuhn_poker"])
@pytest.mark.parametrize("seat", [0, 1])
def test_a_policy_without_moves_loses_every_game_by_invalid_moves(name, seat):
  game = games.make(name)
  episodes = games.play_against(game, lambda p: ["no idea"] * len(p),
                                games.random_opponent(game), list(range(20)), seat=seat)
  rates = program.outcome_rates(episodes, seat)
  assert rates == {"win": 0.0, "draw": 0.0, "loss": 1.0, "invalid": 1.0, "return": -1.0}
  for ep in episodes:  # the opponent moves first in seat 1, then the policy fails at once
    assert [t.player for t in ep.turns] == ([0] if seat == 0 else [0, 1]) and ep.invalid == seat


def test_evaluator_reports_every_game_and_seat():
  config = spiral_games.get_config("runlocal")
  config.self_play.max_new_tokens = 8
  config.eval.episodes = 3
  evaluate = program.evaluator(config, MODEL, TOK)
  metrics = evaluate(random_params(CFG, 0), jax.random.key(0))
  for name in config.self_play.games:
    for prefix in (f"{name}_seat0", f"{name}_seat1", name):
      rates = [metrics[f"{prefix}_{k}"] for k in ("win", "draw", "loss")]
      assert sum(rates) == pytest.approx(1.0)
      assert 0 <= metrics[f"{prefix}_invalid"] <= 1
    assert metrics[f"{name}_win"] == pytest.approx(
        (metrics[f"{name}_seat0_win"] + metrics[f"{name}_seat1_win"]) / 2)
  config.eval.episodes = 0
  assert program.evaluator(config, MODEL, TOK) is None


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("update,message", [
    ({"self_play.games": ("chess",)}, r"config.self_play.games=\('chess',\)"),
    ({"self_play.games": ()}, r"config.self_play.games=\(\)"),
    ({"self_play.invalid": "draw"}, "config.self_play.invalid='draw'"),
    ({"self_play.rae_alpha": 1.5}, "config.self_play.rae_alpha=1.5"),
    ({"self_play.temperature": 0.0}, "config.self_play.temperature=0.0"),
    ({"self_play.episodes": 0}, "config.self_play.episodes=0"),
    ({"self_play.batch_rows": 0}, "config.self_play.batch_rows=0"),
    ({"self_play.prompt_width": 0}, "config.self_play.prompt_width=0"),
    ({"aggregation": "dr_grpo"}, "config.aggregation='dr_grpo'.*padding rows"),
    ({"policy_loss.surrogate": "x"}, "config.policy_loss: .*surrogate"),
    ({"epochs": 0}, "config.epochs=0"),
    ({"eval.episodes": -1}, "config.eval.episodes=-1"),
])
def test_check_config_rejects_bad_fields(update, message):
  from reasonjax import programs
  config = spiral_games.get_config("runlocal")
  config.update_from_flattened_dict(update)
  with pytest.raises(ValueError, match=message):
    programs.check_config(config)


def test_the_configs_pass_their_checks():
  from reasonjax import programs
  for arg in (None, "runlocal"):
    programs.check_config(spiral_games.get_config(arg))


# ----------------------------------------------------------------------------- runlocal


@pytest.mark.slow
def test_spiral_runlocal_logs_per_game_metrics_and_evaluates_against_random(sft_workdir,
                                                                             tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = run_main("--config=configs/spiral_games.py:runlocal",
                 f"--config.init_from={sft_workdir}/hf", workdir=tmp_path, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  config = spiral_games.get_config("runlocal")
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  train = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, config.steps + 1))
  for name in config.self_play.games:
    for k in ("p0_win", "draw", "invalid", "turns", "reply_tokens", "baseline_p0",
              "baseline_p1"):
      assert all(f"rollout_{name}_{k}" in r for r in train), (name, k)
    assert all(0 <= r[f"rollout_{name}_invalid"] <= 1 for r in train)
  assert all(r["logprob_gap_max"] < 1e-3 for r in train)
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals[-1]["step"] == config.steps
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  assert results["steps"] == config.steps and results["iterations"] >= 1
  for name in config.self_play.games:
    for part in (results["start"], results["final"]):
      for seat in (0, 1):
        rates = [part[f"{name}_seat{seat}_{k}"] for k in ("win", "draw", "loss")]
        assert sum(rates) == pytest.approx(1.0)
    assert results[f"final_{name}_win"] == evals[-1][f"eval/{name}_win"]
    assert f"{name}_p0" in results["baselines"]
  assert os.path.isfile(os.path.join(tmp_path, "hf", "model.safetensors"))
