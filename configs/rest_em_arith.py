"""ReST-EM on arithmetic chains: rounds of fine-tuning on the policy's verified samples.

ReST-EM on arithmetic chains: rounds of sampling the policy on training problems, keeping
the verified solutions and fine-tuning on them (programs/expert_iteration.py). Singh et al.
2023, "Beyond Human Data: Scaling Self-Training for Problem-Solving with Language Models".

    python -m reasonjax.main --config=configs/rest_em_arith.py --workdir=runs/rest_em
    python -m reasonjax.main --config=configs/rest_em_arith.py:runlocal --workdir=/tmp/rest_em \
        --config.init_from=/tmp/sft/hf

Knobs: expert_iteration.rounds, .restart ("base": each round fine-tunes the starting policy, as
the paper; "continue"), .max_per_problem (the paper caps right solutions per problem),
rollouts.num_samples and .temperature (the E-step's samples), train (each round's SFT loop:
steps, learning_rate, ...), reward_model.path (select by a trained reward model's score >=
expert_iteration.threshold, on top of the answer check unless expert_iteration.verified_only is
False). Without `init_from`, the starting policy is a short SFT run that
solves about half the problems (configs/hrm_arith.py:policy_sft), trained into workdir/sft.

Args: `runlocal` (a few problems and steps, for tests), `countdown` (the Countdown task).
"""

import ml_collections

from configs import common, hrm_arith, sft_arith


def expert_iteration(config: ml_collections.ConfigDict, *, runlocal: bool,
                     countdown: bool) -> None:
  """The expert-iteration fields with ReST-EM's settings, from the recipes' SFT start."""
  config.trainer = "expert_iteration"
  common.post_training(config, hrm_arith.policy_sft(runlocal, countdown))
  config.task.num_train = 1024  # training problems, all sampled every round
  # threshold 1: of the checker's 0/1 rewards, the right samples; with a reward model, its
  # solution score in [0, 1]. balance: B-STaR's search (configs/b_star_arith.py), off here.
  config.expert_iteration = ml_collections.ConfigDict({
      "rounds": 3, "restart": "base", "max_per_problem": 4, "rationalize": False,
      "hint": " (The answer is {answer}.)", "steps_growth": 0.0, "threshold": 1.0,
      "verified_only": True,
      "balance": {"temperatures": (), "thresholds": (), "target": 4, "probe_problems": 128}})
  config.reward_model = common.reward_model()
  config.rollouts = common.rollouts(num_samples=8, temperature=1.0, max_new_tokens=64,
                                    batch_size=256)
  train = hrm_arith.program(sft_arith.get_config("runlocal"))
  common.loop(train, steps=300, batch_size=16, seq_len=128, learning_rate=3e-4,
              warmup_steps=10, log_every=25, eval_every=0, checkpoint_every=100)
  train.eval = common.evaluation(num_problems=200, max_new_tokens=64, num_samples=0, k=1)
  config.train = train
  if runlocal:
    config.task.num_train = 12
    config.expert_iteration.rounds = 2
    config.rollouts.update({"num_samples": 4, "max_new_tokens": 48, "batch_size": 64})
    common.loop(config.train, steps=3, batch_size=8, seq_len=128, learning_rate=3e-4,
                warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=3)
    config.train.eval = common.evaluation(num_problems=8, max_new_tokens=48, num_samples=0,
                                          k=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, countdown=False)
  config = ml_collections.ConfigDict()
  config.name = "rest_em_countdown" if arg.countdown else "rest_em_arith"
  expert_iteration(config, runlocal=arg.runlocal, countdown=arg.countdown)
  return config
