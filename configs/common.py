"""Presets shared by the config files: logical-axis rules, meshes, and the config-arg parser."""

from __future__ import annotations

import ml_collections

# Logical axis -> mesh axis. Parameters shard their `embed` dim over fsdp (ZeRO-3 style) and
# heads / mlp / vocab over tensor (Megatron style); activations shard the batch over data and fsdp.
AXIS_RULES = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_len", None),
)


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh sizes; -1 takes the devices the other axes leave."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config arg 'runlocal,preset=tiny' into a ConfigDict over `defaults`.

  A bare word sets a boolean default to True; key=value parses as the default's type. Unknown
  names raise with the valid ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg {key!r} is unknown; valid: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(default)(value)
  return out


def loop(config: ml_collections.ConfigDict, *, steps: int, batch_size: int, seq_len: int,
         learning_rate: float, warmup_steps: int, log_every: int = 10, eval_every: int = 0,
         checkpoint_every: int = 200) -> None:
  """Sets the fields the training loop reads (reasonjax/trainers/loop.py) on `config`."""
  config.steps = steps
  config.batch_size = batch_size  # Global: split over processes.
  config.seq_len = seq_len
  config.accum_steps = 1
  config.log_every = log_every
  config.eval_every = eval_every  # 0: evaluate at the end only.
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = 2
  config.eval_at_start = False
  config.optimizer = ml_collections.ConfigDict({
      "learning_rate": learning_rate, "warmup_steps": warmup_steps, "weight_decay": 0.1,
      "clip_norm": 1.0, "b2": 0.99, "max_nonfinite_steps": 10})
  config.mesh = mesh()
  config.axis_rules = AXIS_RULES


def evaluation(num_problems: int = 200, max_new_tokens: int = 64, num_samples: int = 8,
               k: int = 8) -> ml_collections.ConfigDict:
  """Greedy accuracy on num_problems test problems, pass@k from num_samples samples at T=1."""
  return ml_collections.ConfigDict({
      "num_problems": num_problems, "max_new_tokens": max_new_tokens,
      "num_samples": num_samples, "k": k, "temperature": 1.0, "batch_size": 64})


def rollouts(num_samples: int = 8, temperature: float = 1.0, max_new_tokens: int = 64,
             batch_size: int = 256) -> ml_collections.ConfigDict:
  """How a policy samples its own training data: num_samples per problem, batch_size rows per
  sampler call."""
  return ml_collections.ConfigDict({
      "num_samples": num_samples, "temperature": temperature, "max_new_tokens": max_new_tokens,
      "batch_size": batch_size})


def post_training(config: ml_collections.ConfigDict, runlocal: bool) -> None:
  """Fields of a method that starts from a policy: the nested SFT run of configs/sft_arith.py that
  makes one (used when `init_from`, a Hugging Face folder, is empty), its task and tokenizer,
  runtime model fields."""
  from configs import sft_arith  # Not at the top: sft_arith imports this module.

  sft = sft_arith.get_config("runlocal" if runlocal else None)
  if runlocal:
    # The method evaluates its starting policy itself (eval_at_start): the nested run's midway
    # and pass@k evaluations would only add their sampling and compilation to a CPU minute.
    sft.eval_every = 0
    sft.eval.num_samples = 0
  config.sft = sft
  config.init_from = ""
  config.seed = 0
  config.tokenizer = sft.tokenizer
  config.task = ml_collections.ConfigDict(sft.task.to_dict())
  config.model = ml_collections.ConfigDict({"dtype": "float32", "param_dtype": "float32",
                                            "remat": "none"})


def reward_model(arg: str | None, *, loss: str) -> ml_collections.ConfigDict:
  """The ORM / PRM / HRM configs on arithmetic chains (trainer reward_model), `loss` their
  default."""
  arg = parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "reward_model"
  config.name = loss
  post_training(config, arg.runlocal)
  config.task.num_train = 1000  # Problems whose sampled solutions are labelled.
  config.rollouts = rollouts(num_samples=4)
  config.loss = loss  # orm, prm or hrm
  config.label_kind = "bce"  # bce or mse
  config.pack = True
  loop(config, steps=300, batch_size=32, seq_len=256, learning_rate=1e-4, warmup_steps=20,
       eval_every=100, checkpoint_every=100)
  config.eval_at_start = True  # The untrained head's numbers, for comparison.
  config.eval = evaluation(num_problems=100)
  if arg.runlocal:
    config.task.num_train = 64
    config.rollouts = rollouts(num_samples=4, max_new_tokens=48)
    loop(config, steps=20, batch_size=8, seq_len=128, learning_rate=1e-3, warmup_steps=2,
         log_every=2, checkpoint_every=10)
    config.eval = evaluation(num_problems=16, max_new_tokens=48)
    config.eval_at_start = True
  return config
