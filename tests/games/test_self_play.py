"""Self-play with scripted text policies: invalid replies lose, random legal play always ends
zero-sum and replays through the env, lock-step batches equal episodes played alone, and
role-conditioned advantages against a brute-force loop."""

import copy
import functools
import re
import zlib

import numpy as np
import pytest

from reasonjax import games
from reasonjax.games import self_play

GAME_NAMES = sorted(games.GAMES)


def _legal_in(prompt: str) -> list[str]:
  """The moves a prompt lists: a policy sees only text."""
  line = re.search(r"^Legal moves: (.*)\.$", prompt, re.M).group(1)
  return re.findall(r"\[([^\]]*)\]", line)


def garbage(prompts):
  return ["I am not sure what to do here." for _ in prompts]


def random_legal(seed):
  rng = np.random.default_rng(seed)

  def policy(prompts):
    return [f"Let me think. [not a move] I choose [{rng.choice(_legal_in(p))}]" for p in prompts]
  return policy


def hashed(prompts):
  """Deterministic per prompt: a legal move picked by a hash, or, now and then, garbage."""
  out = []
  for p in prompts:
    h = zlib.crc32(p.encode())
    legal = _legal_in(p)
    out.append("[pass]" if h % 11 == 0 else f"so [{legal[h % len(legal)]}]")
  return out


def _replay(game, episode, seed):
  """Re-runs the episode's actions through the env from the same deal."""
  state = game.initial_state(np.random.default_rng(seed))
  for turn in episode.turns:
    assert turn.player == game.current_player(state)
    assert turn.observation == game.observation(state, turn.player)
    if turn.action is None:
      break
    assert turn.action in game.legal_actions(state)
    state = game.apply(state, turn.action)
  return state


@pytest.mark.parametrize("name", GAME_NAMES)
def test_a_reply_without_a_move_loses_at_once(name):
  game = games.make(name)
  ep = self_play.play(game, garbage, np.random.default_rng(0))
  assert ep.invalid == 0 and len(ep.turns) == 1 and ep.turns[0].action is None
  assert ep.returns == (-1.0, 1.0) and ep.game == name and not ep.truncated
  ep = self_play.play(game, garbage, np.random.default_rng(0), invalid="forfeit")
  assert ep.returns == (-1.0, 0.0)
  with pytest.raises(ValueError, match="forfeit"):
    self_play.play(game, garbage, np.random.default_rng(0), invalid="draw")


@pytest.mark.parametrize("name", GAME_NAMES)
def test_the_second_player_can_be_the_offender(name):
  game = games.make(name)
  legal = random_legal(0)

  def policy(prompts):
    return legal(prompts) if "You are Player 0" in prompts[0] else garbage(prompts)
  ep = self_play.play(game, policy, np.random.default_rng(1))
  assert ep.invalid == 1 and [t.player for t in ep.turns] == [0, 1]
  assert ep.returns == (1.0, -1.0)


@pytest.mark.parametrize("name", GAME_NAMES)
def test_random_legal_play_ends_zero_sum_and_replays(name):
  game = games.make(name)
  policy = random_legal(0)
  for seed in range(30):
    ep = self_play.play(game, policy, np.random.default_rng(seed), max_turns=20)
    assert ep.invalid is None and not ep.truncated
    final = _replay(game, ep, seed)
    assert game.is_terminal(final) and final == ep.final_state
    assert ep.returns == game.returns(final) and sum(ep.returns) == 0


@pytest.mark.parametrize("name", GAME_NAMES)
def test_play_batch_equals_playing_each_episode_alone(name):
  game = games.make(name)
  seeds = list(range(40))
  sizes = []

  def recording(prompts):
    sizes.append(len(prompts))
    return hashed(prompts)
  batch = self_play.play_batch(game, recording, seeds, max_turns=20)
  alone = [self_play.play(game, hashed, np.random.default_rng(s), max_turns=20) for s in seeds]
  assert batch == alone
  if name == "kuhn_poker":  # TicTacToe has no chance: its 40 episodes are one game.
    assert {None, 1} <= {ep.invalid for ep in batch}  # The hash policy also errs.
    assert len({len(ep.turns) for ep in batch}) > 1  # Episodes end at different steps.
  # One call per lock step, over the live episodes only.
  assert sizes[0] == len(seeds) and len(sizes) == max(len(ep.turns) for ep in batch)
  assert sizes == [sum(len(ep.turns) > t for ep in batch) for t in range(len(sizes))]


def test_max_turns_truncates_with_zero_returns():
  game = games.make("tictactoe")
  ep = self_play.play(game, random_legal(0), np.random.default_rng(0), max_turns=3)
  assert ep.truncated and len(ep.turns) == 3 and ep.returns == (0.0, 0.0)
  assert not game.is_terminal(ep.final_state)


def test_a_policy_must_answer_every_prompt():
  with pytest.raises(ValueError, match="0 replies to 3 prompts"):
    self_play.play_batch(games.make("tictactoe"), lambda prompts: [], [0, 1, 2])


def _episode(game, players, returns):
  turns = tuple(self_play.Turn(p, "obs", "reply", "a") for p in players)
  return self_play.Episode(game, turns, returns)


def _brute_force_rae(episodes, baselines, alpha):
  """The formula written out: per (game, role), loop over the batch for the mean, update the
  EMA once, then score every turn of that role."""
  new = dict(baselines)
  for g in {ep.game for ep in episodes}:
    for p in (0, 1):
      total, n = 0.0, 0
      for ep in episodes:
        if ep.game == g:
          total, n = total + ep.returns[p], n + 1
      new[(g, p)] = alpha * baselines.get((g, p), 0.0) + (1 - alpha) * total / n
  adv = []
  for ep in episodes:
    adv.append([])
    for turn in ep.turns:
      adv[-1].append(ep.returns[turn.player] - new[(ep.game, turn.player)])
  return adv, new


def test_role_advantages_match_a_brute_force_loop():
  rng = np.random.default_rng(0)
  episodes = []
  for _ in range(25):
    game = str(rng.choice(["tictactoe", "kuhn_poker"]))
    r = float(rng.choice([-2, -1, 0, 1, 2]))
    n = int(rng.integers(1, 6))
    episodes.append(_episode(game, [t % 2 for t in range(n)], (r, -r)))
  baselines = {("tictactoe", 0): 0.3, ("kuhn_poker", 1): -0.2, ("negotiation", 0): 0.7}
  before = copy.deepcopy(baselines)
  adv, new = self_play.role_advantages(episodes, baselines, alpha=0.9)
  ref_adv, ref_new = _brute_force_rae(episodes, baselines, 0.9)
  assert baselines == before  # Pure.
  assert new.keys() == ref_new.keys() and new[("negotiation", 0)] == 0.7  # Absent: kept.
  np.testing.assert_allclose([new[k] for k in sorted(new)], [ref_new[k] for k in sorted(new)])
  assert [len(a) for a in adv] == [len(ep.turns) for ep in episodes]
  np.testing.assert_allclose(np.concatenate(adv), np.concatenate(ref_adv))


def test_role_advantages_by_hand():
  # One game; player 1 never moved in the second episode but its return still counts.
  episodes = [_episode("g", [0, 1, 0], (1.0, -1.0)), _episode("g", [0], (-1.0, 1.0)),
              _episode("g", [0, 1], (1.0, -1.0))]
  adv, new = self_play.role_advantages(episodes, {("g", 0): 0.5}, alpha=0.9)
  b0 = 0.9 * 0.5 + 0.1 * (1 / 3)  # 0.48333...
  b1 = 0.9 * 0.0 + 0.1 * (-1 / 3)
  assert new == pytest.approx({("g", 0): b0, ("g", 1): b1})
  assert adv[0] == pytest.approx([1 - b0, -1 - b1, 1 - b0])
  assert adv[1] == pytest.approx([-1 - b0])
  assert adv[2] == pytest.approx([1 - b0, -1 - b1])
  # alpha = 0: the baseline is the batch mean, so each role's episode advantages sum to 0.
  _, new = self_play.role_advantages(episodes, {("g", 0): 0.5}, alpha=0.0)
  assert new == pytest.approx({("g", 0): 1 / 3, ("g", 1): -1 / 3})


def _exact(game, state, seat):
  """P(win), P(draw), P(loss) of `seat` when both players move uniformly at random."""
  @functools.cache
  def value(s):
    if game.is_terminal(s):
      r = game.returns(s)
      mine, other = r[seat], r[1 - seat]
      return np.array([mine > other, mine == other, mine < other], np.float64)
    return np.mean([value(game.apply(s, a)) for a in game.legal_actions(s)], axis=0)
  return value(state)


@pytest.mark.parametrize("seat", [0, 1])
def test_uniform_play_against_the_random_opponent_has_the_exact_outcome_probabilities(seat):
  game = games.make("tictactoe")
  n = 600
  episodes = self_play.play_against(game, random_legal(seat), self_play.random_opponent(game),
                                    list(range(n)), seat=seat)
  r = np.asarray([ep.returns for ep in episodes])
  rates = {"win": np.mean(r[:, seat] > r[:, 1 - seat]), "draw": np.mean(r[:, 0] == r[:, 1]),
           "loss": np.mean(r[:, seat] < r[:, 1 - seat])}
  for k, p in zip(("win", "draw", "loss"), _exact(game, game.initial_state(None), seat)):
    assert rates[k] == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n)), k
  # Every episode replays through the env, the policy in its seat and the opponent legal.
  for ep in episodes:
    assert ep.invalid is None
    state = game.initial_state(None)
    for turn in ep.turns:
      assert turn.observation == game.observation(state, turn.player)
      assert turn.action in game.legal_actions(state)
      assert turn.reply.startswith("Let me think") == (turn.player == seat)
      state = game.apply(state, turn.action)
    assert game.is_terminal(state) and ep.returns == game.returns(state)


def test_play_against_names_a_bad_seat():
  game = games.make("tictactoe")
  with pytest.raises(ValueError, match="seat=2; expected 0 or 1"):
    self_play.play_against(game, garbage, self_play.random_opponent(game), [0], seat=2)
