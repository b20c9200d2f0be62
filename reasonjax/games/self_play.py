"""Self-play episodes of one text policy playing both roles, and SPIRAL's role-conditioned
advantages (Liu et al. 2025, "SPIRAL: Self-Play on Zero-Sum Games Incentivizes Reasoning via
Multi-Agent Multi-Turn Reinforcement Learning").

A policy is a batched callable, `policy(observations: list[str]) -> list[str]`, one reply per
prompt: the jitted sampler behind it sees every live episode's prompt at once (`play_batch`).
A reply that names no legal move (`Game.parse_action` gives None) ends the episode at once, the
mover scored by the `invalid` rule (`INVALID_RETURNS`), as SPIRAL does, so the policy learns the
answer format from the game reward alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reasonjax.games import base

Policy = Callable[[list[str]], list[str]]
# An opponent that reads the state: `opponent(state, rng) -> action` (a legal one).
Opponent = Callable[[Any, np.random.Generator], str]

# Returns (to the player who made the invalid move, to the other) by rule name. "loss" keeps the
# game zero-sum; "forfeit" only punishes the offender (TextArena's scoring), so the opponent
# gains nothing from a game it did not win.
INVALID_RETURNS = {"loss": (-1.0, 1.0), "forfeit": (-1.0, 0.0)}


@dataclasses.dataclass(frozen=True)
class Turn:
  """One move: `player` saw `observation`, replied `reply`, which named `action` (None: the
  reply was invalid, and this is the episode's last turn)."""

  player: int
  observation: str
  reply: str
  action: str | None


@dataclasses.dataclass(frozen=True)
class Episode:
  """One game of `game` (its name). `returns[p]` is player p's return; `invalid` the player
  whose reply named no legal move, if any; `truncated` when `max_turns` ended it (returns 0)."""

  game: str
  turns: tuple[Turn, ...]
  returns: tuple[float, float]
  invalid: int | None = None
  truncated: bool = False
  final_state: Any = None


def _invalid_returns(player: int, invalid: str) -> tuple[float, float]:
  if invalid not in INVALID_RETURNS:
    raise ValueError(f"unknown invalid-move rule {invalid!r}; valid: {sorted(INVALID_RETURNS)}")
  mine, other = INVALID_RETURNS[invalid]
  return (mine, other) if player == 0 else (other, mine)


def _play(game: base.Game, policy: Policy, rngs: Sequence[np.random.Generator], *,
          max_turns: int | None, invalid: str, opponent: Opponent | None = None,
          seat: int = 0) -> list[Episode]:
  """Plays len(rngs) episodes in lock step: one `policy` call per step over the live ones
  where the policy moves (every one in self-play; those where `seat` is to move when
  `opponent` plays the other seat, drawing from the episode's rng after the deal)."""
  _invalid_returns(0, invalid)  # Fail on a bad rule before any policy call.
  states = [game.initial_state(rng) for rng in rngs]
  turns: list[list[Turn]] = [[] for _ in rngs]
  done: list[Episode | None] = [None] * len(rngs)

  def finish(i, returns, invalid_player=None, truncated=False):
    done[i] = Episode(game.name, tuple(turns[i]), tuple(float(r) for r in returns),
                      invalid_player, truncated, states[i])

  live = []
  for i, state in enumerate(states):
    if game.is_terminal(state):
      finish(i, game.returns(state))
    else:
      live.append(i)
  while live:
    players = [game.current_player(states[i]) for i in live]
    prompts = [game.observation(states[i], p) for i, p in zip(live, players)]
    asked = [k for k, p in enumerate(players) if opponent is None or p == seat]
    replies = list(policy([prompts[k] for k in asked])) if asked else []
    if len(replies) != len(asked):
      raise ValueError(f"the policy gave {len(replies)} replies to {len(asked)} prompts.")
    replies = dict(zip(asked, replies))
    for k, i in enumerate(live):
      if k not in replies:  # The opponent's move, written as a reply that names it.
        replies[k] = f"[{opponent(states[i], rngs[i])}]"
    still = []
    for k, (i, player, prompt) in enumerate(zip(live, players, prompts)):
      reply = replies[k]
      action = game.parse_action(states[i], reply)
      turns[i].append(Turn(player, prompt, reply, action))
      if action is None:
        finish(i, _invalid_returns(player, invalid), invalid_player=player)
        continue
      states[i] = game.apply(states[i], action)
      if game.is_terminal(states[i]):
        finish(i, game.returns(states[i]))
      elif max_turns is not None and len(turns[i]) >= max_turns:
        finish(i, (0.0, 0.0), truncated=True)
      else:
        still.append(i)
    live = still
  return done


def play(game: base.Game, policy: Policy, rng: np.random.Generator, *,
         max_turns: int | None = None, invalid: str = "loss") -> Episode:
  """One self-play episode, `policy` playing every role (called with one prompt per turn).

  Args:
    game: the game.
    policy: `policy(prompts) -> replies`, batched text in, text out.
    rng: draws the game's chance events (Kuhn poker's deal).
    max_turns: ends an unfinished episode after this many turns with returns (0, 0).
    invalid: how a reply without a legal move is scored, a key of `INVALID_RETURNS`:
      "loss" (default, SPIRAL): -1 to its player, +1 to the other; "forfeit": -1 and 0.

  Returns:
    The `Episode`.
  """
  return _play(game, policy, [rng], max_turns=max_turns, invalid=invalid)[0]


def play_batch(game: base.Game, policy: Policy, seeds: Sequence[int], *,
               max_turns: int | None = None, invalid: str = "loss") -> list[Episode]:
  """len(seeds) episodes in lock step: at each step `policy` gets the prompts of all episodes
  still running, in seed order. Episode i equals `play(game, policy,
  np.random.default_rng(seeds[i]), ...)` for a policy that answers each prompt on its own.
  Arguments as `play`."""
  rngs = [np.random.default_rng(s) for s in seeds]
  return _play(game, policy, rngs, max_turns=max_turns, invalid=invalid)


def random_opponent(game: base.Game) -> Opponent:
  """An opponent that takes a uniformly random legal action."""
  return lambda state, rng: str(rng.choice(game.legal_actions(state)))


def play_against(game: base.Game, policy: Policy, opponent: Opponent, seeds: Sequence[int], *,
                 seat: int, max_turns: int | None = None, invalid: str = "loss"
                 ) -> list[Episode]:
  """len(seeds) episodes of `policy` in seat `seat` against `opponent` in the other, in lock
  step: at each step one `policy` call for the episodes where it is to move. Episode i draws
  its deal, then the opponent's moves, from np.random.default_rng(seeds[i]). Other arguments
  as `play`; an invalid reply is scored by `invalid` whoever made it."""
  if seat not in (0, 1):
    raise ValueError(f"seat={seat}; expected 0 or 1")
  rngs = [np.random.default_rng(s) for s in seeds]
  return _play(game, policy, rngs, max_turns=max_turns, invalid=invalid, opponent=opponent,
               seat=seat)


def role_advantages(episodes: Sequence[Episode], baselines: dict[tuple[str, int], float], *,
                    alpha: float) -> tuple[list[list[float]], dict[tuple[str, int], float]]:
  """Role-conditioned Advantage Estimation (SPIRAL, Algorithm 1): per-turn advantages.

  One baseline per (game G, role p), an exponential moving average of p's returns in G:
    b_{G,p} <- alpha * b_{G,p} + (1 - alpha) * mean_{episodes of G in the batch} R_p,
    A = R_p - b_{G,p}, for every turn role p played in an episode of G.
  Order: each (G, p) present in the batch is updated ONCE with the batch mean of its returns
  (every episode of G counts for both roles, also one where a role never moved), THEN all the
  batch's advantages use the updated baseline. Keys absent from `baselines` start at 0, the
  value of a symmetric zero-sum game. Pure: `baselines` is not modified.

  Args:
    episodes: the batch.
    baselines: b_{G,p} by (game name, role) before this batch.
    alpha: the EMA decay in [0, 1] (SPIRAL uses 0.95); 0 makes b the batch mean.

  Returns:
    (advantages, new_baselines): `advantages[i][t]` for turn t of episode i (its player's
    advantage), and the updated copy of `baselines`.
  """
  returns: dict[tuple[str, int], list[float]] = {}
  for ep in episodes:
    for p, r in enumerate(ep.returns):
      returns.setdefault((ep.game, p), []).append(r)
  new = dict(baselines)
  for key, rs in returns.items():
    new[key] = alpha * baselines.get(key, 0.0) + (1.0 - alpha) * float(np.mean(rs))
  advantages = [[ep.returns[t.player] - new[(ep.game, t.player)] for t in ep.turns]
                for ep in episodes]
  return advantages, new
