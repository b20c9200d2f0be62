"""SFT of a small decoder from scratch on arithmetic chains.

    python -m reasonjax.main --config=configs/sft_arith.py --workdir=runs/sft_arith
    python -m reasonjax.main --config=configs/sft_arith.py:runlocal --workdir=/tmp/sft

Args: `runlocal` (a smaller model and a few steps: a CPU minute, for tests).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "sft"
  config.name = "sft"
  config.seed = 0
  config.init_from = ""  # A Hugging Face folder to start from instead of a new model.
  config.tokenizer = "synthetic"
  config.task = ml_collections.ConfigDict({
      "name": "arithmetic", "num_train": 50_000,
      "knobs": {"min_steps": 2, "max_steps": 3, "max_operand": 9, "max_value": 99,
                "ops": "+-*"}})
  # A 0.9M-parameter decoder (the tiny preset, narrower): about 20 minutes on 2 CPU cores.
  config.model = ml_collections.ConfigDict({
      "preset": "tiny", "hf_path": "", "vocab_size": 512, "num_layers": 4, "hidden_size": 128,
      "intermediate_size": 512, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32,
      "dtype": "float32", "param_dtype": "float32", "remat": "none"})
  common.loop(config, steps=1000, batch_size=32, seq_len=128, learning_rate=2e-3,
              warmup_steps=50, eval_every=250, checkpoint_every=250)
  config.pack = True
  config.label_smoothing = 0.0
  # > 0 (with init_from): + kl_weight * log(1 + KL(start || policy)), the HRM paper's
  # self-training regulariser.
  config.kl_weight = 0.0
  config.z_loss = 0.0
  config.eval = common.evaluation()
  if arg.runlocal:
    config.model.update({"num_layers": 2, "intermediate_size": 256})
    config.task.num_train = 1500
    config.task.knobs = {"min_steps": 1, "max_steps": 2, "max_operand": 9, "max_value": 30,
                         "ops": "+-"}
    common.loop(config, steps=120, batch_size=16, seq_len=128, learning_rate=3e-3,
                warmup_steps=10, log_every=5, eval_every=60, checkpoint_every=60)
    config.eval = common.evaluation(num_problems=32, num_samples=4, k=4)
  return config


def nested(runlocal: bool) -> ml_collections.ConfigDict:
  """This config as the nested SFT run of a method that starts from a policy
  (`common.post_training`)."""
  sft = get_config("runlocal" if runlocal else None)
  if runlocal:
    # The method evaluates its starting policy itself (eval_at_start): the nested run's midway
    # and pass@k evaluations would only add their sampling and compilation to a CPU minute.
    sft.eval_every = 0
    sft.eval.num_samples = 0
  return sft
