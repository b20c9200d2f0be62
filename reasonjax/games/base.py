"""The interface of a two-player zero-sum text game, and the reply parser every game shares.

A `Game` holds no episode data: it is a bundle of pure functions over immutable states (frozen
dataclasses of tuples), so an episode can be replayed from its actions and a state can key a
dict (minimax, counting positions). Chance (Kuhn poker's deal) happens only in `initial_state`.

Replies are free text; the move is the LAST bracketed token that names one of the game's
actions, e.g. "... so I take the centre. [4]" -> "4". Case and inner whitespace are ignored
("[ Bet ]" -> "bet"). Brackets that name no action ("[X]" in a drawn board) are skipped, so
reasoning text can quote the board; a named action that is illegal in the state counts as the
answer and makes the reply invalid (None), as a hedge like "[1] or [2]" should not pass.
"""

from __future__ import annotations

import abc
import re
from typing import Any

# A bracketed token without nested brackets or line breaks: "[4]", "[ bet ]".
_BRACKETED = re.compile(r"\[([^\[\]\n]*)\]")

State = Any  # Each game's own frozen dataclass.


def bracketed_tokens(text: str) -> list[str]:
  """The contents of every `[...]` in `text`, in order, stripped and lower-cased."""
  return [m.strip().lower() for m in _BRACKETED.findall(text)]


class Game(abc.ABC):
  """A two-player zero-sum game over immutable states; players are 0 and 1.

  Subclasses set `name` and `actions` (every action the game can ever take, as lower-case
  strings) and implement the abstract methods.
  """

  name: str = ""
  num_players: int = 2
  actions: tuple[str, ...] = ()

  @abc.abstractmethod
  def initial_state(self, rng: Any) -> State:
    """The state before the first move; `rng` (np.random.Generator) draws any chance events."""

  @abc.abstractmethod
  def current_player(self, state: State) -> int:
    """The player to move (0 or 1); undefined on a terminal state."""

  @abc.abstractmethod
  def legal_actions(self, state: State) -> list[str]:
    """The actions the current player may take; [] on a terminal state."""

  @abc.abstractmethod
  def apply(self, state: State, action: str) -> State:
    """The state after the current player takes `action`; ValueError if it is illegal."""

  @abc.abstractmethod
  def is_terminal(self, state: State) -> bool:
    """Whether the game is over."""

  @abc.abstractmethod
  def returns(self, state: State) -> tuple[float, float]:
    """(R_0, R_1) of a terminal state, R_0 + R_1 = 0; ValueError before the end."""

  @abc.abstractmethod
  def observation(self, state: State, player: int) -> str:
    """The prompt `player` sees: rules, what it may see of the history, legal moves and the
    answer format."""

  def parse_action(self, state: State, text: str) -> str | None:
    """The move a free-text reply names: its last bracketed game action (module docstring),
    or None if there is none or it is illegal in `state`."""
    named = [t for t in bracketed_tokens(text) if t in self.actions]
    if not named or named[-1] not in self.legal_actions(state):
      return None
    return named[-1]

  def check_legal(self, state: State, action: str) -> None:
    """Raises ValueError, naming the legal moves, unless `action` is legal in `state`."""
    if self.is_terminal(state):
      raise ValueError(f"{self.name}: the game is over; no move {action!r} can be played.")
    legal = self.legal_actions(state)
    if action not in legal:
      raise ValueError(f"{self.name}: illegal action {action!r} for player "
                       f"{self.current_player(state)}; legal actions: {legal}.")


def answer_format(legal: list[str]) -> str:
  """The closing instruction of every prompt: the exact answer format and the legal moves."""
  moves = ", ".join(f"[{a}]" for a in legal)
  return (f"Legal moves: {moves}.\n"
          "Think it through, then end your reply with your move in square brackets, "
          f"exactly as listed, e.g. [{legal[0]}]. The last bracketed move in your reply is "
          "the one played; an illegal or missing move loses the game.")
