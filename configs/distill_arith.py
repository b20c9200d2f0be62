"""Distillation of the arithmetic SFT policy into a student of half its layers and width (GKD).

Distillation of the arithmetic SFT policy into a smaller student: the generalised JSD between
the teacher's and the student's next-token distributions, on gold, teacher or (with probability
on_policy_fraction) the student's own sequences (reasonjax/programs/distill.py). Agarwal et al.
2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes".

    python -m reasonjax.main --config=configs/distill_arith.py --workdir=runs/distill \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/distill_arith.py:runlocal --workdir=/tmp/distill

Without `init_from` the teacher is trained first (configs/sft_arith.py, nested in workdir/sft).
Knobs (`distill`): `beta` (0: forward KL, the supervised-KD loss; 1: reverse KL; between: the
generalised JSD), `loss_temperature` (divides both models' logits), `on_policy_fraction` (GKD's
lambda: the share of steps whose completions the student samples), `source` ("gold" solutions
or "teacher" samples for the other steps), and the sampling fields (`max_new_tokens`,
`temperature`, `top_p`). `student` is the student's model section (any preset and overrides;
its vocabulary must be the teacher's). The results give the teacher's and the student's
held-out accuracy and parameter counts.

Args: `runlocal` (a smaller teacher and a few steps, for tests).
"""

import ml_collections

from configs import common, sft_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.name = "distill"
  common.post_training(config, sft_arith.nested(arg.runlocal))
  config.trainer = "distill"
  teacher = config.sft.model
  # Half the teacher's layers and width, the same vocabulary and head size.
  config.student = ml_collections.ConfigDict(teacher.to_dict() | {
      "num_layers": max(1, teacher.num_layers // 2), "hidden_size": teacher.hidden_size // 2,
      "intermediate_size": teacher.intermediate_size // 2,
      "num_heads": max(1, teacher.num_heads // 2),
      "num_kv_heads": max(1, teacher.num_kv_heads // 2)})
  # GKD's best settings on its tasks mix on-policy data with a JSD between the two KLs.
  config.distill = ml_collections.ConfigDict({
      "beta": 0.5, "loss_temperature": 1.0, "on_policy_fraction": 0.5, "source": "gold",
      "max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0})
  config.task.num_train = 20_000
  common.loop(config, steps=1000, batch_size=32, seq_len=128, learning_rate=2e-3,
              warmup_steps=50, eval_every=250, checkpoint_every=250)
  config.eval = common.evaluation(num_samples=0, k=1)
  if arg.runlocal:
    config.task.num_train = 256
    config.distill.max_new_tokens = 32
    common.loop(config, steps=6, batch_size=8, seq_len=64, learning_rate=2e-3,
                warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=3)
    config.eval.num_problems = 16
  return config
