"""DAPO on arithmetic chains: GRPO with DAPO's losses and data controls.

DAPO's recipe on arithmetic chains: GRPO with clip-higher, the token-level loss, no KL term,
dynamic sampling (groups whose rewards are all equal are dropped and more prompts sampled),
the soft overlong penalty and, optionally, overlong filtering, an early cut-off of the long
tail of a batch's rollouts and a length reward (programs/grpo.py). Yu et al. 2025, "DAPO: An
Open-Source LLM Reinforcement Learning System at Scale"; the length reward is Kimi k1.5's
(Kimi Team 2025), as used for efficient reasoning.

    python -m reasonjax.main --config=configs/dapo_arith.py --workdir=runs/dapo
    python -m reasonjax.main --config=configs/dapo_arith.py:efficiency --workdir=runs/dapo_short
    python -m reasonjax.main --config=configs/dapo_arith.py:runlocal --workdir=/tmp/dapo \
        --config.init_from=/tmp/sft/hf

Knobs: data_controls.dynamic_sampling / .max_sampling_rounds (prompt batches per iteration at
most), .overlong_filter (truncated completions out of the loss), .overlong_cache /
.overlong_weight (the soft penalty over the last cache tokens), rollouts.cutoff_fraction
(decoding stops once that fraction of rows has ended), rewards.group_length (the length
reward's weight), policy_loss.epsilon_low / epsilon_high, and every GRPO knob
(configs/grpo_arith.py).

Args: `runlocal` (a few iterations, for tests), `efficiency` (adds the length reward and the
early cut-off: shorter right answers).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, efficiency=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "dapo_efficiency" if arg.efficiency else "dapo"
  config.aggregation = "dapo"
  config.policy_loss.update({"epsilon_low": 0.2, "epsilon_high": 0.28, "beta": 0.0})
  # The paper's cache is 4k of 20k tokens; here a fifth of the budget.
  cache = max(1, config.rollouts.max_new_tokens // 5)
  config.data_controls.update({"dynamic_sampling": True, "max_sampling_rounds": 3,
                               "overlong_cache": cache, "overlong_weight": 1.0})
  if arg.efficiency:
    config.rewards.group_length = 0.5
    config.rollouts.cutoff_fraction = 0.9
  return config
