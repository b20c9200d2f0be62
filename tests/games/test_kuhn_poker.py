"""Kuhn poker against an independent payoff table and the known equilibrium family: under
every member, player 0's exact expected value is -1/18, and no pure deviation of either
player does better against it (Kuhn 1950)."""

import collections
import itertools
from fractions import Fraction

import numpy as np
import pytest

from reasonjax.games import kuhn_poker

GAME = kuhn_poker.KuhnPoker()
J, Q, K = 0, 1, 2
DEALS = list(itertools.permutations(range(3), 2))


def _reference_payoff(cards, history) -> int:
  """Chips won by player 0, written from the rules: ante 1, a called bet adds 1 each."""
  showdown = 1 if cards[0] > cards[1] else -1
  return {"check check": showdown, "bet call": 2 * showdown, "bet fold": 1,
          "check bet call": 2 * showdown, "check bet fold": -1}[" ".join(history)]


def _nash(alpha):
  """The equilibrium family (Kuhn 1950), as P(bet or call) by (player, card, history)."""
  a, third = Fraction(alpha), Fraction(1, 3)
  return {
      # Player 0 opens: bets J with prob a (bluff), never Q, K with prob 3a.
      (0, J, ()): a, (0, Q, ()): 0, (0, K, ()): 3 * a,
      # Player 0 facing a bet after checking: folds J, calls Q with a + 1/3, calls K.
      (0, J, ("check", "bet")): 0, (0, Q, ("check", "bet")): a + third,
      (0, K, ("check", "bet")): 1,
      # Player 1 facing a bet: folds J, calls Q with 1/3, calls K.
      (1, J, ("bet",)): 0, (1, Q, ("bet",)): third, (1, K, ("bet",)): 1,
      # Player 1 after a check: bets J with 1/3 (bluff), checks Q, bets K.
      (1, J, ("check",)): third, (1, Q, ("check",)): 0, (1, K, ("check",)): 1,
  }


def _value(strategy) -> Fraction:
  """Player 0's exact expected return: every deal (prob 1/6) and every action the env allows,
  each weighted by `strategy[(player, card, history)]` = P(the aggressive action)."""
  def node(state):
    if GAME.is_terminal(state):
      return Fraction(GAME.returns(state)[0])
    p = GAME.current_player(state)
    aggressive, passive = ("bet", "check") if "check" in GAME.legal_actions(state) else (
        "call", "fold")
    prob = strategy[(p, state.cards[p], state.history)]
    return (prob * node(GAME.apply(state, aggressive))
            + (1 - prob) * node(GAME.apply(state, passive)))
  return sum(node(kuhn_poker.State(cards)) for cards in DEALS) / 6


def _with_pure(strategy, player, choice):
  """`strategy` with `player`'s information sets replaced by the pure choices `choice`."""
  keys = sorted(k for k in strategy if k[0] == player)
  return {**strategy, **{k: Fraction(c) for k, c in zip(keys, choice)}}


@pytest.mark.parametrize("alpha", [Fraction(0), Fraction(1, 9), Fraction(1, 4), Fraction(1, 3)])
def test_nash_family_value_is_minus_one_eighteenth(alpha):
  nash = _nash(alpha)
  assert _value(nash) == Fraction(-1, 18)
  # An equilibrium: neither player gains from any of its 64 pure strategies.
  pure = list(itertools.product((0, 1), repeat=6))
  assert max(_value(_with_pure(nash, 0, c)) for c in pure) == Fraction(-1, 18)
  assert min(_value(_with_pure(nash, 1, c)) for c in pure) == Fraction(-1, 18)


def test_a_non_equilibrium_is_exploitable():
  # Player 1 always calling a bet: player 0 gains by value-betting K (test can fail).
  calls = {**_nash(0), (1, Q, ("bet",)): Fraction(1)}
  pure = list(itertools.product((0, 1), repeat=6))
  assert max(_value(_with_pure(calls, 0, c)) for c in pure) > Fraction(-1, 18)


def test_payoffs_match_the_rules_and_are_zero_sum():
  for cards, history in itertools.product(DEALS, kuhn_poker.TERMINAL):
    state = kuhn_poker.State(cards)
    for a in history:
      assert not GAME.is_terminal(state)
      state = GAME.apply(state, a)
    assert GAME.is_terminal(state) and GAME.legal_actions(state) == []
    r0, r1 = GAME.returns(state)
    assert r0 == _reference_payoff(cards, history) and r0 + r1 == 0


def test_game_tree_has_five_terminal_histories():
  terminal, frontier = set(), [kuhn_poker.State((J, Q))]
  while frontier:
    state = frontier.pop()
    if GAME.is_terminal(state):
      terminal.add(state.history)
    else:
      assert GAME.current_player(state) == len(state.history) % 2
      assert len(state.history) < 3, state.history  # Kuhn poker ends within 3 actions.
      frontier += [GAME.apply(state, a) for a in GAME.legal_actions(state)]
  assert terminal == {("check", "check"), ("bet", "call"), ("bet", "fold"),
                      ("check", "bet", "call"), ("check", "bet", "fold")}


def test_deals_are_uniform_over_the_six():
  counts = collections.Counter(GAME.initial_state(np.random.default_rng(s)).cards
                               for s in range(3000))
  assert set(counts) == set(DEALS)
  assert all(abs(n / 3000 - 1 / 6) < 0.03 for n in counts.values())
  assert GAME.initial_state(np.random.default_rng(7)) == GAME.initial_state(
      np.random.default_rng(7))


def test_illegal_actions_raise():
  start = kuhn_poker.State((K, J))
  with pytest.raises(ValueError, match=r"illegal action 'call'.*\['check', 'bet'\]"):
    GAME.apply(start, "call")
  facing = GAME.apply(start, "bet")
  for bad in ("check", "bet", "raise"):
    with pytest.raises(ValueError, match="illegal action"):
      GAME.apply(facing, bad)
  with pytest.raises(ValueError, match="over"):
    GAME.apply(GAME.apply(facing, "fold"), "call")
  with pytest.raises(ValueError, match="not over"):
    GAME.returns(facing)
  with pytest.raises(ValueError):
    kuhn_poker.State((Q, Q))


def test_observation_hides_the_opponents_card():
  for history in ((), ("bet",), ("check",), ("check", "bet")):
    p = len(history) % 2
    by_card = []
    for mine in range(3):
      deals = [(mine, o) if p == 0 else (o, mine) for o in range(3) if o != mine]
      seen = {GAME.observation(kuhn_poker.State(cards, history), p) for cards in deals}
      assert len(seen) == 1  # The opponent's card changes nothing the mover sees.
      by_card += seen
    assert len(set(by_card)) == 3  # Its own card does.
  obs = GAME.observation(kuhn_poker.State((K, J), ("check", "bet")), 0)
  assert "You are Player 0. Your card: K." in obs
  assert "Player 0: [check]\nPlayer 1: [bet]" in obs and "Pot: 3 chips." in obs
  assert "Legal moves: [call], [fold]." in obs


@pytest.mark.parametrize("history, reply, expected", [
    ((), "With a K I should value-bet. [bet]", "bet"),
    ((), "[ BET ]", "bet"),
    ((), "I could [bet] but a check traps: [Check]", "check"),
    ((), "[call]", None),  # A game action, but not legal before a bet.
    ((), "[raise]", None),
    (("bet",), "Facing a bet with J: [fold]", "fold"),
    (("bet",), "[fold]? no: [call]. My card is [J].", "call"),  # "[J]" names no action.
    (("bet",), "I will call", None),
])
def test_parse_action(history, reply, expected):
  assert GAME.parse_action(kuhn_poker.State((J, K), history), reply) == expected
