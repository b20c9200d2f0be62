"""TicTacToe against known facts: the game is a draw under perfect play, 5478 legal positions
are reachable, and every terminal position's winner matches an independent line check."""

import collections
import functools

import numpy as np
import pytest

from reasonjax import games
from reasonjax.games import tictactoe

GAME = tictactoe.TicTacToe()


def _line_winner(board) -> str | None:
  """Independent reference: the mark filling any row, column or diagonal of a 3x3 grid."""
  grid = np.array(board).reshape(3, 3)
  lines = [*grid, *grid.T, grid.diagonal(), np.fliplr(grid).diagonal()]
  marks = {line[0] for line in lines if line[0] != "." and len(set(line)) == 1}
  assert len(marks) <= 1, board  # Both players cannot have a line in a reachable position.
  return marks.pop() if marks else None


def _reachable() -> set:
  """Every state reachable from the empty board by legal play (BFS over the env)."""
  start = GAME.initial_state(np.random.default_rng(0))
  seen, queue = {start}, collections.deque([start])
  while queue:
    state = queue.popleft()
    for a in GAME.legal_actions(state):
      child = GAME.apply(state, a)
      if child not in seen:
        seen.add(child)
        queue.append(child)
  return seen


REACHABLE = _reachable()


def test_reachable_positions_are_the_known_5478():
  assert len(REACHABLE) == 5478
  # Known: 958 terminal positions, 626 won by X, 316 by O and 16 draws.
  outcomes = collections.Counter(GAME.returns(s) for s in REACHABLE if GAME.is_terminal(s))
  assert outcomes == {(1, -1): 626, (-1, 1): 316, (0, 0): 16}


def test_minimax_value_of_the_empty_board_is_a_draw():
  @functools.cache
  def value(state):  # Player 0's return under perfect play.
    if GAME.is_terminal(state):
      return GAME.returns(state)[0]
    children = [value(GAME.apply(state, a)) for a in GAME.legal_actions(state)]
    return max(children) if GAME.current_player(state) == 0 else min(children)

  assert value(GAME.initial_state(None)) == 0
  # After X takes a corner and O an adjacent edge, X wins: a known losing reply.
  assert value(GAME.apply(GAME.apply(GAME.initial_state(None), "0"), "1")) == 1


def test_terminal_winners_match_an_independent_line_check():
  for state in REACHABLE:
    mark = _line_winner(state.board)
    full = "." not in state.board
    assert GAME.is_terminal(state) == (mark is not None or full)
    if GAME.is_terminal(state):
      expected = {None: (0, 0), "X": (1, -1), "O": (-1, 1)}[mark]
      assert GAME.returns(state) == expected
      assert sum(GAME.returns(state)) == 0
      assert GAME.legal_actions(state) == []
    else:
      assert GAME.legal_actions(state) == [str(i) for i, c in enumerate(state.board) if c == "."]
      assert GAME.current_player(state) == (9 - state.board.count(".")) % 2


def test_illegal_moves_raise():
  state = GAME.apply(GAME.initial_state(None), "4")
  with pytest.raises(ValueError, match=r"illegal action '4'.*legal actions"):
    GAME.apply(state, "4")
  with pytest.raises(ValueError, match="illegal action '9'"):
    GAME.apply(state, "9")
  won = tictactoe.State(("X", "X", "X", "O", "O", ".", ".", ".", "."))
  with pytest.raises(ValueError, match="over"):
    GAME.apply(won, "5")
  with pytest.raises(ValueError, match="not over"):
    GAME.returns(state)
  with pytest.raises(ValueError):
    tictactoe.State(("X",) * 8)


def test_states_are_immutable_and_replayable():
  state = GAME.initial_state(None)
  after = GAME.apply(state, "0")
  assert state.board == (".",) * 9 and after.board[0] == "X"
  assert GAME.apply(state, "0") == after and hash(GAME.apply(state, "0")) == hash(after)


def test_observation_shows_board_role_and_answer_format():
  state = GAME.apply(GAME.apply(GAME.initial_state(None), "4"), "0")
  obs = GAME.observation(state, 0)
  assert "You are Player 0 and play 'X'" in obs
  assert "O | 1 | 2\n---------\n3 | X | 5" in obs
  assert "Legal moves: [1], [2], [3], [5], [6], [7], [8]." in obs
  assert "square brackets" in obs
  assert "play 'O'" in GAME.observation(state, 1)


@pytest.mark.parametrize("reply, expected", [
    ("I take the centre. [4]", "4"),
    ("[4]", "4"),
    ("[ 4 ]", "4"),
    ("Maybe [2], or [3]? No: final answer [8]", "8"),
    ("[8] is best... actually [4]\n", "4"),
    ("Board: [X] [O] [.]; I play [5] then [X]", "5"),  # Non-actions are skipped.
    ("[0] is taken, so [2] or [0]", None),  # The last named move is illegal: invalid.
    ("no move here", None),
    ("4", None),  # Bare numbers are not answers: the format asks for brackets.
    ("[12]", None),
    ("[4\n]", None),
])
def test_parse_action(reply, expected):
  state = GAME.apply(GAME.initial_state(None), "0")  # Cell 0 taken.
  assert GAME.parse_action(state, reply) == expected


def test_registry():
  assert isinstance(games.make("tictactoe"), tictactoe.TicTacToe)
  with pytest.raises(ValueError, match="kuhn_poker"):
    games.make("chess")
