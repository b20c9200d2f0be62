"""DPO on pairs of the SFT policy's own correct and incorrect solutions to arithmetic chains.

    python -m reasonjax.main --config=configs/dpo_arith.py --workdir=runs/dpo_arith \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/dpo_arith.py:runlocal --workdir=/tmp/dpo

Without `init_from`, the SFT run of configs/sft_arith.py (with the same arg; under runlocal it
evaluates only greedily, at its end) is trained first into workdir/sft. `--config.loss` picks any
loss of `loss_kwargs` (the DPO family).

Args: `runlocal` (a small model, few pairs and steps: a CPU minute, for tests).
"""

import ml_collections

from configs import common, sft_arith


def pairs(section: ml_collections.ConfigDict, *, max_per_problem: int
          ) -> ml_collections.ConfigDict:
  """The pairs section: how the policy samples (`section`), pairs per problem at most, and
  where pairs come from: "samples" (a right and a wrong solution of a problem), "trees"
  (Step-DPO: sibling steps of a step tree of num_samples children per node and max_depth
  levels, whose values differ by margin or more; configs/step_dpo_arith.py) or "corrections"
  (SCL: num_samples second attempts after each of first_samples first attempts and the cue;
  configs/scl_arith.py)."""
  section.update({"max_per_problem": max_per_problem, "source": "samples", "max_depth": 4,
                  "max_step_tokens": 24, "margin": 0.5, "first_samples": 2,
                  "cue": "Let me check that again."})
  return section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "dpo"
  config.name = "dpo"
  common.post_training(config, sft_arith.nested(arg.runlocal))
  config.task.num_train = 2000  # Problems to sample pairs on.
  config.pairs = pairs(common.rollouts(num_samples=8), max_per_problem=2)
  config.loss = "dpo"
  # One entry per loss of losses.preference.LOSSES (formulas and papers in its docstrings);
  # `average_tokens` is the trainer's: it feeds the loss per-token mean log-probs instead of sums.
  config.loss_kwargs = ml_collections.ConfigDict({
      "dpo": {"beta": 0.1, "label_smoothing": 0.0},
      "robust_dpo": {"beta": 0.1, "label_smoothing": 0.1},
      # The paper's (and TRL's) IPO is on per-token means: the target 1 / (2 beta) is per token.
      "ipo": {"beta": 0.1, "average_tokens": True},
      "hinge": {"beta": 0.1},
      "reference_free": {"beta": 0.1},
      "simpo": {"beta": 2.0, "gamma": 1.0},
      "orpo": {"lam": 0.1},
      # eps > 0 is required (the reverse KL to a hard label is infinite); 1e-3 as TRL.
      "exo_pair": {"beta": 0.1, "label_smoothing": 1e-3},
      "nca_pair": {"beta": 0.1},
      # delta (the reward shift) is the batch mean unless set: a stateless stand-in for TRL's
      # running mean.
      "bco_pair": {"beta": 0.1},
      "sppo_hard": {"beta": 0.1},  # targets +-1 / (2 beta) = +-5 nats of log-ratio
      "aot_paired": {"beta": 0.1, "label_smoothing": 0.0},
      "aot_unpaired": {"beta": 0.1, "label_smoothing": 0.0},
      "apo_zero": {"beta": 0.1},
      "apo_down": {"beta": 0.1},
      "discopop": {"beta": 0.05, "tau": 0.05},  # the paper's values
      # On per-token means: about DPO's 0.1 times the ~35-token solutions (Tulu 3 uses 5).
      "ln_dpo": {"beta": 3.0, "label_smoothing": 0.0},
      # alpha in (0, 1]: -> 0 is DPO, 1 the forward KL (TRL's default); 0.5 between.
      "f_dpo_alpha": {"beta": 0.1, "alpha": 0.5, "label_smoothing": 0.0},
      "f_dpo_js": {"beta": 0.1, "label_smoothing": 0.0},
      # MPO's mixture: preference (sigmoid DPO), quality (BCO) and generation (SFT, the chosen
      # response's mean token NLL) terms, with the paper's weights.
      "mixture": {"weights": {"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0},
                  "kwargs": {"dpo": {"beta": 0.1}, "bco_pair": {"beta": 0.1}}},
  })
  # Few epochs over the pairs at a low rate: at 5e-5 for 150 steps over 71 pairs (33 epochs)
  # the preference loss fell but greedy accuracy dropped from 100% to 35%.
  common.loop(config, steps=100, batch_size=16, seq_len=128, learning_rate=1e-5,
              warmup_steps=10, eval_every=50, checkpoint_every=50)
  config.optimizer.weight_decay = 0.0
  config.eval_at_start = True  # The starting policy's numbers, for comparison.
  config.eval = common.evaluation()
  if arg.runlocal:
    config.task.num_train = 128
    config.pairs = pairs(common.rollouts(num_samples=8, max_new_tokens=48), max_per_problem=1)
    common.loop(config, steps=20, batch_size=8, seq_len=96, learning_rate=1e-4,
                warmup_steps=2, log_every=2, checkpoint_every=10)
    config.eval = common.evaluation(num_problems=32, max_new_tokens=48, num_samples=0)
  return config
