"""Llama / Qwen2 / Qwen3 decoders in Flax, Hugging Face conversion, presets and FLOP counts."""

from reasonjax.models.config import (PRESETS, ModelConfig, RopeScaling, describe, flops_per_token,
                                     param_count, preset)
from reasonjax.models.decoder import (KVCache, Model, init_cache, init_params, param_logical_axes,
                                      param_shapes, unstack_layers)
from reasonjax.models.hf import CheckpointError, load_hf, read_config, save_hf
from reasonjax.models.registry import config_from, load

__all__ = [
    "PRESETS", "CheckpointError", "KVCache", "Model", "ModelConfig", "RopeScaling", "config_from",
    "describe", "flops_per_token", "init_cache", "init_params", "load", "load_hf",
    "param_count", "param_logical_axes", "param_shapes", "preset", "read_config", "save_hf", "unstack_layers",
]
