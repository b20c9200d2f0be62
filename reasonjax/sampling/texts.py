"""Strings in, strings out: the sampler over many prompts in fixed-shape chunks.

    texts = sampling.generate_texts(model, params, tokenizer, prompts, rng,
                                    SamplingConfig(max_new_tokens=64, num_samples=4,
                                                   temperature=1.0, eos_token_id=tok.eos_id))
    texts[i][j]        # sample j of prompt i, decoded without the EOS

Every chunk has the same shape ([batch_size, P] with P the longest prompt's bucket), so the
whole list compiles once; the last chunk is padded with copies of its first prompt.

With a `tool` (`sampling.tools.PythonTool`), a sample that ends a program is stopped, the
program's output is appended to its text and the sample goes on from its prompt and text so far
(re-encoded: a continuation is a new prompt), up to `tool.max_calls` times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tqdm

from reasonjax import sharding
from reasonjax.sampling.sampler import EOS, SamplingConfig, SamplingOutput, sample


def encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [N, P] right-padded with tokenizer.pad_id, lengths int32 [N]); BOS first."""
  if not prompts:
    raise ValueError("encode_prompts: no prompts")
  ids = [tokenizer.encode(p, add_bos=True) for p in prompts]
  lengths = np.asarray([len(x) for x in ids], np.int32)
  tokens = np.full((len(ids), max(lengths)), tokenizer.pad_id, np.int32)
  for row, x in zip(tokens, ids):
    row[:len(x)] = x
  return tokens, lengths


def sample_chunks(model, params, tokens: np.ndarray, lengths: np.ndarray, rng: jax.Array,
                  config: SamplingConfig, *, batch_size: int, progress: str | None = None,
                  shrink: bool = False) -> Iterator[tuple[int, SamplingOutput]]:
  """The sampler over many prompts, `batch_size` per call: yields (prompts in the call, the
  call's host `SamplingOutput`), in order. A call short of prompts is padded with copies of its
  first, to batch_size rows (one shape for every call) or, with `shrink`, to the next power of
  two (a few shapes, and a small call does not pay for a full batch). Call i uses
  fold_in(rng, i). tokens: int32 [N, P] right-padded; lengths: int32 [N]."""
  starts = range(0, len(tokens), batch_size)
  for i, start in enumerate(tqdm.tqdm(starts, desc=progress, leave=False,
                                      disable=progress is None or jax.process_index() != 0)):
    real = min(batch_size, len(tokens) - start)
    size = min(batch_size, 1 << (real - 1).bit_length()) if shrink else batch_size
    rows = np.arange(start, start + size)
    rows = np.where(rows < start + real, rows, start)
    yield real, sharding.to_host(sample(model, params, tokens[rows], lengths[rows],
                                      jax.random.fold_in(rng, i), config))


def generate_texts(model, params, tokenizer, prompts: Sequence[str], rng: jax.Array,
                   config: SamplingConfig, *, batch_size: int = 64,
                   progress: str | None = None, return_lengths: bool = False, tool=None):
  """`config.num_samples` completions of each prompt, decoded.

  Args:
    model, params: a `models.Model` and its parameters (under `sharding.axis_rules` when
      sharded).
    tokenizer: a `data.tokenizers.Tokenizer`.
    prompts: N strings.
    rng: PRNG key; chunk i uses fold_in(rng, i), so results do not depend on what else runs.
    config: the `SamplingConfig`; its EOS ends a row and is dropped from the text.
    batch_size: prompts per sampler call.
    progress: a tqdm description; None shows no bar.
    return_lengths: also return the generated tokens of each sample (EOS included), int32
      [N, num_samples]: what a search method's budget counts (a tool's output is not counted).
    tool: a `sampling.tools.PythonTool` the samples may call (see the module docstring); each
      of its continuations has `config.max_new_tokens` more tokens.

  Returns:
    N lists of num_samples strings (and the lengths, with return_lengths).
  """
  if not prompts:
    return ([], np.zeros((0, config.num_samples), np.int32)) if return_lengths else []
  if tool is not None:
    config = config.replace(
        stop_sequences=config.stop_sequences + (tuple(tokenizer.encode(tool.end)),))
  out, counts = _generate(model, params, tokenizer, prompts, rng, config, batch_size, progress)
  if tool is not None:
    _call_tool(model, params, tokenizer, prompts, rng, config, batch_size, tool, out, counts)
  return (out, counts) if return_lengths else out


def _generate(model, params, tokenizer, prompts, rng, config, batch_size, progress,
              shrink=False) -> tuple[list[list[str]], np.ndarray]:
  """`generate_texts` without a tool: the texts and the lengths int32 [N, n]."""
  tokens, lengths = encode_prompts(tokenizer, prompts)
  n = config.num_samples
  out: list[list[str]] = []
  counts = []
  for real, result in sample_chunks(model, params, tokens, lengths, rng, config,
                                    batch_size=batch_size, progress=progress, shrink=shrink):
    texts = decode_rows(tokenizer, result)
    out += [texts[b * n:(b + 1) * n] for b in range(real)]
    counts.append(np.asarray(result.lengths)[:real * n])
  return out, np.concatenate(counts).reshape(len(prompts), n).astype(np.int32)


def _call_tool(model, params, tokenizer, prompts, rng, config, batch_size, tool, out,
               counts) -> None:
  """Runs the programs the samples in `out` end with and samples them on, in place: round r
  continues every sample whose text ends with `tool.end` (one row per sample, rng fold_in r).
  A sample ending a program after its last call keeps it without output."""
  for r in range(1, tool.max_calls + 1):
    live = [(i, j) for i, row in enumerate(out) for j, text in enumerate(row)
            if text.endswith(tool.end)]
    if not live:
      return
    for (i, j), block in zip(live, tool.run([out[i][j] for i, j in live])):
      out[i][j] += block
    more, lengths = _generate(model, params, tokenizer, [prompts[i] + out[i][j] for i, j in live],
                              jax.random.fold_in(rng, 1_000_003 * r),
                              config.replace(num_samples=1),
                              batch_size * config.num_samples, None, shrink=True)
    for (i, j), text, length in zip(live, more, lengths[:, 0]):
      out[i][j] += text[0]
      counts[i, j] += length


def decode_rows(tokenizer, output) -> list[str]:
  """The text of every row of a (host) `SamplingOutput`, without its EOS token."""
  texts = []
  for ids, count, reason in zip(output.tokens, output.lengths, output.finish_reason):
    ids = ids[:count].tolist()
    if reason == EOS:  # The EOS token is not part of the text.
      ids = ids[:-1]
    texts.append(tokenizer.decode(ids))
  return texts
