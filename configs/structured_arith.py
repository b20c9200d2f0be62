"""Structured reasoning on arithmetic chains: format tuning on seed traces, then GRPO with
format rewards.

Stage 1 (`config.sft`) fine-tunes on seed traces in a structured format (`data/tasks/
structured.py`, `config.task.format`); stage 2 is GRPO from its export, rewarded for the answer
and for the format (`rewards.format`: `Task.well_formed`). Two formats:
- `coat` (default): Satori's chain of action-thought, every line opened by a meta-action
  (`<|continue|>`, `<|reflect|>`, `<|explore|>`), a fraction `task.format.error_rate` of the seeds
  refuting a wrong step and exploring the right one. Shen et al. 2025, "Satori: Reinforcement
  Learning with Chain-of-Action-Thought Enhances LLM Reasoning via Autoregressive Search".
  Satori's restart-and-explore rollouts are not part of this config.
- `refine`: ReFIne's tagged sections (understanding, facts, plan, think, final_answer,
  self_assessment), rewarded also for calibrated confidence (`rewards.calibration`: 1 - (c -
  correct)^2). Sun et al. 2025, "ReFIne: A Framework for Trustworthy Large Reasoning Models with
  Reliability, Faithfulness, and Interpretability".
The papers' format data come from larger models; the seeds here are written from the task's own
steps.

    python -m reasonjax.main --config=configs/structured_arith.py --workdir=runs/coat
    python -m reasonjax.main --config=configs/structured_arith.py:refine --workdir=runs/refine
    python -m reasonjax.main --config=configs/structured_arith.py:runlocal --workdir=/tmp/coat \
        --config.sft.init_from=/tmp/sft/hf

Knobs: task.format (style, error_rate), sft (stage 1's steps and learning rate; sft.init_from to
continue a trained policy), rewards (format, calibration weights) and every GRPO knob
(configs/grpo_arith.py). `rollout_reward_format` and `rollout_reward_calibration` log the two
rewards per step.

Args: `runlocal` (stage 1 continues a policy for a few steps, then a few GRPO iterations, for
tests), `refine` (ReFIne's format instead of COAT's).
"""

import ml_collections

from configs import common, grpo_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, refine=False)
  config = grpo_arith.get_config("runlocal" if arg.runlocal else None)
  style = "refine" if arg.refine else "coat"
  config.name = style
  for section in (config.task, config.sft.task):
    section.format = ml_collections.ConfigDict({"style": style, "error_rate": 0.3})
  config.rewards.update({"correctness": 1.0, "format": 0.2,
                         "calibration": 0.2 if arg.refine else 0.0})
  # The formats take more tokens than plain steps (ReFIne's sections about twice as many).
  # On the synthetic tokenizer (characters) a COAT seed takes up to about 150 tokens, a ReFIne
  # one about 220.
  tokens = 256 if arg.refine else 192
  config.rollouts.max_new_tokens = config.eval.max_new_tokens = tokens
  config.sft.seq_len = 384
  config.sft.eval.max_new_tokens = tokens
  if arg.runlocal:
    # Stage 1 continues a trained policy (--config.sft.init_from). Measured from the suite's
    # SFT start (COAT): after 60 steps no GRPO sample is in the format, after 120 steps 28% and
    # 47% in the first two iterations, though the policy then solves almost nothing: enough
    # for a test of the machinery, not a result.
    common.loop(config.sft, steps=120, batch_size=16, seq_len=256 if arg.refine else 192,
                learning_rate=4e-3, warmup_steps=4, log_every=10, eval_every=0,
                checkpoint_every=120)
    config.sft.eval.num_problems = 0
    config.sft.task.num_train = 400
  return config
