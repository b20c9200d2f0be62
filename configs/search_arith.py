"""Inference-time search on arithmetic chains: best-of-N, votes, step-level greedy and beam
search, and MCTS, from an SFT policy, for N = 1, 2, 4, ..., 64.

    python -m reasonjax.main --config=configs/search_arith.py --workdir=runs/search_arith \
        --config.init_from=runs/sft_arith/hf
    ... --config.reward_model.path=runs/prm_arith/hf       # score with a trained PRM
    python -m reasonjax.main --config=configs/search_arith.py:runlocal --workdir=/tmp/search

Without `reward_model.path`, steps are scored by the task's own checker (`check_steps`: an
oracle, the upper bound of any reward model). Without `init_from`, the SFT run of
configs/sft_arith.py is trained first into workdir/sft. Writes workdir/search.json (accuracy,
generated tokens per problem and wall time per method and N) and workdir/search.md (the table).

Args: `runlocal` (16 problems, N up to 4, a small MCTS: a few CPU minutes, for tests).
"""

import ml_collections

from configs import common, sft_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "search"
  config.name = "search"
  common.post_training(config, sft_arith.nested(arg.runlocal))
  # A reward_model run's export (workdir/hf) and the granularity it was trained at; an empty
  # path scores with the task's checker.
  config.results_page = ""  # e.g. docs/results/search_arith.md: the table, with its command
  # granularity "implicit" scores with a policy's log-probabilities instead (Self-PRM,
  # configs/self_prm_arith.py): `path` that policy ("": the searching one), `reference` the
  # policy of the implicit reward's log-ratio ("": the policy's own confidence), `beta` its scale.
  config.reward_model = ml_collections.ConfigDict({"path": "", "granularity": "prm",
                                                   "batch_size": 64, "reference": "",
                                                   "beta": 1.0})
  config.search = ml_collections.ConfigDict({
      # Names in reasonjax.search.METHODS, run in this order.
      "methods": ("best_of_n", "majority_vote", "weighted_vote", "step_greedy", "beam", "mcts"),
      "n_values": (1, 2, 4, 8, 16, 32, 64),
      "num_problems": 200,  # held-out (test split) problems
      "aggregation": "min",  # a solution's score from its step scores: min, prod, last, mean
      "beam_width": 4,
      "temperature": 1.0,
      "top_p": 1.0,
      "max_step_tokens": 24,
      "max_steps": 6,
      "max_new_tokens": 96,
      "batch_size": 32,  # prompts or prefixes per sampler call
      # budget_forcing: appended where an answer line is cut (configs/budget_forcing_arith.py).
      "wait": "Wait,",
      # Step-level MCTS (search.methods.mcts): n * simulations_per_n simulations per problem;
      # each expansion gives a leaf num_children candidate steps (each one simulation), and
      # simulations_per_round leaves per tree share a sampler call.
      "mcts": ml_collections.ConfigDict({
          "num_children": 4, "c": 1.0, "rule": "puct", "simulations_per_round": 4,
          "simulations_per_n": 4, "select_by": "visits",
          # How a new node is valued: "reward" (the scorer's step score, as the other methods
          # use it), or, reading the problems' gold answers (for data, or as an upper bound):
          # "rollout" (one completion graded by the task) or "mixed", (1 - lam) reward +
          # lam rollout (rStar / AlphaZero). Rows of those are marked in the table.
          "evaluation": "reward", "lam": 0.5}),
  })
  if arg.runlocal:
    config.search.update({"num_problems": 16, "n_values": (1, 2, 4), "batch_size": 16,
                          "max_new_tokens": 48, "max_step_tokens": 16, "max_steps": 4,
                          "beam_width": 2})
  return config
