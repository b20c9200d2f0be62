"""Kuhn poker (Kuhn 1950): one hand with the cards J < Q < K, one to each player, one unseen.

Both ante 1 chip. Player 0 checks or bets 1; after a check player 1 checks or bets 1; facing a
bet a player calls or folds. Terminal histories and the chips won by player 0:
  check check: +-1 (showdown)     bet call: +-2 (showdown)     bet fold: +1
  check bet call: +-2 (showdown)  check bet fold: -1
Returns are in chips, zero-sum. Player 0's value under any Nash equilibrium is -1/18.
"""

from __future__ import annotations

import dataclasses

from reasonjax.games import base

CARDS = ("J", "Q", "K")  # Index = rank.
CHECK, BET, CALL, FOLD = "check", "bet", "call", "fold"
# Histories where the hand is over.
TERMINAL = ((CHECK, CHECK), (BET, CALL), (BET, FOLD), (CHECK, BET, CALL), (CHECK, BET, FOLD))

RULES = (
    "You are playing Kuhn poker. The deck has three cards, J < Q < K; each player antes 1 chip "
    "and is dealt one card, the third is unseen. Player 0 acts first: [check] or [bet] 1 chip. "
    "After a check, Player 1 may [check] or [bet]. Facing a bet, a player may [call] (match it) "
    "or [fold] (give up the pot). If nobody folds, the higher card wins the pot.")


@dataclasses.dataclass(frozen=True)
class State:
  """`cards[p]` is player p's card rank (0=J, 1=Q, 2=K); `history` the actions so far."""

  cards: tuple[int, int]
  history: tuple[str, ...] = ()

  def __post_init__(self):
    if len(self.cards) != 2 or len(set(self.cards)) != 2 or not set(self.cards) <= {0, 1, 2}:
      raise ValueError(f"two different cards from 0, 1, 2; got {self.cards}")


class KuhnPoker(base.Game):
  """Kuhn poker (module docstring)."""

  name = "kuhn_poker"
  actions = (CHECK, BET, CALL, FOLD)

  def initial_state(self, rng) -> State:
    """Deals two different cards uniformly: each of the 6 deals has probability 1/6."""
    deal = rng.permutation(3)[:2]
    return State(cards=(int(deal[0]), int(deal[1])))

  def current_player(self, state: State) -> int:
    return len(state.history) % 2

  def legal_actions(self, state: State) -> list[str]:
    if self.is_terminal(state):
      return []
    if state.history and state.history[-1] == BET:
      return [CALL, FOLD]
    return [CHECK, BET]

  def apply(self, state: State, action: str) -> State:
    self.check_legal(state, action)
    return State(state.cards, state.history + (action,))

  def is_terminal(self, state: State) -> bool:
    return state.history in TERMINAL

  def returns(self, state: State) -> tuple[float, float]:
    if not self.is_terminal(state):
      raise ValueError("kuhn_poker: returns of a hand that is not over.")
    h = state.history
    if h[-1] == FOLD:
      # The folder is the player to move at the fold; the other wins the ante.
      folder = (len(h) - 1) % 2
      won = -1.0 if folder == 0 else 1.0
    else:
      stake = 2.0 if BET in h else 1.0  # Ante, plus the called bet.
      won = stake if state.cards[0] > state.cards[1] else -stake
    return (won, -won)

  def observation(self, state: State, player: int) -> str:
    # Only the player's own card: the opponent's is hidden until the showdown.
    moves = [f"Player {i % 2}: [{a}]" for i, a in enumerate(state.history)]
    history = "\n".join(moves) if moves else "(no actions yet)"
    pot = 2 + sum(a in (BET, CALL) for a in state.history)
    return (f"{RULES}\nYou are Player {player}. Your card: {CARDS[state.cards[player]]}.\n"
            f"Actions so far:\n{history}\nPot: {pot} chips.\n"
            f"{base.answer_format(self.legal_actions(state))}")
