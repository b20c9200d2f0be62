"""Llama / Qwen2 / Qwen3 decoders in Flax, Hugging Face conversion, presets and FLOP counts."""

from reasonjax.models.config import (PRESETS, ModelConfig, RopeScaling, describe, flops_per_token,
                                     param_count, preset)
from reasonjax.models.continuations import continuation_logits
from reasonjax.models.decoder import (KVCache, Model, SharedPrefixCache, init_cache, init_params,
                                      param_logical_axes, param_shapes, prefill, unstack_layers)
from reasonjax.models.hf import CheckpointError, load_hf, read_config, save_hf
from reasonjax.models.registry import config_from, load

__all__ = [
    "PRESETS", "CheckpointError", "KVCache", "Model", "ModelConfig", "RopeScaling",
    "SharedPrefixCache", "config_from", "continuation_logits", "describe", "flops_per_token",
    "init_cache", "init_params", "load", "load_hf", "param_count", "param_logical_axes",
    "param_shapes", "prefill", "preset", "read_config", "save_hf", "unstack_layers",
]
