"""Satori's restart and explore on arithmetic chains: GRPO groups that start mid-solution.

Satori's restart and explore on arithmetic chains: besides the plain prompts, a share of each
iteration's groups restart from an intermediate state of one of the policy's own earlier
trajectories: the question plus the first k of its s steps (k uniform in 1 .. s - 1), with a
reflection cue appended after a wrong trajectory's prefix. The policy practises continuing a
solution, and correcting one, from its middle; each restarted sample is scored on prefix +
completion, so the verifier grades the whole solution, and trained on under the restart prompt
(programs/grpo.py, `Rollouts._restarts`). Shen et al. 2025, "Satori: Reinforcement Learning with
Chain-of-Action-Thought Enhances LLM Reasoning via Autoregressive Search".

Satori restarts from states of the SFT policy's trajectories gathered before RL, and its cue is
the `<|reflect|>` meta-action of its COAT format. Here the buffer holds the trajectories of the
run's own earlier iterations (FIFO), and the cue is plain text, as the arithmetic format has no
meta-actions.

    python -m reasonjax.main --config=configs/restart_grpo_arith.py --workdir=runs/restart \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/restart_grpo_arith.py:runlocal \
        --workdir=/tmp/restart --config.init_from=/tmp/sft/hf

Knobs: restart.fraction (the share of each prompt batch's groups that restart, from the second
iteration on), .buffer (the earlier trajectories kept, newest last; those with fewer than 2
steps are not kept), .below (a trajectory scored below it is wrong and gets the cue), .cue,
.max_prefix_tokens (prompts are padded that much wider, so that the sampler and the train step
compile once; a longer prefix keeps fewer whole steps), and every GRPO knob
(configs/grpo_arith.py). The metrics `rollout_restart_groups` (the fraction of the batch's groups
that restarted) and `rollout_restart_right` (the fraction of their samples right, prefix
included) show what the restarts did; `rollout_reward_correctness` is over all groups.

Args: `runlocal` (a few iterations, for tests).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "restart_grpo"
  config.restart.fraction = 0.25
  if arg.runlocal:
    config.restart.update({"fraction": 0.5, "max_prefix_tokens": 48})
  return config
