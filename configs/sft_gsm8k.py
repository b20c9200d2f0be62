"""SFT of a Hugging Face checkpoint (e.g. Qwen2.5-0.5B-Instruct) on GSM8K's gold solutions.

    python -m reasonjax.main --config=configs/sft_gsm8k.py --workdir=runs/sft_gsm8k \\
        --config.init_from=path/to/Qwen2.5-0.5B-Instruct \\
        --config.tokenizer=path/to/Qwen2.5-0.5B-Instruct \\
        --config.task.knobs.train_path=path/to/gsm8k/train.jsonl \\
        --config.task.knobs.test_path=path/to/gsm8k/test.jsonl
    python -m reasonjax.main --config=configs/sft_gsm8k.py:runlocal --workdir=/tmp/sft_gsm8k \\
        --config.init_from=... --config.tokenizer=... --config.task.knobs.train_path=... \\
        --config.task.knobs.test_path=...

The files are GSM8K's JSONL (openai/grade-school-math); nothing is downloaded. Prompts are the
question and an instruction to end with '#### <answer>', in the tokenizer's chat template
(`task.knobs.template`, "plain" for a base model; the task's `tokenizer` knob follows
`config.tokenizer`). The targets are the gold solutions without calculator notes, ending in
'#### N', then EOS. The export (workdir/hf) is what configs/grpo_gsm8k.py starts from.

Args: `runlocal` (a few steps on a handful of problems: about a CPU minute with the tiny random
checkpoint and tokenizer that tests/programs/test_gsm8k_configs.py builds).
"""

import ml_collections

from configs import common
from reasonjax.data.tasks import jsonl


def base(config: ml_collections.ConfigDict, *, num_train: int) -> None:
  """The fields configs/grpo_gsm8k.py shares: checkpoint, tokenizer, the gsm8k task."""
  config.seed = 0
  config.init_from = ""  # A Hugging Face folder (config.json + safetensors); required.
  config.tokenizer = ""  # A Hugging Face tokenizer folder, usually the same as init_from.
  config.task = ml_collections.ConfigDict({
      "name": "gsm8k", "num_train": num_train,  # more than the file holds: all of it
      "knobs": {"train_path": "", "test_path": "", "template": "chat",
                "instruction": jsonl.GSM8K_INSTRUCTION, "system": "",
                # One value: the chat template is the tokenizer's (`--config.tokenizer` sets both).
                "tokenizer": config.get_ref("tokenizer"), "on_error": "raise"}})
  # Runtime fields only: the architecture is the checkpoint's.
  config.model = ml_collections.ConfigDict({"dtype": "bfloat16", "param_dtype": "float32",
                                            "remat": "none"})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "sft"
  config.name = "sft_gsm8k"
  base(config, num_train=7473)  # all of GSM8K's train split
  # About 2 epochs of 7473 solutions (~300 tokens each in the chat template, packed).
  common.loop(config, steps=450, batch_size=32, seq_len=512, learning_rate=1e-5,
              warmup_steps=20, eval_every=150, checkpoint_every=150)
  config.pack = True
  config.label_smoothing = 0.0
  config.kl_weight = 0.0  # > 0: + kl_weight * log(1 + KL(start || policy)) (programs/sft.py)
  config.z_loss = 0.0
  # Greedy accuracy on the whole test split (1319 problems).
  config.eval = common.evaluation(num_problems=1319, max_new_tokens=512, num_samples=0, k=1)
  if arg.runlocal:
    config.model.dtype = "float32"  # bfloat16 matmuls are emulated, slowly, on CPU
    config.task.num_train = 32
    common.loop(config, steps=4, batch_size=4, seq_len=256, learning_rate=1e-3,
                warmup_steps=0, log_every=1, eval_every=0, checkpoint_every=4)
    config.eval = common.evaluation(num_problems=4, max_new_tokens=16, num_samples=0, k=1)
  return config
