"""Step-DPO on arithmetic chains: DPO on sibling steps of the policy's step trees.

Step-level DPO on arithmetic chains: preference pairs of sibling steps from the policy's own
step trees, each step valued by the fraction of right solutions below it (a Monte-Carlo Q
value), the best and the worst children of a node making a pair whose prompt holds the path to
it (programs/dpo.py, `step_pairs`). Lai et al. 2024, "Step-DPO: Step-wise Preference
Optimization for Long-chain Reasoning of LLMs"; Wang et al. 2024, "CPL: Critical Plan Step
Learning" (Step-APO: step pairs from search trees with Q-value advantages).

    python -m reasonjax.main --config=configs/step_dpo_arith.py --workdir=runs/step_dpo \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/step_dpo_arith.py:runlocal \
        --workdir=/tmp/step_dpo --config.init_from=/tmp/sft/hf

Knobs: pairs.num_samples (children per node), pairs.max_depth, pairs.margin (the smallest value
difference that makes a pair), pairs.max_per_problem (the largest differences are kept),
pairs.temperature, loss and loss_kwargs (any preference loss), and the DPO trainer's others
(configs/dpo_arith.py).

Args: `runlocal` (a few problems and steps, for tests).
"""

import ml_collections

from configs import common, dpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = dpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "step_dpo"
  config.pairs.update({"source": "trees", "num_samples": 4, "max_per_problem": 4})
  if arg.runlocal:
    config.task.num_train = 16
    config.pairs.update({"num_samples": 3, "max_depth": 3, "max_step_tokens": 16})
  else:
    config.task.num_train = 500
  return config
