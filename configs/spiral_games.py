"""SPIRAL: one policy trained by self-play on TicTacToe and Kuhn poker (Liu et al. 2025, "SPIRAL:
Self-Play on Zero-Sum Games Incentivizes Reasoning via Multi-Agent Multi-Turn Reinforcement
Learning"); reasonjax/programs/self_play.py.

    python -m reasonjax.main --config=configs/spiral_games.py --workdir=runs/spiral \
        --config.init_from=path/to/hf_model --config.tokenizer=path/to/hf_model
    python -m reasonjax.main --config=configs/spiral_games.py:runlocal --workdir=/tmp/spiral

Without `init_from`, the SFT run of configs/sft_arith.py (with the same arg) is trained first
into workdir/sft: a policy that has never seen a game, so it mostly loses by invalid moves and
the run only exercises the pipeline. The paper starts from an instruction-following model
(Qwen3-4B-Base); give one with `init_from` and its tokenizer, and raise
`self_play.max_new_tokens` for reasoning before the move.

Knobs (`self_play`): `games` (names in `reasonjax.games.GAMES`), `episodes` of each game per
iteration, `max_turns` (an unfinished episode ends as a draw), `invalid` (how a reply without a
legal move scores: "loss", SPIRAL's, or "forfeit"), `rae_alpha` (the EMA decay of the
per-(game, role) baselines of Role-conditioned Advantage Estimation), `temperature`, `top_p`,
`max_new_tokens` (per reply), `prompt_width` (tokens every observation is padded to; a longer
one is refused) and `batch_rows` (turns per optimizer step; an iteration takes as many steps as
its turns fill). `eval.episodes` per game and seat against a random legal-move opponent.
`policy_loss` has the GRPO trainer's fields, without the KL term (`beta=0`). With `epochs=1`
each turn is trained on once: an iteration's first step is on policy (ratio 1, a plain policy
gradient with RAE advantages); its later steps are a few updates stale, which the ratio corrects
and the clip bounds.

Args: `runlocal` (a small model, a few iterations: a CPU minute, for tests).
"""

import ml_collections

from configs import common, grpo_arith, sft_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.name = "spiral"
  common.post_training(config, sft_arith.nested(arg.runlocal))
  config.trainer = "self_play"
  config.self_play = ml_collections.ConfigDict({
      "games": ("tictactoe", "kuhn_poker"), "episodes": 64, "max_turns": 9, "invalid": "loss",
      "rae_alpha": 0.95, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 128,
      # The synthetic tokenizer spells an observation in about 460 tokens.
      "prompt_width": 512, "batch_rows": 64})
  # The GRPO trainer's policy_loss fields (losses.policy.policy_loss), without the KL term.
  grpo_fields = ml_collections.ConfigDict()
  grpo_arith.grpo(grpo_fields)
  config.policy_loss = grpo_fields.policy_loss
  config.policy_loss.beta = 0.0
  # grpo, bnpo or dapo: the aggregations that leave a minibatch's padding rows out.
  config.aggregation = "grpo"
  config.epochs = 1  # passes over each iteration's turns
  grpo_arith.loop(config, steps=500, learning_rate=3e-5, warmup_steps=10, eval_every=100,
                  checkpoint_every=100)
  # Greedy would be deterministic against the same deals; the policy trained is the sampled one.
  config.eval = ml_collections.ConfigDict({"episodes": 64, "temperature": 1.0})
  if arg.runlocal:
    config.self_play.update({"episodes": 4, "max_new_tokens": 16, "batch_rows": 8})
    grpo_arith.loop(config, steps=4, learning_rate=5e-5, warmup_steps=1, log_every=1,
                    checkpoint_every=2)
    config.eval.episodes = 4
  return config
