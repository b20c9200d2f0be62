"""Guide-GRPO on arithmetic chains: hinted samples for groups that all fail.

Guide-GRPO on arithmetic chains: in a group whose samples all fail, half of them are sampled
again with the answer as a hint in the prompt, and trained on under the plain prompt with the
importance weight pi(o | q) / pi_old(o | q, hint) that corrects for sampling them off-policy
(programs/grpo.py, `Rollouts._guide`). Nath et al. 2025, "Adaptive Guidance Accelerates
Reinforcement Learning of Reasoning Models".

    python -m reasonjax.main --config=configs/guide_grpo_arith.py --workdir=runs/guide
    python -m reasonjax.main --config=configs/guide_grpo_arith.py:runlocal --workdir=/tmp/guide \
        --config.init_from=/tmp/sft/hf

Knobs: guidance.samples (hinted samples per failed group), guidance.below (a group fails when
every reward is below it), guidance.hint (with {answer}), and every GRPO knob
(configs/grpo_arith.py). The metrics `rollout_guided_groups` (the fraction of groups guided)
and `rollout_guided_right` (of those, the fraction the hint made right) show what the guidance
did; `rollout_reward_correctness` is the policy's own accuracy before guidance.

Args: `runlocal` (a few iterations, for tests).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "guide_grpo"
  config.guidance.samples = config.rollouts.num_samples // 2
  return config
