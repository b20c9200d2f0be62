"""Jitted sampling: prefill + KV-cache decode in one program, logits processors."""

from reasonjax.sampling.processors import min_p_mask, sample_tokens, top_k_mask, top_p_mask
from reasonjax.sampling.sampler import (EOS, FINISH_REASONS, LENGTH, STOP, SamplingConfig,
                                        SamplingOutput, bucket_length, sample,
                                        sample_continuations, sampling_config)
from reasonjax.sampling.texts import encode_prompts, generate_texts, sample_chunks

__all__ = [
    "EOS", "FINISH_REASONS", "LENGTH", "STOP", "SamplingConfig", "SamplingOutput",
    "bucket_length", "encode_prompts", "generate_texts", "min_p_mask", "sample",
    "sample_chunks", "sample_continuations", "sample_tokens", "sampling_config", "top_k_mask", "top_p_mask",
]
