"""The HRM reproduction on GSM8K from a Hugging Face checkpoint (e.g. Qwen2.5-Math-1.5B), for
accelerators: trees, ORM / PRM / HRM / HRM+HNC, search evaluation, reward hacking and
self-training, as configs/hrm_arith.py, with the policy's own chat format.

    python -m reasonjax.main --config=configs/hrm_gsm8k.py --workdir=runs/hrm_gsm8k \\
        --config.init_from=path/to/Qwen2.5-Math-1.5B-Instruct \\
        --config.tokenizer=path/to/Qwen2.5-Math-1.5B-Instruct \\
        --config.task.knobs.train_path=path/to/gsm8k/train.jsonl \\
        --config.task.knobs.test_path=path/to/gsm8k/test.jsonl
    python -m reasonjax.main --config=configs/hrm_gsm8k.py:runlocal --workdir=/tmp/hrm_gsm8k \\
        --config.init_from=... --config.tokenizer=... --config.task.knobs.train_path=... \\
        --config.task.knobs.test_path=...

GSM8K has no per-step ground truth: no oracle rows and no first-error stage (the ProcessBench
config measures that on human labels). Steps are the lines of a solution; a leaf is right when
its final number is the gold one.

Args: `runlocal` (each stage on two problems and a step or two: a few CPU minutes with the tiny
random checkpoint and tokenizer that tests/programs/test_gsm8k_configs.py builds).
"""

import ml_collections

from configs import common, grpo_arith, grpo_gsm8k, hrm_arith, sft_gsm8k


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = hrm_arith.get_config()
  config.name = "hrm_gsm8k"
  for key in ("sft", "task", "tokenizer", "model"):
    del config[key]
  sft_gsm8k.base(config, num_train=7473)
  config.model.remat = "full"
  config.trees.update({"num_problems": 256, "num_children": 5, "max_step_tokens": 128,
                       "batch_size": 64})
  common.loop(config.reward_models, steps=1000, batch_size=64, seq_len=1024,
              learning_rate=1e-5, warmup_steps=50, log_every=50, checkpoint_every=200)
  config.evaluation.update({
      "num_problems": 500, "oracle": False, "step_greedy_n_values": (1, 2, 4, 8, 16, 32, 64),
      "max_step_tokens": 128, "max_steps": 12, "max_new_tokens": 512, "batch_size": 64,
      "score_batch_size": 64})
  config.first_error.reward_models = ()
  config.hacking = hrm_arith.program(grpo_gsm8k.get_config())
  config.self_training = hrm_arith.program(sft_gsm8k.get_config())
  common.loop(config.self_training, steps=300, batch_size=32, seq_len=512, learning_rate=1e-5,
              warmup_steps=20, eval_every=0, checkpoint_every=100)
  config.self_training.eval = common.evaluation(num_problems=1319, max_new_tokens=512,
                                                num_samples=0, k=1)
  config.kl_weights = (0.5, 5.0)
  if arg.runlocal:
    config.model.update({"dtype": "float32", "remat": "none"})
    config.trees.update({"num_problems": 2, "num_children": 2, "max_depth": 2,
                         "max_step_tokens": 8, "batch_size": 8})
    common.loop(config.reward_models, steps=2, batch_size=4, seq_len=512, learning_rate=1e-4,
                warmup_steps=0, log_every=1, checkpoint_every=2)
    config.evaluation.update({"num_problems": 2, "seeds": (0,), "n_values": (1, 2),
                              "step_greedy_n_values": (1,), "max_step_tokens": 8,
                              "max_steps": 2, "max_new_tokens": 16, "batch_size": 8,
                              "score_batch_size": 8})
    config.hacking = hrm_arith.program(grpo_gsm8k.get_config("runlocal"))
    grpo_arith.loop(config.hacking, steps=1, learning_rate=1e-4, warmup_steps=0, log_every=1,
                    checkpoint_every=1)
    config.hacking_reward_models = ("hrm",)
    config.self_training = hrm_arith.program(sft_gsm8k.get_config("runlocal"))
    common.loop(config.self_training, steps=1, batch_size=2, seq_len=512, learning_rate=1e-4,
                warmup_steps=0, log_every=1, eval_every=0, checkpoint_every=1)
    config.self_training_reward_models = ("hrm",)
    config.kl_weights = (0.5,)
  return config
