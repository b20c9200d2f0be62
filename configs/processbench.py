"""ProcessBench (first wrong step, human labels) for a PRM or HRM; optionally trained first on
PRM800K phase 1 from a Hugging Face checkpoint, on accelerators.

    python -m reasonjax.main --config=configs/processbench.py --workdir=runs/processbench \\
        --config.reward_model=runs/hrm_gsm8k/rm_hrm/hf --config.data.dir=path/to/processbench
    python -m reasonjax.main --config=configs/processbench.py --workdir=runs/prm800k_hrm \\
        --config.init_from=path/to/Qwen2.5-Math-1.5B-Instruct --config.data.dir=... \\
        --config.train.path=path/to/phase1_train_plus.stepwise-critic.jsonl.gz

`data.dir` holds ProcessBench's <split>.json files (gsm8k, math, olympiadbench, omnimath);
nothing is downloaded. The tokenizer is `tokenizer`, else the checkpoint's own.

Args: `runlocal` (three rows of one split and two training steps: the CPU test, with the tiny
random checkpoint of tests/programs/test_gsm8k_configs.py and the rows in tests/fixtures).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "process_bench"
  config.name = "process_bench"
  config.seed = 0
  config.reward_model = ""  # A reward_model export (workdir/hf) to evaluate.
  config.init_from = ""  # A Hugging Face checkpoint to train one from (with train.path).
  config.tokenizer = ""  # "": the reward model's (or init_from's) own.
  config.model = ml_collections.ConfigDict({"dtype": "bfloat16", "param_dtype": "float32",
                                            "remat": "full"})
  config.prompt = "{problem}\n"  # What precedes the steps; the training data's format.
  config.data = ml_collections.ConfigDict({
      "dir": "", "splits": ("gsm8k", "math", "olympiadbench", "omnimath"),
      "max_rows": 0,  # 0: every row
      "max_len": 4096,  # longer solutions are skipped (and counted), not cut
      "batch_size": 16, "held_out_fraction": 0.5,
      "threshold": -1.0})  # < 0: chosen on the held-out part of each split
  # Training on PRM800K phase 1 (the stepwise conversion): labels +1 -> 1, -1 -> 0, 0 ->
  # neutral; hrm adds merged consecutive step pairs (data.step_labels.hierarchical_units).
  config.train = ml_collections.ConfigDict({
      "path": "", "granularity": "hrm", "neutral": 1.0, "max_records": 0, "label_kind": "bce",
      "pack": True})
  common.loop(config.train, steps=2000, batch_size=64, seq_len=1024, learning_rate=1e-5,
              warmup_steps=50, log_every=50, checkpoint_every=500)
  if arg.runlocal:
    config.model.update({"dtype": "float32", "remat": "none"})
    config.data.update({"splits": ("gsm8k",), "max_rows": 3, "max_len": 1024,
                        "batch_size": 2})
    common.loop(config.train, steps=2, batch_size=2, seq_len=1024, learning_rate=1e-4,
                warmup_steps=0, log_every=1, checkpoint_every=2)
  return config
