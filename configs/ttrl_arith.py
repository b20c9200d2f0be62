"""TTRL and EMPO on arithmetic chains: test-time GRPO rewarded by agreement, no verifier.

Test-time RL without a verifier on arithmetic chains: GRPO on the evaluation's own problems,
without their answers, rewarded by agreement among the samples (programs/grpo.py). TTRL (Zuo et
al. 2025, "TTRL: Test-Time Reinforcement Learning") rewards the samples that give the group's
majority answer, a pseudo-label; EMPO (Zhang et al. 2025, "Right Question is Already Half the
Answer: Fully Unsupervised LLM Reasoning Incentivization") rewards each sample with the share
of the group that gives its answer, which minimises the semantic entropy of the answers.

    python -m reasonjax.main --config=configs/ttrl_arith.py --workdir=runs/ttrl
    python -m reasonjax.main --config=configs/ttrl_arith.py:empo --workdir=runs/empo
    python -m reasonjax.main --config=configs/ttrl_arith.py:runlocal --workdir=/tmp/ttrl \
        --config.init_from=/tmp/sft/hf

The answers are never read for the reward: `rewards.correctness` is 0, so the verifier's
grading only shows up as the `rollout_reward_correctness` metric (the true accuracy of the
rollouts) beside the unsupervised reward. Knobs: rewards.self_consistency (TTRL) and
rewards.answer_frequency (EMPO), train_split ("test": the evaluation's problems; "train": an
unlabelled training set), rollouts.num_samples (the votes per problem), and every GRPO knob.

Args: `runlocal` (a few iterations, for tests), `empo` (EMPO's reward instead of TTRL's).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, empo=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "empo" if arg.empo else "ttrl"
  config.rewards.update({"correctness": 0.0, "self_consistency": 0.0 if arg.empo else 1.0,
                         "answer_frequency": 1.0 if arg.empo else 0.0})
  # Test-time training: the problems trained on are the evaluation's.
  config.train_split = "test"
  config.task.num_train = config.eval.num_problems
  return config
