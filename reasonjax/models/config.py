"""Decoder configuration, named presets, parameter counts and FLOPs per token.

One `ModelConfig` describes every supported member of the Llama / Qwen2 / Qwen3 family: the
families differ only in flags (q/k/v bias, q/k RMSNorm, tied embeddings, RoPE scaling).
"""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("blockwise", "xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling; `rope_type` is one of ROPE_TYPES ('default' means none).

  'linear' divides every frequency by `factor`. 'llama3' divides low frequencies (wavelength above
  original_max_position_embeddings / low_freq_factor) by `factor`, keeps high frequencies
  (wavelength below original / high_freq_factor) and interpolates linearly in between.
  """

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                       f"expected one of {ROPE_TYPES}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a decoder. Hashable, so it can be a static jit argument.

  Attributes mirror the Hugging Face config names where one exists (`num_layers` is
  `num_hidden_layers`, `num_heads` is `num_attention_heads`, `num_kv_heads` is
  `num_key_value_heads`).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  family: str = "llama"
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: bias on q/k/v projections.
  o_bias: bool = False  # Llama/Qwen3 `attention_bias=True` puts a bias on o_proj too.
  mlp_bias: bool = False
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE.
  lm_head: bool = True  # Reward models may drop the vocabulary projection.
  score_head: bool = False  # Scalar head on the final hidden states (ORM/PRM/HRM/value).
  initializer_range: float = 0.02
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  # Numerics and implementation: not part of a checkpoint.
  dtype: str = "float32"  # Compute dtype; parameters stay in param_dtype.
  param_dtype: str = "float32"
  # Without a KV cache: 'blockwise' skips the score blocks above the causal diagonal
  # (`layers.blockwise_causal_attention`, fastest on CPU); 'xla' and 'auto' call
  # jax.nn.dot_product_attention, 'cudnn' is its flash attention on NVIDIA GPUs.
  attention_impl: str = "blockwise"
  attention_block: int = 64  # Queries per block of 'blockwise'.
  remat: str = "none"  # Activation checkpointing policy for each decoder layer.
  # False (the default): one module per layer (`layers_0`, ...), run as straight-line code. XLA
  # reads each layer's weights in place; slicing a stacked array copies them, forward and
  # backward, every step. True: parameters stacked on a leading `layers` axis under nn.scan,
  # which compiles one layer whatever the depth (deep models, TPU pods). Checkpoints in the
  # Hugging Face format are the same either way.
  scan_layers: bool = False

  def __post_init__(self):
    for name, valid in (("family", FAMILIES), ("dtype", DTYPES), ("param_dtype", DTYPES),
                        ("attention_impl", ATTENTION_IMPLS), ("remat", REMAT_POLICIES)):
      value = getattr(self, name)
      if value not in valid:
        raise ValueError(f"model.{name}={value!r} is not valid; expected one of {valid}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "attention_block"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
    if not (self.lm_head or self.score_head):
      raise ValueError("model needs an output: set lm_head=True or score_head=True")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  def replace(self, **changes: Any) -> ModelConfig:
    """Returns a copy with `changes`; an unknown field name raises with the valid ones."""
    valid = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(changes) - valid)
    if unknown:
      raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(valid)}")
    if isinstance(changes.get("rope_scaling"), dict):
      changes["rope_scaling"] = RopeScaling(**changes["rope_scaling"])
    return dataclasses.replace(self, **changes)


def _llama3(factor: float, original: int = 8192) -> RopeScaling:
  return RopeScaling("llama3", factor, 1.0, 4.0, original)


# Real shapes are those of the published config.json files.
PRESETS: dict[str, ModelConfig] = {
    # CPU shapes of the benchmarks: "tiny" runs tests and demos in seconds, "small" is ~100M.
    "tiny": ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=688, num_layers=4,
                        num_heads=4, num_kv_heads=2, head_dim=64, family="qwen2", qkv_bias=True,
                        tie_word_embeddings=True, max_position_embeddings=2048),
    "small": ModelConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
                         num_heads=12, num_kv_heads=4, head_dim=64, family="qwen2", qkv_bias=True,
                         tie_word_embeddings=True, max_position_embeddings=4096),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                                family="qwen2", qkv_bias=True, tie_word_embeddings=True,
                                rope_theta=1e6, max_position_embeddings=32768,
                                bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
                                family="qwen2", qkv_bias=True, tie_word_embeddings=True,
                                rope_theta=1e6, max_position_embeddings=131072,
                                bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                              family="qwen2", qkv_bias=True, tie_word_embeddings=False,
                              rope_theta=1e6, max_position_embeddings=131072,
                              bos_token_id=151643, eos_token_id=151643),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                                rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3(32.0),
                                max_position_embeddings=131072, tie_word_embeddings=True,
                                bos_token_id=128000, eos_token_id=128001),
    "llama-3.2-3b": ModelConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                                num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128,
                                rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3(32.0),
                                max_position_embeddings=131072, tie_word_embeddings=True,
                                bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                                rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3(8.0),
                                max_position_embeddings=131072, tie_word_embeddings=False,
                                bos_token_id=128000, eos_token_id=128001),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named preset with `overrides` applied; an unknown name lists the valid ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def _layer_params(cfg: ModelConfig) -> tuple[int, int]:
  """(matmul weights, other weights) of one decoder layer."""
  d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
  matmul = d * q + 2 * d * kv + q * d + 3 * d * f
  other = 2 * d  # the two RMSNorm scales
  other += (q + 2 * kv) * cfg.qkv_bias + d * cfg.o_bias + (2 * f + d) * cfg.mlp_bias
  other += 2 * hd * cfg.qk_norm
  return matmul, other


def param_count(cfg: ModelConfig, *, embedding: bool = True) -> int:
  """Number of parameters; `embedding=False` leaves out the input embedding table."""
  matmul, other = _layer_params(cfg)
  head = cfg.hidden_size * cfg.vocab_size * (cfg.lm_head and not cfg.tie_word_embeddings)
  total = cfg.num_layers * (matmul + other) + cfg.hidden_size + head + cfg.hidden_size * cfg.score_head
  return total + cfg.vocab_size * cfg.hidden_size * embedding


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 * N_matmul + 12 * L * H * hd * T.

  N_matmul counts every weight used in a matmul (the output projection too, tied or not; the
  embedding lookup is not a matmul). The attention term counts QK^T and AV over the full T x T
  square (forward 4*T*H*hd per layer, backward twice that), the convention of the PaLM paper's
  MFU, so MFU numbers compare across codebases.
  """
  matmul, _ = _layer_params(cfg)
  n = cfg.num_layers * matmul + cfg.hidden_size * (cfg.vocab_size * cfg.lm_head + cfg.score_head)
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return float(6 * n + attention)


def describe(cfg: ModelConfig, seq_len: int = 2048) -> dict[str, Any]:
  """A summary for logs: parameter counts and training FLOPs per token at `seq_len`."""
  return {"params": param_count(cfg), "params_non_embedding": param_count(cfg, embedding=False),
          "flops_per_token": flops_per_token(cfg, seq_len), "seq_len": seq_len}
