"""Presets shared by the config files: logical-axis rules, meshes, and the config-arg parser."""

from __future__ import annotations

import ml_collections

from reasonjax.models.lora import TARGETS as LORA_TARGETS

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


BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


# (data, fsdp, tensor) for common machines. FSDP shards parameters and optimizer state over the
# fast links (a TPU slice's ICI, a node's NVLink) and data parallelism crosses the slower ones
# (between GPU nodes); tensor parallelism only pays off for models whose layers outgrow a device.
MESH_PRESETS = {
    "cpu": (-1, 1, 1),  # every device data parallel (the tests' 8 CPU devices)
    "v5e-8": (1, 8, 1),  # one TPU v5e host: 8 chips of 16 GiB
    "v5p-64": (1, 32, 1),  # a v5p slice of 32 chips (64 TensorCores) on 8 hosts, one ICI torus
    "8xh100": (1, 8, 1),  # one node of 8 H100 80 GB on NVLink
    "2x8xh100": (2, 8, 1),  # two such nodes: data parallel over InfiniBand, FSDP inside a node
}


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, preset: str | None = None
         ) -> ml_collections.ConfigDict:
  """Mesh sizes; -1 takes the devices the other axes leave. `preset` names a row of
  MESH_PRESETS instead. On the command line: --config.mesh.data=2 --config.mesh.fsdp=8."""
  if preset is not None:
    if preset not in MESH_PRESETS:
      raise ValueError(f"mesh preset {preset!r} is unknown; valid: {sorted(MESH_PRESETS)}")
    data, fsdp, tensor = MESH_PRESETS[preset]
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config arg 'runlocal,preset=tiny' into a ConfigDict over `defaults`.

  A bare word sets a boolean default to True; key=value parses as the default's type (booleans:
  true/false, 1/0, yes/no). Unknown names and unparsable values raise with the valid ones.
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
      if value.lower() not in BOOLEANS:
        raise ValueError(f"config arg {item!r}: {key} is a boolean; write one of "
                         f"{sorted(BOOLEANS)}")
      out[key] = BOOLEANS[value.lower()]
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config arg {item!r}: {key} expects a {type(default).__name__}, like "
                         f"the default {default!r}") from None
  return out


def loop(config: ml_collections.ConfigDict, *, steps: int, batch_size: int, seq_len: int,
         learning_rate: float, warmup_steps: int, log_every: int = 10, eval_every: int = 0,
         checkpoint_every: int = 200) -> None:
  """Sets the fields the training loop reads (reasonjax/training/loop.py) on `config`.

  The arguments are always set. The other fields get their defaults only where `config` has
  none yet, so a config may set them before calling this, and a variant (runlocal) may call it
  again to shrink the run without undoing them. Likewise for the optimizer's fields besides
  learning_rate and warmup_steps.
  """
  config.steps = steps
  config.batch_size = batch_size  # Global: split over processes.
  config.seq_len = seq_len
  config.log_every = log_every
  config.eval_every = eval_every  # 0: evaluate at the end only.
  config.checkpoint_every = checkpoint_every  # 0: only at the end and when stopped.
  defaults = {
      "accum_steps": 1, "keep_checkpoints": 2, "eval_at_start": False,
      # newest_intact, newest, or a step number: which checkpoint a rerun resumes from.
      "resume_from": "newest_intact", "optimizer": ml_collections.ConfigDict(),
      # Refuse, at start, a run the memory planner says cannot fit (training/memory.py).
      "check_memory": True,
      "mesh": mesh(), "axis_rules": AXIS_RULES,
      # rank > 0: train LoRA adapters of `targets` on a frozen init_from (training/loop.py);
      # alpha / rank scales the update. modules_to_save: heads trained in full beside them
      # (a reward model's score head always is).
      "lora": ml_collections.ConfigDict({"rank": 0, "alpha": 16.0, "targets": LORA_TARGETS,
                                         "modules_to_save": ()})}
  optimizer = {"weight_decay": 0.1, "clip_norm": 1.0, "b2": 0.99, "max_nonfinite_steps": 10}
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
  for key, value in optimizer.items():
    if key not in config.optimizer:
      config.optimizer[key] = value
  config.optimizer.learning_rate = learning_rate
  config.optimizer.warmup_steps = warmup_steps


def evaluation(num_problems: int = 200, max_new_tokens: int = 64, num_samples: int = 8,
               k: int = 8) -> ml_collections.ConfigDict:
  """Greedy accuracy on num_problems test problems, pass@k from num_samples samples at T=1."""
  return ml_collections.ConfigDict({
      "num_problems": num_problems, "max_new_tokens": max_new_tokens,
      "num_samples": num_samples, "k": k, "temperature": 1.0, "batch_size": 64})


def rollouts(num_samples: int = 8, temperature: float = 1.0, max_new_tokens: int = 64,
             batch_size: int = 256, top_p: float = 1.0) -> ml_collections.ConfigDict:
  """How a policy samples its own training data (`sampling.sampling_config`): num_samples per
  problem, batch_size rows per sampler call; top_p 1.0 samples without nucleus truncation."""
  return ml_collections.ConfigDict({
      "num_samples": num_samples, "temperature": temperature, "top_p": top_p,
      "max_new_tokens": max_new_tokens, "batch_size": batch_size})


def reward_model(path: str = "") -> ml_collections.ConfigDict:
  """A trained reward model as a reward (`rewards.reward_model.check_section`): path, a
  reward_model run's export (workdir/hf), "" for none; granularity, how it was trained (orm, prm,
  hrm); aggregation, a solution's score from its step scores (min, prod, last, mean); batch_size,
  completions per forward pass; score_answers, it was trained on answer lines too (tree data,
  programs/hrm.py)."""
  return ml_collections.ConfigDict({
      "path": path, "granularity": "prm", "aggregation": "min", "batch_size": 64,
      "score_answers": False})


def post_training(config: ml_collections.ConfigDict, sft: ml_collections.ConfigDict) -> None:
  """Fields of a method that starts from a policy: `sft`, the nested SFT run that makes one (used
  when `init_from`, a Hugging Face folder, is empty; e.g. `configs.sft_arith.nested`), its task
  and tokenizer, runtime model fields."""
  config.sft = sft
  config.init_from = ""
  config.seed = 0
  config.tokenizer = sft.tokenizer
  config.task = ml_collections.ConfigDict(sft.task.to_dict())
  config.model = ml_collections.ConfigDict({"dtype": "float32", "param_dtype": "float32",
                                            "remat": "none"})
