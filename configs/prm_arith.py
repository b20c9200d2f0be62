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

from configs import common, sft_arith

# Old key -> new key: reasonjax.main rewrites an override of the old key, with a warning.
RENAMED = {"loss": "granularity"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return reward_model(arg, granularity="prm")


def reward_model(arg: str | None, *, granularity: str) -> ml_collections.ConfigDict:
  """The ORM / PRM / HRM configs on arithmetic chains (program reward_model), `granularity`
  their default. The files that use it rename the key `loss` to `granularity` (`RENAMED`)."""
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "reward_model"
  config.name = granularity
  common.post_training(config, sft_arith.nested(arg.runlocal))
  config.task.num_train = 1000  # Problems whose sampled solutions are labelled.
  config.rollouts = common.rollouts(num_samples=4)
  config.granularity = granularity  # orm, prm or hrm (programs.reward_model.GRANULARITIES)
  config.label_kind = "bce"  # bce or mse (losses.reward.LABEL_KINDS)
  config.pack = True
  common.loop(config, steps=300, batch_size=32, seq_len=256, learning_rate=1e-4,
              warmup_steps=20, eval_every=100, checkpoint_every=100)
  config.eval_at_start = True  # The untrained head's numbers, for comparison.
  config.eval = common.evaluation(num_problems=100)
  if arg.runlocal:
    config.task.num_train = 64
    config.rollouts = common.rollouts(num_samples=4, max_new_tokens=48)
    common.loop(config, steps=20, batch_size=8, seq_len=128, learning_rate=1e-3,
                warmup_steps=2, log_every=2, checkpoint_every=10)
    config.eval = common.evaluation(num_problems=16, max_new_tokens=48)
    config.eval_at_start = True
  return config
