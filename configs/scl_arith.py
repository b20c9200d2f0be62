"""Self-correction on arithmetic chains: DPO on second attempts after the policy's first.

Self-correction by preference on arithmetic chains: the policy makes first attempts, is
prompted with each attempt and a cue to check it, and makes second attempts; a right and a
wrong second attempt after the same first attempt make a DPO pair, so the policy learns to keep
a right answer and to correct a wrong one (programs/dpo.py, `pairs.source="corrections"`). The
two-turn setting is that of Kumar et al. 2024 ("Training Language Models to Self-Correct via
Reinforcement Learning"); the preference pairs between second attempts are this recipe's. The
pairs' `first_right` field tells corrections (a wrong first attempt) from confirmations.

    python -m reasonjax.main --config=configs/scl_arith.py --workdir=runs/scl \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/scl_arith.py:runlocal --workdir=/tmp/scl \
        --config.init_from=/tmp/sft/hf

Knobs: pairs.first_samples (first attempts per problem), pairs.num_samples (second attempts
after each), pairs.cue, pairs.max_per_problem (pairs per first attempt), loss and loss_kwargs,
and the DPO trainer's others (configs/dpo_arith.py).

Args: `runlocal` (a few problems and steps, for tests).
"""

import ml_collections

from configs import common, dpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = dpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "scl"
  config.pairs.update({"source": "corrections", "first_samples": 2, "num_samples": 4})
  config.seq_len = max(config.seq_len, 160)  # the prompt holds a first attempt
  if arg.runlocal:
    config.task.num_train = 32
  else:
    config.task.num_train = 1000
  return config
