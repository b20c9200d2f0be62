"""Two-player zero-sum text games for SPIRAL-style self-play (Liu et al. 2025):
  base        the `Game` interface over immutable states, and the bracketed-move reply parser
  tictactoe   TicTacToe, moves "[0]".."[8]"
  kuhn_poker  Kuhn poker (J < Q < K, ante 1, bet 1), moves "[check]", "[bet]", "[call]", "[fold]"
  self_play   episodes of one policy playing both roles (`play`, `play_batch`) or against an
              opponent that reads the state (`play_against`, `random_opponent`), and
              role-conditioned advantages (`role_advantages`)
"""

from reasonjax.games import base, kuhn_poker, self_play, tictactoe
from reasonjax.games.base import Game
from reasonjax.games.kuhn_poker import KuhnPoker
from reasonjax.games.self_play import (INVALID_RETURNS, Episode, Opponent, Policy, Turn, play,
                                       play_against, play_batch, random_opponent,
                                       role_advantages)
from reasonjax.games.tictactoe import TicTacToe

GAMES: dict[str, type[Game]] = {"tictactoe": TicTacToe, "kuhn_poker": KuhnPoker}


def make(name: str) -> Game:
  """A new game by name; ValueError naming the valid ones for an unknown name."""
  if name not in GAMES:
    raise ValueError(f"unknown game {name!r}; valid: {sorted(GAMES)}")
  return GAMES[name]()


__all__ = [
    "GAMES", "INVALID_RETURNS", "Episode", "Game", "KuhnPoker", "Opponent", "Policy", "TicTacToe",
    "Turn", "base", "kuhn_poker", "make", "play", "play_against", "play_batch", "random_opponent",
    "role_advantages", "self_play", "tictactoe",
]
