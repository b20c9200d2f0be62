"""Prefill + KV-cache decode as one compiled program.

    out = sample(model, params, prompt_tokens, prompt_lengths, rng,
                 SamplingConfig(max_new_tokens=64, temperature=0.7, num_samples=8))

One XLA program per (model, config, batch size, prompt bucket): the prompt block is padded to the
next power of two, so prompts of new lengths inside a bucket reuse the compiled program. Inside it,
the prompts run through the model once and a `lax.while_loop` decodes one token per step into a
preallocated cache until every row has finished or `max_new_tokens` is reached.

The `num_samples` rows of a prompt share its KV cache (`share_prefix`, the default): one copy of
the prompt's keys and values, read once per step for all its rows, beside a per-row cache of the
generated tokens (`models.SharedPrefixCache`). With `share_prefix=False` the prompt's cache is
copied for each row (`KVCache.repeat`); the two compute the same logits up to float rounding.
Sharing saves n - 1 copies of each prompt's cache and their reads at every step (k expansions of
a search node, best-of-N, a GRPO group); with short prompts it costs a few percent per step more
on CPU (two softmax parts instead of one: more, smaller kernels). benchmarks/search.py measures it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from reasonjax import sharding
from reasonjax.models import Model, prefill, unstack_layers
from reasonjax.models.decoder import KVCache, SharedPrefixCache
from reasonjax.sampling.processors import sample_tokens

Array = jax.Array

# Finish reasons in SamplingOutput.finish_reason.
LENGTH, EOS, STOP = 0, 1, 2
FINISH_REASONS = ("length", "eos", "stop")
MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """What to sample. Hashable: one compiled program per distinct config.

  Attributes:
    max_new_tokens: generation budget per row.
    temperature: 0.0 is greedy decoding.
    top_k: keep the k most likely tokens (0: off).
    top_p: nucleus sampling mass (1.0: off).
    min_p: drop tokens below min_p * p_max (0.0: off).
    num_samples: samples per prompt; output rows are prompt-major (row b * n + j).
    eos_token_id: one id or a tuple of ids that end a row (reason 'eos'); None: none.
    stop_token_ids: ids that end a row (reason 'stop'), e.g. a step delimiter token.
    stop_sequences: token-id sequences that end a row right after they are generated (reason
      'stop'); a reasoning-step delimiter is often several tokens.
    pad_token_id: written after the end of each row.
    share_prefix: the rows of a prompt read one copy of its KV cache (see the module docstring);
      False copies it for each row. Only used with num_samples > 1.
    cutoff_fraction: decoding stops once this fraction of the rows has ended; the rows still
      running end there with reason 'length' (an early cut-off of the long tail that a batch
      otherwise waits for). 1.0: off.
  """

  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  num_samples: int = 1
  eos_token_id: int | tuple[int, ...] | None = None
  stop_token_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()
  pad_token_id: int = 0
  share_prefix: bool = True
  cutoff_fraction: float = 1.0

  def __post_init__(self):
    # Lists (from configs or JSON) become tuples, so the config stays hashable.
    eos = self.eos_token_id
    object.__setattr__(self, "eos_token_id", tuple(eos) if isinstance(eos, (list, tuple)) else eos)
    object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
    object.__setattr__(self, "stop_sequences", tuple(tuple(s) for s in self.stop_sequences))
    checks = [
        (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        (self.temperature >= 0.0, "temperature must be >= 0 (0 = greedy)"),
        (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
        (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
        (0.0 <= self.min_p < 1.0, "min_p must be in [0, 1)"),
        (self.num_samples >= 1, "num_samples must be >= 1"),
        (all(len(s) > 0 for s in self.stop_sequences), "stop_sequences must not be empty"),
        (0.0 < self.cutoff_fraction <= 1.0, "cutoff_fraction must be in (0, 1] (1 = off)"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"SamplingConfig: {message}; got {self}")

  def replace(self, **changes: Any) -> SamplingConfig:
    return dataclasses.replace(self, **changes)

  @property
  def end_sequences(self) -> tuple[tuple[int, ...], ...]:
    """Stop ids and stop sequences together: every sequence whose generation ends a row."""
    return tuple((t,) for t in self.stop_token_ids) + self.stop_sequences


# The fields a config section that samples (rollouts, pairs) holds, read by `sampling_config`.
SECTION_FIELDS = ("max_new_tokens", "temperature", "top_p", "num_samples")


def sampling_config(section, tokenizer, **overrides: Any) -> SamplingConfig:
  """The `SamplingConfig` of a config section, ending rows at the tokenizer's EOS.

  Args:
    section: a ConfigDict or mapping with every field of `SECTION_FIELDS` (other fields, such
      as batch_size, are ignored).
    tokenizer: gives eos_token_id (`eos_id`) and pad_token_id (`pad_id`).
    **overrides: `SamplingConfig` fields that replace the section's, e.g. `temperature=0.0`.

  Returns:
    The `SamplingConfig`.
  """
  missing = [k for k in SECTION_FIELDS if k not in section]
  if missing:
    raise ValueError(f"sampling section lacks {missing}; it needs {list(SECTION_FIELDS)}")
  fields = {k: section[k] for k in SECTION_FIELDS}
  fields |= {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id} | overrides
  return SamplingConfig(**fields)


@flax.struct.dataclass
class SamplingOutput:
  """Generated tokens. Rows are prompt-major: row b * num_samples + j is sample j of prompt b.

  Attributes:
    tokens: int32 [B * n, max_new_tokens], pad_token_id after each row's end.
    lengths: int32 [B * n], generated tokens per row, the EOS / stop tokens included.
    logprobs: float32 [B * n, max_new_tokens], log p(token) under softmax(logits / temperature)
      before top-k/top-p/min-p truncation; 0 after the end.
    finish_reason: int32 [B * n], LENGTH, EOS or STOP (names in FINISH_REASONS).
  """

  tokens: Array
  lengths: Array
  logprobs: Array
  finish_reason: Array

  @property
  def mask(self) -> Array:
    """1 for generated tokens, 0 for padding. float32 [B * n, max_new_tokens]."""
    steps = jnp.arange(self.tokens.shape[1])[None]
    return (steps < self.lengths[:, None]).astype(jnp.float32)


@flax.struct.dataclass
class _DecodeState:
  step: Array  # int32 [], tokens generated so far
  token: Array  # int32 [N], last token
  tokens: Array  # int32 [N, max_new]
  logprobs: Array  # float32 [N, max_new]
  done: Array  # bool [N]
  lengths: Array  # int32 [N]
  finish_reason: Array  # int32 [N]
  window: Array  # int32 [N, W], the last W tokens (W = longest stop sequence)
  cache: KVCache | SharedPrefixCache


def bucket_length(length: int) -> int:
  """The prompt block width for `length`: the next power of two, at least MIN_BUCKET."""
  return max(MIN_BUCKET, 1 << max(0, int(length) - 1).bit_length())


def _ends(config: SamplingConfig, window: Array, count: Array) -> tuple[Array, Array]:
  """(ended by EOS, ended by a stop sequence) of the newest token. window: [N, W]."""
  newest = window[:, -1]
  eos = config.eos_token_id
  eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else eos
  is_eos = jnp.isin(newest, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else jnp.zeros_like(
      newest, bool)
  is_stop = jnp.zeros_like(newest, bool)
  for seq in config.end_sequences:
    m = len(seq)
    # Only generated tokens count: a delimiter at the end of the prompt does not end the row.
    match = jnp.all(window[:, window.shape[1] - m:] == jnp.asarray(seq, jnp.int32), axis=1)
    is_stop |= match & (count >= m)
  return is_eos, is_stop


def _record(state: _DecodeState, logits: Array, rng: Array, config: SamplingConfig
            ) -> _DecodeState:
  """Draws the next token of every unfinished row from `logits` [N, V] and updates the state."""
  token, logprob = sample_tokens(logits, jax.random.fold_in(rng, state.step),
                                 temperature=config.temperature, top_k=config.top_k,
                                 top_p=config.top_p, min_p=config.min_p)
  live = ~state.done
  token = jnp.where(live, token, config.pad_token_id)
  logprob = jnp.where(live, logprob, 0.0)
  window = jnp.concatenate([state.window[:, 1:], token[:, None]], axis=1)
  count = state.step + 1
  is_eos, is_stop = _ends(config, window, count)
  out_of_budget = count >= config.max_new_tokens
  finishing = live & (is_eos | is_stop | out_of_budget)
  reason = jnp.where(is_eos, EOS, jnp.where(is_stop, STOP, LENGTH))
  return state.replace(
      step=count, token=token,
      tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], state.step, 1),
      logprobs=jax.lax.dynamic_update_slice_in_dim(state.logprobs, logprob[:, None], state.step,
                                                   1),
      done=state.done | finishing, lengths=jnp.where(live, count, state.lengths),
      finish_reason=jnp.where(finishing, reason, state.finish_reason), window=window)


@functools.partial(jax.jit, static_argnames=("model", "config"))
def _generate(params, prompt_tokens: Array, prompt_lengths: Array, rng: Array, *, model: Model,
              config: SamplingConfig) -> SamplingOutput:
  batch, width = prompt_tokens.shape
  n, steps = config.num_samples, config.max_new_tokens
  # The inference layout, built once per call: layers unrolled so that each reads its own weight
  # and cache buffers (a scanned layer copies a slice of the stacked arrays at every step), and
  # weights already in the compute dtype (not cast at every step).
  if model.cfg.scan_layers:
    params = unstack_layers(params)
    model = Model(model.cfg.replace(scan_layers=False))
  params = jax.tree.map(lambda x: x.astype(model.cfg.dtype), params)
  # The prompt is run once; its cache and last logits serve its n samples.
  if config.share_prefix and n > 1:
    hidden, prefix = prefill(model, params, prompt_tokens, prompt_lengths, width)
    # The last generated token is never fed back: steps - 1 own slots per row are enough.
    cache = SharedPrefixCache.create(prefix, n, max(steps - 1, 1))
  else:
    hidden, cache = prefill(model, params, prompt_tokens, prompt_lengths, width + steps)
    cache = cache.repeat(n)
  # Vocabulary logits of the last prompt token only: [B, P, V] would cost more than the prefill.
  last = model.apply({"params": params}, hidden, method=Model.logits_from_hidden)[:, 0]
  last = jnp.repeat(last, n, axis=0, total_repeat_length=batch * n)
  rows = batch * n
  window = max([len(s) for s in config.end_sequences] + [1])
  state = _DecodeState(
      step=jnp.zeros((), jnp.int32), token=jnp.zeros((rows,), jnp.int32),
      tokens=jnp.full((rows, steps), config.pad_token_id, jnp.int32),
      logprobs=jnp.zeros((rows, steps), jnp.float32), done=jnp.zeros((rows,), bool),
      lengths=jnp.zeros((rows,), jnp.int32), finish_reason=jnp.full((rows,), LENGTH, jnp.int32),
      window=jnp.full((rows, window), -1, jnp.int32), cache=cache)
  state = _record(state, last, rng, config)

  def cond(state: _DecodeState) -> Array:
    if config.cutoff_fraction == 1.0:
      return (state.step < steps) & ~jnp.all(state.done)
    ended = jnp.mean(state.done.astype(jnp.float32))
    return (state.step < steps) & (ended < config.cutoff_fraction)

  def body(state: _DecodeState) -> _DecodeState:
    logits, cache = model.apply({"params": params}, state.token[:, None], cache=state.cache)
    return _record(state.replace(cache=cache), logits[:, 0], rng, config)

  state = jax.lax.while_loop(cond, body, state)
  return SamplingOutput(tokens=state.tokens, lengths=state.lengths, logprobs=state.logprobs,
                        finish_reason=state.finish_reason)


def sample(model: Model, params, prompt_tokens, prompt_lengths, rng: Array,
           config: SamplingConfig) -> SamplingOutput:
  """Samples `config.num_samples` continuations of each prompt.

  Args:
    model: a `models.Model` (its config is static: one program per model shape).
    params: its parameters (sharded or not; under `sharding.axis_rules` the program is sharded).
    prompt_tokens: int32 [B, P], right-padded.
    prompt_lengths: int32 [B], each in [1, P].
    rng: PRNG key (unused when greedy).
    config: a `SamplingConfig`.

  Returns:
    `SamplingOutput` with B * num_samples rows.
  """
  mesh = sharding.multi_process_mesh(params)  # not None: inputs placed on it (below)
  prompt_tokens = (np.asarray if mesh else jnp.asarray)(prompt_tokens, np.int32)
  if prompt_tokens.ndim != 2:
    raise ValueError(f"prompt_tokens must be int32 [B, P], got shape {prompt_tokens.shape}")
  batch, width = prompt_tokens.shape
  if np.shape(prompt_lengths) != (batch,):
    raise ValueError(f"prompt_lengths must be int32 [{batch}], got shape {np.shape(prompt_lengths)}")
  if not isinstance(prompt_lengths, jax.Array):  # Host data: check it without a device sync.
    lengths = np.asarray(prompt_lengths)
    if lengths.min() < 1 or lengths.max() > width:
      raise ValueError(f"prompt_lengths must be in [1, {width}] (the prompt_tokens width), got "
                       f"{lengths.min()}..{lengths.max()}")
  bucket = bucket_length(width)
  if mesh is None:
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    prompt_tokens = jnp.pad(prompt_tokens, ((0, 0), (0, bucket - width)))
  else:
    # Every process passes the same prompts (and rng); the output is global too: read it with
    # `sharding.to_host`.
    prompt_tokens, prompt_lengths, rng = sharding.replicated(
        (np.pad(prompt_tokens, ((0, 0), (0, bucket - width))),
         np.asarray(prompt_lengths, np.int32), rng), mesh)
  return _generate(params, prompt_tokens, prompt_lengths, rng, model=model, config=config)


def sample_continuations(model: Model, params, prefix_tokens, prefix_lengths, rng: Array, *,
                         num_continuations: int, step_delimiters: tuple[tuple[int, ...], ...],
                         max_step_tokens: int, config: SamplingConfig = SamplingConfig(
                             temperature=1.0)) -> SamplingOutput:
  """k continuations of each prefix (prompt + partial solution), each up to the end of the next
  step: the first generated `step_delimiters` sequence (finish reason STOP), an EOS, or
  `max_step_tokens`. Monte-Carlo step labels and MCTS expansion call this in large batches.

  Returns rows prefix-major: row b * num_continuations + j.
  """
  config = config.replace(num_samples=num_continuations, max_new_tokens=max_step_tokens,
                          stop_sequences=tuple(tuple(d) for d in step_delimiters))
  return sample(model, params, prefix_tokens, prefix_lengths, rng, config)
