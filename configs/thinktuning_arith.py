"""ThinkTuning on arithmetic chains: GRPO whose failed rollouts get a teacher's feedback.

ThinkTuning on arithmetic chains: a failed completion gets, with a probability that decays over
the first third of training, a teacher's feedback appended (one of four kinds of reflection,
written from the reference answer), and the policy continues from its attempt and the feedback.
The whole row (attempt, feedback, continuation) is scored and trained on with GRPO; the loss
takes the feedback tokens as the policy's own and trains on them only where the row's advantage
is positive (programs/grpo.py, `Rollouts._feedback`). RRV et al. 2025, "ThinkTuning: Instilling
Cognitive Reflections without Distillation".

The paper's teacher is a model of the student's size, prompted with the problem, the student's
attempt and the reference solution to write the feedback. Here the teacher's texts are
templates filled with the reference answer: at this scale a model teacher writes no useful
feedback. The paper's advantage-aware shaping of the teacher tokens is read here as
`feedback.shaping="positive"`; "all" and "none" are the two ablations.

    python -m reasonjax.main --config=configs/thinktuning_arith.py --workdir=runs/thinktuning \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/thinktuning_arith.py:runlocal \
        --workdir=/tmp/thinktuning --config.init_from=/tmp/sft/hf

Knobs: feedback.fraction and .final_fraction (the probability that a failed completion gets
feedback, at the start and after .decay_iterations), .below (a completion fails below it),
.texts (with {answer}), .max_tokens (feedback and continuation), .shaping, and every GRPO knob
(configs/grpo_arith.py). The metrics `rollout_feedback_samples` (the fraction of completions
given feedback), `rollout_feedback_right` (of those, the fraction right after it) and
`rollout_feedback_fraction` (the schedule) show what the teacher did;
`rollout_reward_correctness` is the policy's own accuracy before feedback.

Args: `runlocal` (a few iterations, for tests).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "thinktuning"
  iterations = config.steps // (config.epochs * config.minibatches)
  config.feedback.update({"fraction": 0.5, "final_fraction": 0.0,
                          "decay_iterations": max(1, iterations // 3)})
  if arg.runlocal:
    config.feedback.fraction = 1.0  # every failed completion of the first iteration
  return config
