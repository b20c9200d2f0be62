"""TicTacToe on a 3x3 board: player 0 is X and moves first, player 1 is O.

Cells are numbered 0..8 row by row and the move is the cell's number, e.g. "[4]" for the centre.
Returns: +1 to the player with three in a row, -1 to the other, 0 each for a full board.
"""

from __future__ import annotations

import dataclasses

from reasonjax.games import base

MARKS = ("X", "O")  # The mark of player 0, player 1.
EMPTY = "."
LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))

RULES = (
    "You are playing TicTacToe on a 3x3 board. Players take turns marking an empty cell; "
    "the first to get three of their marks in a row, column or diagonal wins, and a full "
    "board without a line is a draw. Cells are numbered 0-8 row by row; an empty cell shows "
    "its number.")


@dataclasses.dataclass(frozen=True)
class State:
  """`board[i]` is 'X', 'O' or '.' for cell i; X moves when the marks are even."""

  board: tuple[str, ...] = (EMPTY,) * 9

  def __post_init__(self):
    if len(self.board) != 9 or any(c not in (*MARKS, EMPTY) for c in self.board):
      raise ValueError(f"a board is 9 cells of X, O or '.'; got {self.board}")


def winner(state: State) -> int | None:
  """The player with three in a row, or None."""
  for a, b, c in LINES:
    if state.board[a] != EMPTY and state.board[a] == state.board[b] == state.board[c]:
      return MARKS.index(state.board[a])
  return None


def render(state: State) -> str:
  """The board as three rows, empty cells showing their number: 'X | 1 | O'."""
  cells = [c if c != EMPTY else str(i) for i, c in enumerate(state.board)]
  return "\n---------\n".join(" | ".join(cells[r * 3:r * 3 + 3]) for r in range(3))


class TicTacToe(base.Game):
  """TicTacToe (module docstring)."""

  name = "tictactoe"
  actions = tuple(str(i) for i in range(9))

  def initial_state(self, rng=None) -> State:
    del rng  # No chance in TicTacToe.
    return State()

  def current_player(self, state: State) -> int:
    return sum(c != EMPTY for c in state.board) % 2

  def legal_actions(self, state: State) -> list[str]:
    if self.is_terminal(state):
      return []
    return [str(i) for i, c in enumerate(state.board) if c == EMPTY]

  def apply(self, state: State, action: str) -> State:
    self.check_legal(state, action)
    board = list(state.board)
    board[int(action)] = MARKS[self.current_player(state)]
    return State(tuple(board))

  def is_terminal(self, state: State) -> bool:
    return winner(state) is not None or EMPTY not in state.board

  def returns(self, state: State) -> tuple[float, float]:
    if not self.is_terminal(state):
      raise ValueError("tictactoe: returns of a game that is not over.")
    w = winner(state)
    if w is None:
      return (0.0, 0.0)
    return (1.0, -1.0) if w == 0 else (-1.0, 1.0)

  def observation(self, state: State, player: int) -> str:
    return (f"{RULES}\nYou are Player {player} and play '{MARKS[player]}'; your opponent "
            f"plays '{MARKS[1 - player]}'.\nCurrent board:\n{render(state)}\n"
            f"{base.answer_format(self.legal_actions(state))}")
