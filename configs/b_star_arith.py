"""B-STaR on arithmetic chains: expert iteration that balances exploration and exploitation.

B-STaR on arithmetic chains: expert iteration that, each round, picks the sampling
temperature and the reward threshold with the highest balance score on a probe of the training
problems, and logs exploration (pass@k, distinct right solutions) and exploitation (the
selection's precision, the reward model's best-of-k) (programs/expert_iteration.py). Zeng et
al. 2024, "B-STaR: Monitoring and Balancing Exploration and Exploitation in Self-Taught
Reasoners".

    python -m reasonjax.main --config=configs/b_star_arith.py --workdir=runs/b_star
    python -m reasonjax.main --config=configs/b_star_arith.py --workdir=runs/b_star_prm \
        --config.reward_model.path=runs/prm_arith/hf
    python -m reasonjax.main --config=configs/b_star_arith.py:runlocal --workdir=/tmp/b_star \
        --config.init_from=/tmp/sft/hf

Knobs: expert_iteration.balance.temperatures (the grid searched each round), .thresholds (the
reward thresholds searched with a reward model; with the answer check alone the reward is 0/1
and the threshold does not matter), .target (n*, the distinct right solutions per problem that
count as enough exploration), .probe_problems; reward_model.path (a reward_model run's export,
whose score selects the samples with the answer check, or alone with
expert_iteration.verified_only=False); and the knobs of configs/rest_em_arith.py.

Args: `runlocal` (a few problems and steps, for tests), `countdown` (the Countdown task).
"""

import ml_collections

from configs import common, rest_em_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, countdown=False)
  config = ml_collections.ConfigDict()
  config.name = "b_star_countdown" if arg.countdown else "b_star_arith"
  rest_em_arith.expert_iteration(config, runlocal=arg.runlocal, countdown=arg.countdown)
  # Each round continues from the last policy (the paper's online iterations); the reward
  # model's thresholds only matter when reward_model.path is set.
  config.expert_iteration.restart = "continue"
  config.expert_iteration.balance.update({
      "temperatures": (0.5, 0.7, 0.9, 1.1), "thresholds": (0.0, 0.3, 0.5, 0.7, 0.9),
      "target": 4})
  if arg.runlocal:
    config.expert_iteration.balance.update({
        "temperatures": (0.7, 1.1), "thresholds": (), "probe_problems": 6})
  return config
