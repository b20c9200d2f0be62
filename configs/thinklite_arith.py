"""ThinkLite on arithmetic chains: GRPO on the problems MCTS finds hard but solvable.

ThinkLite-style data selection on arithmetic chains: before GRPO, every training problem is
searched by step-level MCTS with rollout values until its tree holds a right answer; the
problems it solves only after many simulations (hard but solvable) are kept for RL
(programs/grpo.py, `select_problems`). Wang et al. 2025, "SoTA with Less: MCTS-Guided Sample
Selection for Data-Efficient Visual Reasoning Self-Improvement" (ThinkLite-VL).

    python -m reasonjax.main --config=configs/thinklite_arith.py --workdir=runs/thinklite \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/thinklite_arith.py:runlocal \
        --workdir=/tmp/thinklite --config.init_from=/tmp/sft/hf

Knobs: data_selection.simulations (the most a problem is searched), .min_simulations (the
difficulty kept), .keep_unsolved (the paper also keeps problems not solved in the budget),
.num_children, .simulations_per_round, task.num_train (the pool searched), and every GRPO knob
(configs/grpo_arith.py). workdir/selection.json holds each problem's simulations and whether
it was solved.

Args: `runlocal` (a small pool, for tests).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "thinklite"
  config.task.num_train = 2048  # the pool searched
  # A simulation is one new node (num_children per expansion): a tree needs several expansions
  # in a row to reach an answer. At 32 simulations the runlocal SFT start's trees held a right
  # answer for 3 of 512 problems.
  config.data_selection.update({"simulations": 256, "min_simulations": 32})
  if arg.runlocal:
    config.task.num_train = 24
    config.data_selection.update({"simulations": 8, "min_simulations": 1,
                                  "keep_unsolved": True, "max_step_tokens": 16,
                                  "max_steps": 4})
  return config
