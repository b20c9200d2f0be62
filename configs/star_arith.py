"""STaR on arithmetic chains: expert iteration with rationalisation and growing rounds.

STaR on arithmetic chains: expert iteration with one sample per problem, rationalisation of
the unsolved problems (sampled again with the answer as a hint, trained on without it) and a
training budget that grows 20% a round (programs/expert_iteration.py). Zelikman et al. 2022,
"STaR: Bootstrapping Reasoning With Reasoning".

    python -m reasonjax.main --config=configs/star_arith.py --workdir=runs/star
    python -m reasonjax.main --config=configs/star_arith.py:runlocal --workdir=/tmp/star \
        --config.init_from=/tmp/sft/hf

Knobs: as configs/rest_em_arith.py, and expert_iteration.rationalize, .hint (with {answer}),
.steps_growth.

Args: `runlocal` (a few problems and steps, for tests), `countdown` (the Countdown task).
"""

import ml_collections

from configs import common, rest_em_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, countdown=False)
  config = ml_collections.ConfigDict()
  config.name = "star_countdown" if arg.countdown else "star_arith"
  rest_em_arith.expert_iteration(config, runlocal=arg.runlocal, countdown=arg.countdown)
  # One rationale per problem, kept when right (the paper samples one and falls back to the
  # hint); rationalisation; the paper's 20% more steps per outer loop.
  config.rollouts.num_samples = 1
  config.expert_iteration.update({"max_per_problem": 1, "rationalize": True,
                                  "steps_growth": 0.2})
  return config
