"""CoSC on arithmetic chains: programs run in the sandbox, checked and corrected, self-trained.

Code self-correction on arithmetic chains: the policy answers by writing a program, the host
runs it in the sandbox and appends its output, the policy checks the program against the
question and either corrects it or gives the answer (the format of `data/tasks/code.py`,
sampled by `generate_texts(..., tool=task.tool)`). Stage 1 fine-tunes on seed traces that the
task writes, a fraction of them correcting a wrong first program (`config.sft`); stage 2 is
self-enhancement: rounds of sampling the policy with the tool, keeping its verified traces and
fine-tuning on them (programs/expert_iteration.py, `restart="continue"`). Every evaluation runs
the programs too. Gao et al. 2024, "Embedding Self-Correction as an Inherent Ability in Large
Language Models for Enhanced Mathematical Reasoning" (their seeds came from GPT-4).

    python -m reasonjax.main --config=configs/cosc_arith.py --workdir=runs/cosc
    python -m reasonjax.main --config=configs/cosc_arith.py:runlocal --workdir=/tmp/cosc \
        --config.sft.init_from=/tmp/sft/hf

Knobs: task.code (error_rate: the seeds that correct a wrong first program; timeout_s,
memory_mb: the sandbox's limits per run; max_calls: runs per sample; max_output_chars), sft
(stage 1's steps and learning rate; sft.init_from to start from a trained policy), and those of
configs/rest_em_arith.py for stage 2 (expert_iteration.rounds, rollouts.num_samples, train).

Args: `runlocal` (a few problems and steps, for tests).
"""

import ml_collections

from configs import common, rest_em_arith

# Knobs of the code format (data.tasks.with_code): CoSC's seeds are mostly right first time.
CODE = {"error_rate": 0.3, "timeout_s": 2.0, "memory_mb": 256, "max_calls": 3,
        "max_output_chars": 200}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.name = "cosc_arith"
  rest_em_arith.expert_iteration(config, runlocal=arg.runlocal, countdown=False)
  config.expert_iteration.restart = "continue"  # stage 2 goes on from stage 1's policy
  for section in (config.task, config.sft.task):
    section.code = ml_collections.ConfigDict(CODE)
  # A trace holds up to max_calls programs: longer sequences, and a budget per program.
  config.sft.seq_len = config.train.seq_len = 320
  config.sft.pack = config.train.pack = True
  config.rollouts.max_new_tokens = 96
  config.sft.eval.max_new_tokens = config.train.eval.max_new_tokens = 96
  if arg.runlocal:
    # Stage 1 continues a trained policy (--config.sft.init_from) for a few steps: about
    # enough for the format, in a test's time; stage 2 evaluates it (start.json).
    common.loop(config.sft, steps=100, batch_size=16, seq_len=256, learning_rate=4e-3,
                warmup_steps=4, log_every=10, eval_every=0, checkpoint_every=100)
    config.sft.eval.num_problems = 0
    config.sft.task.num_train = 400
    config.expert_iteration.rounds = 1
  return config
