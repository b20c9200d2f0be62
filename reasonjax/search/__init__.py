"""Search over reasoning steps: array trees and step-level MCTS, the policy and step scorers
they use, inference-time methods (best-of-N, votes, step-level greedy / beam search, MCTS),
Monte-Carlo step labels, reward-model data from full step trees (HRM, HNC) and the ProcessBench
first-error evaluation."""

from reasonjax.search import language, mc_labels, mcts, process_bench, tree, tree_data
from reasonjax.search.language import LanguageEnv
from reasonjax.search.mcts import Environment, Expansion, MCTSConfig, best_path
from reasonjax.search.methods import (METHODS, Result, Search, SolutionPool, get_method)
from reasonjax.search.policy import Candidate, StepPolicy, complete, expand, sample_solutions
from reasonjax.search.scorers import (AGGREGATIONS, OracleScorer, RewardModelScorer,
                                      aggregate)
from reasonjax.search.tree import Tree
from reasonjax.search.tree_data import StepExample, StepTree

__all__ = [
    "AGGREGATIONS", "METHODS", "Candidate", "Environment", "Expansion", "LanguageEnv",
    "MCTSConfig", "OracleScorer", "Result", "RewardModelScorer", "Search", "SolutionPool",
    "StepExample", "StepPolicy", "StepTree", "Tree", "aggregate", "best_path", "complete",
    "expand", "get_method", "language", "mc_labels", "mcts", "process_bench",
    "sample_solutions", "tree", "tree_data",
]
