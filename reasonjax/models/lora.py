"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on the
decoder's projection kernels: a pytree of their own beside the frozen parameters.

    adapters = lora.init(cfg, rng, rank=8, targets=("q_proj", "v_proj"))
    merged = lora.merge(params, adapters, scale=alpha / 8)     # to sample with, to export
    logits = model.apply({"params": lora.attach(params, adapters, scale=alpha / 8)}, tokens)
    lora.save_peft(path, cfg, adapters, rank=8, alpha=16)   # `peft` loads it onto transformers

A kernel W of Flax shape [*in, *out] (q_proj [hidden, heads, head_dim], o_proj [heads,
head_dim, hidden]) is a matrix [I, O]; its adapter holds a [I, r] and b [r, O], and the model
runs with

    W' = W + (alpha / r) (a b).reshape(W.shape)

b starts at zero, so W' = W before training; training reads the factors unmerged (`attach`:
the model computes x W + (alpha / r)(x a) b, whose gradient never forms an [I, O] array); a is
uniform in +-1/sqrt(I), PEFT's default (Kaiming uniform with a = sqrt(5)). With `scan_layers`,
kernels and adapters have a leading layer axis.
PEFT's files hold lora_A.weight = a^T [r, I] and lora_B.weight = b^T [O, r] under the module's
Hugging Face name with the prefix "base_model.model.", and W_hf + s B A is the same update.

A head in `MODULES` may train in full beside the adapters (PEFT's `modules_to_save`): it sits in
the adapters' tree as the model's own subtree ({"score_head": {"kernel": ...}}), `merge` puts it
in place of the base's, and the PEFT folder holds it under its Hugging Face name. A reward
model's score head always does (`modules`), as PEFT does for sequence classification: the head
is new, and frozen it would score at random.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from reasonjax.models.config import ModelConfig
from reasonjax.models.decoder import param_shapes
from reasonjax.models.hf import MODULE_NAMES, get_path, set_path, tensor_table, to_flax, to_hf

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The modules that may train in full beside the adapters (PEFT's modules_to_save).
MODULES = ("lm_head", "score_head")
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def check(rank: int, targets: Sequence[str]) -> None:
  """Raises ValueError unless rank >= 1 and targets is a non-empty subset of TARGETS."""
  if not (isinstance(rank, int) and rank >= 1):
    raise ValueError(f"lora rank={rank!r}: expected an integer >= 1")
  unknown = sorted(set(targets) - set(TARGETS))
  if not targets or unknown:
    raise ValueError(f"lora targets={tuple(targets)}: expected names from {list(TARGETS)}")


def modules(cfg: ModelConfig, modules_to_save: Sequence[str] = ()) -> tuple[str, ...]:
  """The modules of `cfg` that train in full: `modules_to_save`, and the score head of a reward
  model. Raises ValueError for a name outside MODULES or absent from the model (a tied LM head)."""
  names = set(modules_to_save) | ({"score_head"} if cfg.score_head else set())
  unknown = sorted(names - (set(MODULES) & set(param_shapes(cfg))))
  if unknown:
    raise ValueError(f"lora modules_to_save={tuple(modules_to_save)}: {unknown} is not a module "
                     f"of this model that can train in full; expected names from {list(MODULES)} "
                     "that the model has (a tied LM head is the embedding)")
  return tuple(sorted(names))


def _kernels(cfg: ModelConfig, targets: Sequence[str]):
  """(Flax path of the kernel, its HF name, I, O) of each targeted kernel."""
  for keys, name, shape, n_in in tensor_table(cfg):
    if keys[-1] == "kernel" and keys[-2] in targets:
      yield keys, name, math.prod(shape[:n_in]), math.prod(shape[n_in:])


def init(cfg: ModelConfig, rng: jax.Array, *, rank: int, targets: Sequence[str] = TARGETS,
         full: dict | None = None, dtype=jnp.float32) -> dict:
  """Adapters {module path: {"lora_a": [(L,) I, r], "lora_b": [(L,) r, O]}}, b = 0, plus `full`
  ({module name: its parameters}: the start of the modules trained in full)."""
  check(rank, targets)
  adapters = {}
  for k, (keys, _, n_in, n_out) in enumerate(_kernels(cfg, targets)):
    lead = (cfg.num_layers,) if keys[0] == "layers" else ()
    bound = 1.0 / math.sqrt(n_in)
    a = jax.random.uniform(jax.random.fold_in(rng, k), lead + (n_in, rank), dtype, -bound, bound)
    set_path(adapters, keys[:-1], {"lora_a": a, "lora_b": jnp.zeros(lead + (rank, n_out), dtype)})
  return adapters | dict(full or {})


def _replace(params, adapters, pair):
  """`params` with `pair(module params, {"lora_a", "lora_b"})` at each adapted module and each
  module trained in full replaced by its adapters' copy; every other leaf as it is."""
  if not isinstance(adapters, dict):  # a leaf of a module trained in full
    return adapters
  if "lora_a" in adapters:
    return pair(params, adapters)
  return {k: _replace(v, adapters[k], pair) if k in adapters else v for k, v in params.items()}


def merge(params, adapters, *, scale: float):
  """`params` with each adapted kernel W replaced by W + scale (a b).reshape(W.shape), in W's
  dtype, and each module trained in full replaced by its adapters' copy; every other leaf as it
  is. Differentiable in `adapters`; jit it with the step."""
  def pair(module, ab):
    kernel = module["kernel"]
    delta = jnp.matmul(ab["lora_a"].astype(jnp.float32), ab["lora_b"].astype(jnp.float32))
    return {**module, "kernel": kernel + (scale * delta).reshape(kernel.shape).astype(kernel.dtype)}
  return _replace(params, adapters, pair)


def attach(params, adapters, *, scale: float):
  """`params` with each adapter's factors beside its kernel ({"kernel": W, "lora_a": a,
  "lora_b": scale b}), which `layers.Linear` applies as x W + (x a)(scale b), and each module
  trained in full in place of the base's: the model's output is `merge`'s, and differentiating
  it in `adapters` costs O((I + O) r) per token and kernel, not the kernel gradient's I O."""
  return _replace(params, adapters, lambda module, ab: {
      **module, "lora_a": ab["lora_a"], "lora_b": scale * ab["lora_b"]})


def _peft_tensors(cfg: ModelConfig, targets: Sequence[str]):
  """(Flax path, layer index or None, PEFT name of lora_A, of lora_B) of each adapter matrix."""
  for keys, name, _, _ in _kernels(cfg, targets):
    for i in range(cfg.num_layers) if "{i}" in name else [None]:
      module = _PREFIX + name.format(i=i).removesuffix(".weight")
      yield keys, i, module + ".lora_A.weight", module + ".lora_B.weight"


def _full_tensors(cfg: ModelConfig, names: Sequence[str]):
  """(Flax path, PEFT name, Flax shape, n_in) of each parameter of the modules `names`."""
  for keys, name, shape, n_in in tensor_table(cfg):
    if keys[0] in names:
      yield keys, _PREFIX + name, shape, n_in


def save_peft(path: str, cfg: ModelConfig, adapters, *, rank: int, alpha: float,
              targets: Sequence[str] = TARGETS, base_model: str = "") -> None:
  """Writes `adapters` (and the modules trained in full it holds) as a PEFT LoRA folder
  (adapter_config.json, adapter_model.safetensors) that
  `peft.PeftModel.from_pretrained(transformers_model, path)` loads; `base_model` is recorded as
  base_model_name_or_path."""
  check(rank, targets)
  full = [m for m in MODULES if m in adapters]
  tensors = {}
  for keys, name, _, n_in in _full_tensors(cfg, full):
    x = np.asarray(jax.device_get(get_path(adapters, keys)), np.float32)
    tensors[name] = np.ascontiguousarray(to_hf(x, n_in, keys[-1] == "bias"))
  for keys, i, name_a, name_b in _peft_tensors(cfg, targets):
    a, b = (np.asarray(jax.device_get(get_path(adapters, keys[:-1])[k]), np.float32)
            for k in ("lora_a", "lora_b"))
    if i is not None:
      a, b = a[i], b[i]
    tensors[name_a], tensors[name_b] = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
  os.makedirs(path, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(path, WEIGHTS_FILE), {"format": "pt"})
  hf_names = sorted(MODULE_NAMES[m] for m in full)
  settings = {"peft_type": "LORA", "task_type": "SEQ_CLS" if cfg.score_head else "CAUSAL_LM",
              "r": rank, "lora_alpha": alpha, "target_modules": sorted(targets),
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": hf_names or None,
              "base_model_name_or_path": base_model}
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(settings, f, indent=2)


def load_peft(path: str, cfg: ModelConfig) -> tuple[dict, dict]:
  """(adapters, adapter_config.json's settings) of a PEFT LoRA folder written for `cfg`'s
  architecture (by `save_peft` or by peft itself, without bias or rsLoRA); the adapters hold
  the modules trained in full that the folder has."""
  with open(os.path.join(path, CONFIG_FILE)) as f:
    settings = json.load(f)
  if settings.get("peft_type") != "LORA" or settings.get("use_rslora") or \
      settings.get("bias", "none") != "none":
    raise ValueError(f"{path}/{CONFIG_FILE}: expected a plain LoRA adapter (peft_type LORA, "
                     f"bias none, no rsLoRA); got {settings}")
  targets = settings["target_modules"]
  targets = [targets] if isinstance(targets, str) else targets
  check(settings["r"], targets)
  weights = safetensors.numpy.load_file(os.path.join(path, WEIGHTS_FILE))
  parts: dict[tuple, dict] = {}
  for keys, i, name_a, name_b in _peft_tensors(cfg, targets):
    missing = [n for n in (name_a, name_b) if n not in weights]
    if missing:
      raise ValueError(f"{path}/{WEIGHTS_FILE}: no tensor {missing[0]}")
    pair = parts.setdefault(keys[:-1], {"lora_a": [], "lora_b": []})
    pair["lora_a"].append(weights[name_a].T)
    pair["lora_b"].append(weights[name_b].T)
  adapters = {}
  for module, pair in parts.items():
    stacked = module[0] == "layers"
    set_path(adapters, module, {k: jnp.asarray(np.stack(v) if stacked else v[0])
                            for k, v in pair.items()})
  saved = set(settings.get("modules_to_save") or ())
  for keys, name, shape, n_in in _full_tensors(cfg, [m for m in MODULES
                                                      if MODULE_NAMES[m] in saved]):
    if name not in weights:  # PEFT lists `score` for every SEQ_CLS adapter
      continue
    set_path(adapters, keys, jnp.asarray(to_flax(weights[name], shape, n_in)))
  return adapters, settings
