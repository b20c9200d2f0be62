"""A process reward model (PRM) on the SFT policy's own solutions to arithmetic chains.

    python -m reasonjax.main --config=configs/prm_arith.py --workdir=runs/prm_arith \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/prm_arith.py:runlocal --workdir=/tmp/prm
    ... --config.granularity=hrm     # hierarchical: single steps and merged step pairs

Each step of a sampled solution is labelled by the task's `check_steps` ground truth (Monte-Carlo
labels come with the process-supervision work); all steps of a solution are scored in one
forward pass. Without `init_from` the SFT run of configs/sft_arith.py is trained first.

Args: `runlocal` (a CPU minute, for tests).
"""

import ml_collections

from configs import common

# Old key -> new key: reasonjax.main rewrites an override of the old key, with a warning.
RENAMED = {"loss": "granularity"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.reward_model(arg, granularity="prm")
