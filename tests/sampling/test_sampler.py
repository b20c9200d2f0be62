"""The compiled sampler against `transformers.generate`, a teacher-forced forward pass,
analytic distributions and brute-force stop matching."""

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
import torch

from configs.common import AXIS_RULES
from reasonjax import models, sampling, sharding
from reasonjax.sampling import sampler
from tests.conftest import hf_model

Config = sampling.SamplingConfig


def prompts(vocab_size, lengths, width=None, seed=0):
  rng = np.random.default_rng(seed)
  width = width or max(lengths)
  tokens = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(0, vocab_size, n)
  return tokens, np.asarray(lengths, np.int32)


@pytest.fixture(scope="module")
def tiny():
  cfg = models.preset("tiny", num_layers=2, initializer_range=0.2)
  return models.Model(cfg), models.init_params(cfg, jax.random.key(0))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_matches_transformers_generate(kind, tmp_path):
  torch_model = hf_model(kind)
  torch_model.save_pretrained(tmp_path)
  cfg, params = models.load_hf(str(tmp_path))
  tokens, lengths = prompts(cfg.vocab_size, [5, 9, 3, 12])
  out = sampling.sample(models.Model(cfg), params, tokens, lengths, jax.random.key(0),
                        Config(max_new_tokens=64))
  for i, n in enumerate(lengths):
    with torch.no_grad():
      ref = torch_model.generate(torch.tensor(tokens[i:i + 1, :n], dtype=torch.long),
                                 attention_mask=torch.ones((1, n), dtype=torch.long),
                                 max_new_tokens=64, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, n:].numpy()
    assert len(set(ref.tolist())) > 5  # A real sequence, not one repeated token.
    np.testing.assert_array_equal(np.asarray(out.tokens[i]), ref, err_msg=f"prompt {i}")
  assert (np.asarray(out.lengths) == 64).all()
  assert (np.asarray(out.finish_reason) == sampling.LENGTH).all()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_equal_teacher_forced_forward(tiny, temperature):
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [4, 7, 2])
  cfg = Config(max_new_tokens=12, temperature=temperature, top_k=20, num_samples=2)
  out = sampling.sample(model, params, tokens, lengths, jax.random.key(3), cfg)
  generated = np.asarray(out.tokens)
  # Each row's prompt + generation, right-padded: causal attention ignores what follows.
  seqs = np.zeros((6, 7 + 12), np.int32)
  for row in range(6):
    b = row // 2
    seqs[row, :lengths[b] + 12] = np.concatenate([tokens[b, :lengths[b]], generated[row]])
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(seqs)), np.float64)
  logits /= temperature or 1.0
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  for row in range(6):
    pos = lengths[row // 2] - 1 + np.arange(12)
    np.testing.assert_allclose(np.asarray(out.logprobs[row]), logp[row, pos, generated[row]],
                               atol=1e-4)


def test_num_samples_first_token_distribution(tiny):
  """n samples of one prompt: the first token follows softmax(logits / T) of that prompt."""
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [6])
  n, temperature = 4000, 0.5
  out = sampling.sample(model, params, tokens, lengths, jax.random.key(1),
                        Config(max_new_tokens=1, temperature=temperature, num_samples=n))
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)), np.float64)[0, 5]
  p = np.exp((logits - logits.max()) / temperature)
  p /= p.sum()
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=p.size)
  likely = p * n >= 5  # chi-square needs expected counts >= 5; pool the tail.
  observed = np.append(counts[likely], counts[~likely].sum())
  expected = np.append(p[likely], p[~likely].sum()) * n
  assert likely.sum() >= 3
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def first_end(seq, stops):
  """Brute force: index just past the first occurrence of any stop sequence, or None."""
  for t in range(1, len(seq) + 1):
    if any(t >= len(s) and tuple(seq[t - len(s):t]) == s for s in stops):
      return t
  return None


def test_stop_sequences_stop_ids_and_eos(tiny):
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [3, 8, 5, 6], seed=4)
  free = np.asarray(sampling.sample(model, params, tokens, lengths, jax.random.key(0),
                                    Config(max_new_tokens=40)).tokens)
  # Stops taken from the free-running output, so that they really occur.
  stop_seq = tuple(int(t) for t in free[0, 6:9])
  stop_id = int(free[1, 10])
  eos = int(free[2, 4])
  cfg = Config(max_new_tokens=40, stop_sequences=(stop_seq,), stop_token_ids=(stop_id,),
               eos_token_id=eos, pad_token_id=-1)
  out = sampling.sample(model, params, tokens, lengths, jax.random.key(0), cfg)
  for row in range(4):
    seq = free[row].tolist()
    end_stop = first_end(seq, [stop_seq, (stop_id,)])
    end_eos = first_end(seq, [(eos,)])
    ends = [e for e in (end_stop, end_eos) if e is not None]
    end = min(ends) if ends else 40
    reason = (sampling.LENGTH if not ends else
              sampling.EOS if end == end_eos else sampling.STOP)
    assert int(out.lengths[row]) == end, row
    assert int(out.finish_reason[row]) == reason, row
    np.testing.assert_array_equal(np.asarray(out.tokens[row, :end]), free[row, :end])
    assert (np.asarray(out.tokens[row, end:]) == -1).all()
    assert (np.asarray(out.logprobs[row, end:]) == 0).all()
  assert int(out.lengths[0]) <= 9 and int(out.finish_reason[0]) in (sampling.STOP, sampling.EOS)


def test_prompt_lengths_in_a_bucket_compile_once(tiny):
  model, params = tiny
  cfg = Config(max_new_tokens=4)
  run = functools.partial(sampling.sample, model, params, rng=jax.random.key(0), config=cfg)
  # jit's own cache: one entry per compiled program, whatever ran before the clear.
  sampler._generate.clear_cache()
  for lengths in ([5, 3], [16, 1], [9, 12]):
    tokens, lens = prompts(model.cfg.vocab_size, lengths, width=max(lengths))
    jax.block_until_ready(run(prompt_tokens=tokens, prompt_lengths=lens))
  assert sampler._generate._cache_size() == 1  # widths 5, 16, 12 share the 16 bucket
  tokens, lens = prompts(model.cfg.vocab_size, [17, 2])
  jax.block_until_ready(run(prompt_tokens=tokens, prompt_lengths=lens))
  assert sampler._generate._cache_size() == 2  # width 17: the 32 bucket


def test_rows_finish_early_and_loop_exits(tiny):
  """Every row ends on EOS at its first token: the loop stops after one step."""
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [4, 4])
  first = np.asarray(sampling.sample(model, params, tokens, lengths, jax.random.key(0),
                                     Config(max_new_tokens=1)).tokens[:, 0])
  out = sampling.sample(model, params, tokens, lengths, jax.random.key(0),
                        Config(max_new_tokens=30, eos_token_id=tuple(int(t) for t in first)))
  np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1])
  np.testing.assert_array_equal(np.asarray(out.mask)[:, :2], [[1, 0], [1, 0]])


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_cutoff_ends_the_long_tail_as_the_full_run_truncated(tiny, fraction):
  """Decoding stops after the first step s at which `fraction` of the rows have ended (in the
  run without a cut-off: lengths <= s); the rest are that run's rows cut at s, reason length."""
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [5, 3, 8, 6])
  config = Config(max_new_tokens=24, temperature=1.0, num_samples=4,
                  eos_token_id=tuple(range(0, model.cfg.vocab_size, 9)))
  full = jax.tree.map(np.asarray, sampling.sample(model, params, tokens, lengths,
                                                  jax.random.key(3), config))
  cut = jax.tree.map(np.asarray, sampling.sample(
      model, params, tokens, lengths, jax.random.key(3), config.replace(cutoff_fraction=fraction)))
  ended = [np.mean(full.lengths <= s) for s in range(1, 25)]
  stop = next((s for s, e in zip(range(1, 25), ended) if e >= fraction), 24)
  assert 1 < stop < 24 and len(set(full.lengths.tolist())) > 3  # the case is not degenerate
  np.testing.assert_array_equal(cut.lengths, np.minimum(full.lengths, stop))
  live = np.arange(24)[None] < cut.lengths[:, None]
  np.testing.assert_array_equal(cut.tokens, np.where(live, full.tokens, config.pad_token_id))
  np.testing.assert_allclose(cut.logprobs, np.where(live, full.logprobs, 0.0), rtol=1e-6)
  running = full.lengths > stop
  np.testing.assert_array_equal(cut.finish_reason,
                                np.where(running, sampler.LENGTH, full.finish_reason))


def test_continuations_end_at_step_delimiter(tiny):
  model, params = tiny
  prefixes, lengths = prompts(model.cfg.vocab_size, [7, 4])
  free = np.asarray(sampling.sample(model, params, prefixes, lengths, jax.random.key(0),
                                    Config(max_new_tokens=20)).tokens)
  delimiter = tuple(int(t) for t in free[0, 2:4])
  out = sampling.sample_continuations(
      model, params, prefixes, lengths, jax.random.key(5), num_continuations=3,
      step_delimiters=(delimiter,), max_step_tokens=20, config=Config(temperature=0.0))
  assert out.tokens.shape == (6, 20)
  for row in range(6):  # greedy: the 3 continuations of a prefix are identical
    end = first_end(free[row // 3].tolist(), [delimiter]) or 20
    assert int(out.lengths[row]) == end


def _assert_same_samples(shared, copied, logprob_tol=1e-5):
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(copied.tokens))
  np.testing.assert_array_equal(np.asarray(shared.lengths), np.asarray(copied.lengths))
  np.testing.assert_array_equal(np.asarray(shared.finish_reason), np.asarray(copied.finish_reason))
  np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(copied.logprobs),
                             rtol=logprob_tol, atol=logprob_tol)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_shared_prefix_equals_copied_cache(tiny, temperature):
  """Rows reading one shared copy of their prompt's cache sample what rows reading their own
  copy sample: same tokens, ends and reasons, log-probs to float32 rounding; prompts of
  different lengths, 3 samples each, stop sequences, stop ids and EOS that really occur."""
  model, params = tiny
  tokens, lengths = prompts(model.cfg.vocab_size, [3, 11, 6, 9], seed=5)
  base = Config(max_new_tokens=24, temperature=temperature, num_samples=3)
  free = np.asarray(sampling.sample(model, params, tokens, lengths, jax.random.key(7),
                                    base.replace(share_prefix=False)).tokens)
  config = base.replace(stop_sequences=(tuple(int(t) for t in free[0, 5:7]),),
                        stop_token_ids=(int(free[4, 9]),), eos_token_id=int(free[7, 12]),
                        pad_token_id=-1)
  shared = sampling.sample(model, params, tokens, lengths, jax.random.key(7), config)
  copied = sampling.sample(model, params, tokens, lengths, jax.random.key(7),
                           config.replace(share_prefix=False))
  _assert_same_samples(shared, copied)
  reasons = set(np.asarray(shared.finish_reason).tolist())
  assert {sampling.STOP, sampling.EOS} <= reasons, reasons  # the ends are exercised
  if temperature:  # the 3 samples of a prompt differ: the rows really are separate
    assert len({tuple(r) for r in np.asarray(shared.tokens)[3:6].tolist()}) > 1


def test_shared_prefix_cache_holds_one_prompt_copy(tiny):
  """The shared program's memory does not grow with the prompt's copies: at 16 samples of
  256-token prompts its temporaries are several times smaller than the copying program's."""
  model, params = tiny
  tokens = jnp.zeros((2, 256), jnp.int32)
  lengths = jnp.full((2,), 256, jnp.int32)
  config = Config(max_new_tokens=8, num_samples=16)

  def temp_bytes(config):
    compiled = sampler._generate.lower(params, tokens, lengths, jax.random.key(0), model=model,
                                       config=config).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  # Copying: 32 rows x 264 slots of cache; shared: 2 x 256 + 32 x 7 slots (and the prefill's
  # temporaries, the same in both).
  assert temp_bytes(config.replace(share_prefix=False)) > 3 * temp_bytes(config)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_sharded_sampling_equals_single_device_copied(tiny, share_prefix):
  """Either sampler sharded on a (2, 2, 2) mesh equals the copying one on 1 device."""
  model, params = tiny
  cfg = model.cfg
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = sharding.logical_to_shardings(models.param_logical_axes(cfg),
                                            models.param_shapes(cfg), mesh, AXIS_RULES)
  sharded = jax.device_put(params, shardings)
  tokens, lengths = prompts(cfg.vocab_size, [3, 9, 5, 7])
  config = Config(max_new_tokens=16, temperature=0.8, num_samples=4)
  ref = sampling.sample(model, params, tokens, lengths, jax.random.key(2),
                        config.replace(share_prefix=False))
  with sharding.axis_rules(mesh, AXIS_RULES):
    out = sampling.sample(model, sharded, tokens, lengths, jax.random.key(2),
                          config.replace(share_prefix=share_prefix))
  assert len(out.tokens.sharding.device_set) == 8
  _assert_same_samples(out, ref)


@pytest.mark.parametrize("changes, message", [
    ({"top_p": 0.0}, "top_p must be in"), ({"temperature": -1.0}, "temperature must be"),
    ({"num_samples": 0}, "num_samples"), ({"stop_sequences": ((),)}, "must not be empty"),
    ({"cutoff_fraction": 0.0}, "cutoff_fraction must be in"),
])
def test_bad_config_is_named(changes, message):
  with pytest.raises(ValueError, match=message):
    Config(**changes)


def test_sampling_config_reads_a_section_and_the_tokenizer():
  tokenizer = types.SimpleNamespace(eos_id=7, pad_id=2)
  section = ml_collections.ConfigDict({"num_samples": 4, "temperature": 0.9, "top_p": 0.8,
                                       "max_new_tokens": 24, "batch_size": 64})
  assert sampling.sampling_config(section, tokenizer) == Config(
      max_new_tokens=24, temperature=0.9, top_p=0.8, num_samples=4, eos_token_id=7,
      pad_token_id=2)
  assert sampling.sampling_config(section.to_dict(), tokenizer, temperature=0.0,
                                  num_samples=1) == Config(
      max_new_tokens=24, temperature=0.0, top_p=0.8, num_samples=1, eos_token_id=7,
      pad_token_id=2)
  del section["top_p"]
  with pytest.raises(ValueError, match=r"lacks \['top_p'\]"):
    sampling.sampling_config(section, tokenizer)


def test_bad_prompt_shapes_are_named(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"prompt_lengths must be in \[1, 4\]"):
    sampling.sample(model, params, np.zeros((2, 4), np.int32), np.array([5, 1]),
                    jax.random.key(0), Config())
  with pytest.raises(ValueError, match=r"prompt_lengths must be int32 \[2\]"):
    sampling.sample(model, params, np.zeros((2, 4), np.int32), np.array([1]),
                    jax.random.key(0), Config())
