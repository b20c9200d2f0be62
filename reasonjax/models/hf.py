"""Hugging Face checkpoints <-> (ModelConfig, params), through safetensors and numpy only.

No network and no torch: `load_hf` reads `config.json` and `model.safetensors` (or the shards named
by `model.safetensors.index.json`) from a local folder. Names map by rule from the Flax parameter
tree: `layers/self_attn/q_proj/kernel` [L, D, H, hd] is the stack over i of
`model.layers.{i}.self_attn.q_proj.weight` [H*hd, D], transposed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from reasonjax.models.config import ModelConfig, RopeScaling
from reasonjax.models.decoder import param_shapes

# architecture -> (family, has LM head, has score head)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True, False),
    "Qwen2ForCausalLM": ("qwen2", True, False),
    "Qwen3ForCausalLM": ("qwen3", True, False),
    "LlamaForSequenceClassification": ("llama", False, True),
    "Qwen2ForSequenceClassification": ("qwen2", False, True),
    "Qwen3ForSequenceClassification": ("qwen3", False, True),
}
# Top-level Flax module -> its Hugging Face module name.
MODULE_NAMES = {"embed_tokens": "model.embed_tokens", "norm": "model.norm",
                "layers": "model.layers", "lm_head": "lm_head", "score_head": "score"}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Tensors some checkpoints carry that the model recomputes or shares.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be converted; the message names the file and tensor."""


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
  """ModelConfig from a Hugging Face config dict (transformers 4 or 5 layout)."""
  archs = hf.get("architectures") or []
  if len(archs) != 1 or archs[0] not in ARCHITECTURES:
    raise CheckpointError(f"{source}: architectures={archs} is not supported; expected one of "
                          f"{sorted(ARCHITECTURES)}")
  family, lm_head, score_head = ARCHITECTURES[archs[0]]
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
  if hf.get("use_sliding_window"):
    raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
  if score_head and hf.get("num_labels", len(hf.get("id2label") or [0])) != 1:
    raise CheckpointError(f"{source}: a sequence-classification checkpoint needs num_labels=1 "
                          f"(a scalar score), got id2label={hf.get('id2label')}")
  # transformers 5 writes rope_parameters; 4.x wrote rope_theta + rope_scaling.
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  try:
    scaling = RopeScaling(rope_type=rope_type, factor=float(rope.get("factor", 1.0)),
                          low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                          high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                          original_max_position_embeddings=int(
                              rope.get("original_max_position_embeddings", 8192)))
  except ValueError as e:
    raise CheckpointError(f"{source}: {e}") from None
  heads = hf["num_attention_heads"]
  attention_bias = bool(hf.get("attention_bias", False))
  try:
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, family=family,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2" or attention_bias,
        o_bias=family != "qwen2" and attention_bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3", lm_head=lm_head, score_head=score_head,
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"))
  except KeyError as e:
    raise CheckpointError(f"{source}: required field {e.args[0]!r} is missing") from None


def config_to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """The Hugging Face config dict for `cfg`; raises if no transformers class has these flags."""
  arch = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[cfg.family]
  if cfg.lm_head == cfg.score_head:
    raise ValueError("save_hf writes a causal LM (lm_head only) or a sequence-classification "
                     "model (score_head only), not both")
  arch += "ForCausalLM" if cfg.lm_head else "ForSequenceClassification"
  if cfg.family == "qwen2" and not (cfg.qkv_bias and not cfg.o_bias and not cfg.mlp_bias):
    raise ValueError("Qwen2 checkpoints have q/k/v biases and no o_proj or MLP bias")
  if cfg.family != "qwen2" and cfg.qkv_bias != cfg.o_bias:
    raise ValueError(f"{arch} has one attention_bias flag for q/k/v/o; got qkv_bias="
                     f"{cfg.qkv_bias}, o_bias={cfg.o_bias}")
  if cfg.qk_norm != (cfg.family == "qwen3"):
    raise ValueError("q/k RMSNorm (qk_norm) exists in the qwen3 family only")
  rs = cfg.rope_scaling
  rope = {"rope_type": rs.rope_type, "rope_theta": cfg.rope_theta}
  if rs.rope_type != "default":
    rope["factor"] = rs.factor
  if rs.rope_type == "llama3":
    rope |= {"low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
             "original_max_position_embeddings": rs.original_max_position_embeddings}
  hf = {
      "architectures": [arch], "model_type": cfg.family, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": rope,
      # transformers 4.x readers take these two instead of rope_parameters.
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None if rs.rope_type == "default" else {k: v for k, v in rope.items()
                                                               if k != "rope_theta"},
      "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.initializer_range,
      "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id, "dtype": dtype, "use_cache": True,
  }
  if cfg.family == "qwen2":
    hf["use_sliding_window"] = False
  else:
    hf["attention_bias"] = cfg.o_bias
  if cfg.family == "llama":
    hf["mlp_bias"] = cfg.mlp_bias
  if cfg.score_head:
    hf["num_labels"] = 1
    hf["id2label"] = {"0": "LABEL_0"}
    hf["label2id"] = {"LABEL_0": 0}
  return hf


# ----------------------------------------------------------------------------- tensor table


def tensor_table(cfg: ModelConfig) -> Iterator[tuple[tuple[str, ...], str, tuple[int, ...], int]]:
  """(flax path, HF name, Flax shape without the layer axis, n_in).

  Stacked layer tensors (`scan_layers`) have '{i}' for the layer in their HF name; per-layer
  modules (`layers_3`) name their layer. n_in > 0 marks a kernel: its first n_in Flax dims
  flatten into the HF input (second) dim.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
    keys = tuple(k.key for k in path)
    module, leaf_name = keys[0], keys[-1]
    shape = leaf.shape[1:] if module == "layers" else leaf.shape
    if module.startswith("layers"):
      prefix = [MODULE_NAMES["layers"], "{i}" if module == "layers" else module.split("_")[1]]
    else:
      prefix = [MODULE_NAMES[module]]
    name = ".".join(prefix + list(keys[1:-1]) + [_LEAF_NAMES[leaf_name]])
    n_in = (2 if keys[-2] == "o_proj" else 1) if leaf_name == "kernel" else 0
    yield keys, name, shape, n_in


def _hf_shape(shape: tuple[int, ...], n_in: int, bias: bool) -> tuple[int, ...]:
  if n_in:
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
  return (math.prod(shape),) if bias else shape


def to_flax(x: np.ndarray, shape: tuple[int, ...], n_in: int) -> np.ndarray:
  """A Hugging Face tensor in the Flax `shape` (a kernel [O, I] transposed, `tensor_table`)."""
  return x.T.reshape(shape) if n_in else x.reshape(shape)


def to_hf(x: np.ndarray, n_in: int, bias: bool) -> np.ndarray:
  """A Flax leaf as its Hugging Face tensor: a kernel flattened to [I, O] and transposed."""
  if n_in:
    return x.reshape(math.prod(x.shape[:n_in]), -1).T
  return x.reshape(-1) if bias else x


def get_path(tree, keys):
  """tree[k0][k1]...; None where a subtree is None (a tensor placed on the default device)."""
  for k in keys:
    if tree is None:
      return None
    tree = tree[k]
  return tree


def set_path(tree: dict, keys: tuple[str, ...], value) -> None:
  """tree[k0][k1]... = value, making the missing levels."""
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


# ----------------------------------------------------------------------------- load / save


class _SafetensorsFolder:
  """Name -> file lookup over a single-file or index-sharded safetensors checkpoint."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        try:
          weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
          raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})")
      self.files = {name: os.path.join(path, file) for name, file in weight_map.items()}
      for file in set(self.files.values()):
        if not os.path.exists(file):
          raise CheckpointError(f"{index} names shard {file}, which does not exist")
    elif os.path.exists(single):
      with _opened(single) as f:
        self.files = {name: single for name in f.keys()}
    else:
      raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                            "(only safetensors checkpoints are read; never pickle)")
    self._open: dict[str, Any] = {}

  def _handle(self, name: str):
    file = self.files[name]
    if file not in self._open:
      self._open[file] = _opened(file)
    return self._open[file]

  def get(self, name: str) -> np.ndarray:
    try:
      return self._handle(name).get_tensor(name)
    except safetensors.SafetensorError as e:
      raise CheckpointError(f"{self.files[name]}: cannot read tensor {name!r} ({e}); the file "
                            "is truncated or corrupt") from None

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())


def _opened(file: str):
  """`safetensors.safe_open(file)`; a truncated or garbled file raises a CheckpointError naming
  it (safetensors' own error does not)."""
  try:
    return safetensors.safe_open(file, framework="numpy")
  except (safetensors.SafetensorError, OSError) as e:
    raise CheckpointError(f"{file}: not a readable safetensors file ({e}); it is truncated or "
                          "corrupt: copy it again") from None


def read_config(path: str) -> ModelConfig:
  """The ModelConfig of the checkpoint folder `path` (reads config.json only)."""
  config_file = os.path.join(path, "config.json")
  if not os.path.exists(config_file):
    raise CheckpointError(f"{path}: no config.json; expected a Hugging Face checkpoint folder")
  with open(config_file) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{config_file}: invalid JSON ({e})") from None
  return config_from_hf(hf, config_file)


def load_hf(path: str, *, param_dtype: str = "float32", scan_layers: bool = False,
            shardings=None, skip: tuple[str, ...] = ()):
  """Loads a local Hugging Face checkpoint folder.

  Args:
    path: folder with config.json and model.safetensors (or sharded with an index).
    param_dtype: dtype of the returned parameters (the checkpoint's is converted).
    scan_layers: the layer layout of the returned tree (see `ModelConfig.scan_layers`).
    shardings: optional pytree of `jax.sharding.Sharding` matching the parameter tree (see
      `sharding.param_shardings`); each tensor is placed as soon as it is converted.
    skip: top-level modules, e.g. ("lm_head",), that are neither converted nor returned: a head
      the caller would drop (a reward model made from a policy).

  Returns:
    (ModelConfig, params): params is the `Model` parameter tree of jax arrays.
  """
  cfg = read_config(path).replace(param_dtype=param_dtype, scan_layers=scan_layers)
  folder = _SafetensorsFolder(path)
  dtype = _DTYPES[param_dtype]
  used, params = set(), {}
  leaves = list(tensor_table(cfg))
  missing = [n.format(i=i) for _, n, _, _ in leaves
             for i in (range(cfg.num_layers) if "{i}" in n else [None])
             if n.format(i=i) not in folder.files]
  if missing:
    raise CheckpointError(f"{path}: checkpoint is missing {len(missing)} tensor(s) that a "
                          f"{cfg.family} model of this config needs: {missing[:8]}")
  for keys, name, shape, n_in in leaves:
    if keys[0] in skip:
      used.add(name)  # Heads are never per-layer tensors.
      continue
    parts = []
    for i in range(cfg.num_layers) if "{i}" in name else [None]:
      full = name.format(i=i)
      expected = _hf_shape(shape, n_in, keys[-1] == "bias")
      got = folder.shape(full)
      if got != expected:
        raise CheckpointError(f"{folder.files[full]}: tensor {full!r} has shape {got}, expected "
                              f"{expected} for the config in {path}/config.json")
      parts.append(to_flax(folder.get(full), shape, n_in).astype(dtype))
      used.add(full)
    value = np.stack(parts) if "{i}" in name else parts[0]
    sharding = get_path(shardings, keys) if shardings is not None else None
    set_path(params, keys, jax.device_put(value, sharding))
  unexpected = sorted(n for n in set(folder.files) - used
                      if not n.endswith(_IGNORED_SUFFIXES)
                      and not (n == "lm_head.weight" and cfg.tie_word_embeddings))
  if unexpected:
    raise CheckpointError(f"{path}: checkpoint has {len(unexpected)} tensor(s) this port does not "
                          f"map (an unsupported variant?): {unexpected[:8]}")
  return cfg, params


def save_hf(cfg: ModelConfig, params, path: str, *, dtype: str = "float32",
            max_shard_bytes: int = 4 * 2**30) -> None:
  """Writes `params` as a Hugging Face checkpoint folder that `transformers` loads.

  Writes config.json and model.safetensors, or numbered shards plus model.safetensors.index.json
  when the tensors exceed `max_shard_bytes`.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"dtype={dtype!r} is not supported; expected one of {sorted(_DTYPES)}")
  hf_config = config_to_hf(cfg, dtype)
  os.makedirs(path, exist_ok=True)
  tensors = {}
  for keys, name, shape, n_in in tensor_table(cfg):
    value = np.asarray(jax.device_get(get_path(params, keys)))
    for i in range(cfg.num_layers) if "{i}" in name else [None]:
      x = value[i] if i is not None else value
      tensors[name.format(i=i)] = np.ascontiguousarray(
          to_hf(x, n_in, keys[-1] == "bias").astype(_DTYPES[dtype]))
  shards, current, size = [], {}, 0
  for name, x in tensors.items():
    if current and size + x.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name], size = x, size + x.nbytes
  shards.append(current)
  metadata = {"format": "pt"}  # transformers refuses safetensors files without a format tag.
  if len(shards) == 1:
    safetensors.numpy.save_file(shards[0], os.path.join(path, "model.safetensors"), metadata)
  else:
    weight_map = {}
    for k, shard in enumerate(shards):
      file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
      safetensors.numpy.save_file(shard, os.path.join(path, file), metadata)
      weight_map |= {name: file for name in shard}
    index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
             "weight_map": weight_map}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump(index, f, indent=2)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
