"""GRPO on GSM8K from a Hugging Face checkpoint (e.g. Qwen2.5-0.5B-Instruct), rewarded by the
GSM8K grader (`rewards.scoring.Gsm8kVerifier`: the final number against the gold one).

    python -m reasonjax.main --config=configs/grpo_gsm8k.py --workdir=runs/grpo_gsm8k \\
        --config.init_from=path/to/Qwen2.5-0.5B-Instruct \\
        --config.tokenizer=path/to/Qwen2.5-0.5B-Instruct \\
        --config.task.knobs.train_path=path/to/gsm8k/train.jsonl \\
        --config.task.knobs.test_path=path/to/gsm8k/test.jsonl
    python -m reasonjax.main --config=configs/grpo_gsm8k.py:runlocal --workdir=/tmp/grpo_gsm8k \\
        --config.init_from=... --config.tokenizer=... --config.task.knobs.train_path=... \\
        --config.task.knobs.test_path=...

`init_from` is required (there is no nested SFT run); an SFT export (configs/sft_gsm8k.py's
workdir/hf, tokenizer included) works as well as the instruct checkpoint. Task, prompts and
variants as in configs/sft_gsm8k.py and configs/grpo_arith.py. MATH: `--config.task.name=math
--config.verifier=math`, a MATH instruction (`task.knobs.instruction`) and the paths of MATH
JSONL files.

Args: `runlocal` (two iterations of a few prompts: about a CPU minute with the tiny random
checkpoint and tokenizer that tests/programs/test_gsm8k_configs.py builds).
"""

import ml_collections

from configs import common, grpo_arith, sft_gsm8k


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.name = "grpo_gsm8k"
  sft_gsm8k.base(config, num_train=7473)
  # Rematerialised layers: a minibatch holds 64 completions of up to 512 tokens.
  config.model.remat = "full"
  grpo_arith.grpo(config)
  config.verifier = "gsm8k"
  config.rollouts.update({"prompts": 32, "num_samples": 8, "max_new_tokens": 512})
  # The format weight rewards the '#### N' line the prompt asks for, a little.
  config.rewards.format = 0.1
  config.scorer_workers = 4
  config.minibatches = 4  # 8 prompts x 8 samples per optimizer step
  # A small KL to the instruct model: its answers are mostly right already, and a 0.5B model
  # drifts fast at larger learning rates.
  config.policy_loss.beta = 0.001
  # 200 iterations of 32 prompts (most of an epoch) x 4 minibatches.
  grpo_arith.loop(config, steps=800, learning_rate=1e-6, warmup_steps=20, eval_every=200,
                  checkpoint_every=100)
  config.eval = common.evaluation(num_problems=1319, max_new_tokens=512, num_samples=0, k=1)
  if arg.runlocal:
    config.model.update({"dtype": "float32", "remat": "none"})
    config.task.num_train = 16
    config.rollouts.update({"prompts": 4, "num_samples": 2, "max_new_tokens": 16})
    config.minibatches = 1
    config.scorer_workers = 0  # grade in the trainer: spawning workers costs more than 8 texts
    grpo_arith.loop(config, steps=2, learning_rate=1e-4, warmup_steps=0, log_every=1,
                    checkpoint_every=2)
    config.eval = common.evaluation(num_problems=4, max_new_tokens=16, num_samples=0, k=1)
  return config
