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
