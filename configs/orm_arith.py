"""An outcome reward model (ORM) on the SFT policy's own solutions to arithmetic chains.

    python -m reasonjax.main --config=configs/orm_arith.py --workdir=runs/orm_arith \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/orm_arith.py:runlocal --workdir=/tmp/orm

The reward model is the policy with a new score head; each sampled solution is labelled by its
final answer. Without `init_from` the SFT run of configs/sft_arith.py is trained first.

Args: `runlocal` (a CPU minute, for tests).
"""

import ml_collections

from configs import prm_arith

# Old key -> new key: reasonjax.main rewrites an override of the old key, with a warning.
RENAMED = {"loss": "granularity"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return prm_arith.reward_model(arg, granularity="orm")
