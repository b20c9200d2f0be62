"""Strings in, strings out: chunked text generation against the sampler called on one prompt at
a time, EOS dropped and stop tokens kept, several samples per prompt, and prompt encoding against
the tokenizer."""

import jax
import numpy as np
import pytest

from reasonjax import models, sampling
from reasonjax.data import tokenizers
from reasonjax.sampling import sampler
from tests.conftest import random_params

Config = sampling.SamplingConfig

# Seven prompts of different token lengths (two of them past the 16-token bucket).
PROMPTS = ["Start with 7. Add 5.", "3 + 4 = 7", "x",
           "Multiply by 3. Subtract 4. What is the result?\n", "12 * 3 = 36\n36 - 4 = 32",
           "hello", "Divide by 2."]
# Ordinary tokens as EOS and stop ids (1 in 16 and 1 in 64 of the vocabulary), so that rows end
# in all three ways and a kept EOS would show in the decoded text. The tokenizer's own EOS too.
EOS_IDS = (3,) + tuple(range(4, 512, 16))
STOP_IDS = tuple(range(12, 512, 64))
GREEDY = Config(max_new_tokens=12, eos_token_id=EOS_IDS, stop_token_ids=STOP_IDS)
SAMPLED = GREEDY.replace(max_new_tokens=8, temperature=1.0, num_samples=3)


def expected_text(tok, tokens, length):
  """Brute force: the row ends at its first EOS or stop id (dropped or kept), else at the
  budget. Returns (text, how it ended)."""
  tokens = list(tokens)
  end = next((t for t, x in enumerate(tokens) if x in EOS_IDS + STOP_IDS), None)
  if end is None:
    assert length == len(tokens)
    return tok.decode(tokens), "length"
  assert length == end + 1
  if tokens[end] in EOS_IDS:
    assert tok.decode(tokens[:end]) != tok.decode(tokens[:end + 1]) or tokens[end] == 3
    return tok.decode(tokens[:end]), "eos"
  return tok.decode(tokens[:end + 1]), "stop"


@pytest.fixture(scope="module")
def tok():
  tok = tokenizers.load("synthetic")
  assert tok.eos_id == 3 and tok.vocab_size == 512
  return tok


@pytest.fixture(scope="module")
def tiny(tok):
  cfg = models.preset("tiny", vocab_size=tok.vocab_size, num_layers=2, hidden_size=64,
                      intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
  return models.Model(cfg), random_params(cfg, 0)


def test_encode_prompts_is_bos_then_the_tokenizer_ids_right_padded(tok):
  tokens, lengths = sampling.encode_prompts(tok, PROMPTS)
  ids = [tok.encode(p) for p in PROMPTS]
  assert tokens.dtype == np.int32 and lengths.dtype == np.int32
  assert tokens.shape == (len(PROMPTS), 1 + max(len(x) for x in ids)) == (7, 20)
  np.testing.assert_array_equal(lengths, [1 + len(x) for x in ids])
  for row, x, prompt in zip(tokens, ids, PROMPTS):
    assert row[0] == tok.bos_id
    assert row[1:1 + len(x)].tolist() == x
    assert (row[1 + len(x):] == tok.pad_id).all()
    assert tok.decode(row[1:1 + len(x)].tolist()) == prompt  # identity normalisation


def test_chunked_greedy_equals_each_prompt_alone(tiny, tok):
  """batch_size 3 over 7 prompts (the last chunk padded) against a sampler call per prompt
  (three copies of it at the width of the whole list: the program the chunks use)."""
  model, params = tiny
  texts = sampling.generate_texts(model, params, tok, PROMPTS, jax.random.key(0), GREEDY,
                                  batch_size=3)
  tokens, lengths = sampling.encode_prompts(tok, PROMPTS)
  expected, ends = [], []
  for i in range(len(PROMPTS)):
    out = sampling.sample(model, params, tokens[[i, i, i]], lengths[[i, i, i]],
                          jax.random.key(0), GREEDY)
    text, end = expected_text(tok, np.asarray(out.tokens[0]), int(out.lengths[0]))
    expected.append(text)
    ends.append(end)
  assert {"eos", "stop", "length"} <= set(ends), ends  # Every way of ending is exercised.
  assert len(set(expected)) == len(PROMPTS)  # Distinct outputs: a row mix-up would show.
  assert texts == [[t] for t in expected]


def test_num_samples_follow_the_chunk_rng_contract_and_compile_once(tiny, tok):
  """N lists of n strings; sample j of prompt i is row (i - start) * n + j of its chunk, sampled
  with fold_in(rng, chunk index) on a chunk padded with copies of its first prompt."""
  model, params = tiny
  n, batch_size = SAMPLED.num_samples, 3
  rng = jax.random.key(5)
  sampler._generate.clear_cache()  # Count the compilations of this call whatever ran before.
  texts = sampling.generate_texts(model, params, tok, PROMPTS, rng, SAMPLED,
                                  batch_size=batch_size)
  assert sampler._generate._cache_size() == 1  # Three chunks, the last padded: one shape.
  assert len(texts) == len(PROMPTS) and all(len(t) == n for t in texts)
  tokens, lengths = sampling.encode_prompts(tok, PROMPTS)
  ends = []
  for chunk, start in enumerate(range(0, len(PROMPTS), batch_size)):
    rows = [r if r < len(PROMPTS) else start for r in range(start, start + batch_size)]
    out = sampling.sample(model, params, tokens[rows], lengths[rows],
                          jax.random.fold_in(rng, chunk), SAMPLED)
    generated, counts = np.asarray(out.tokens), np.asarray(out.lengths)
    for b in range(min(batch_size, len(PROMPTS) - start)):
      for j in range(n):
        text, end = expected_text(tok, generated[b * n + j], counts[b * n + j])
        assert texts[start + b][j] == text, (start + b, j)
        ends.append(end)
  assert {"eos", "stop", "length"} <= set(ends), ends
  assert sum(len(set(t)) == n for t in texts) >= 5  # Samples of a prompt differ.


def test_same_rng_same_samples_other_rng_other_samples(tiny, tok):
  model, params = tiny

  def run(seed):
    return sampling.generate_texts(model, params, tok, PROMPTS, jax.random.key(seed), SAMPLED,
                                   batch_size=3)

  first = run(1)
  assert run(1) == first
  assert run(2) != first


def test_empty_prompt_list(tiny, tok):
  model, params = tiny
  assert sampling.generate_texts(model, params, tok, [], jax.random.key(0), GREEDY) == []


@pytest.mark.parametrize("shrink, sizes", [(False, [4, 4]), (True, [4, 1])])
def test_sample_chunks_pads_the_last_call_with_its_first_prompt(tiny, tok, shrink, sizes):
  model, params = tiny
  tokens, lengths = sampling.encode_prompts(tok, PROMPTS[:5])
  chunks = list(sampling.sample_chunks(model, params, tokens, lengths, jax.random.key(0),
                                       GREEDY, batch_size=4, shrink=shrink))
  assert [real for real, _ in chunks] == [4, 1]
  assert [len(out.tokens) for _, out in chunks] == sizes
  # Greedy: each real row equals its prompt sampled alone; padding rows repeat the first.
  for start, (real, out) in zip((0, 4), chunks):
    for row in range(len(out.tokens)):
      i = start + (row if row < real else 0)
      alone = sampling.sample(model, params, tokens[i:i + 1], lengths[i:i + 1],
                              jax.random.key(0), GREEDY)
      np.testing.assert_array_equal(out.tokens[row], np.asarray(alone.tokens[0]))


def test_a_tool_call_stops_the_sample_runs_the_program_and_samples_on(monkeypatch):
  """The tool loop with the sampler scripted by prompt text: each continuation is asked for
  with the prompt, the text so far and the program's output, one row per sample, and the
  generated tokens add up; after `max_calls` a program is left without output."""
  from reasonjax.sampling import texts as texts_lib
  from reasonjax.sampling.tools import PythonTool

  tool = PythonTool(max_calls=2)
  step = "<code>\nprint(6 * 7)\n</code>"
  output = "\n<output>\n42\n</output>\n"
  script = {"Q": ["#### 1", step],
            "Q" + step + output: [step],
            "Q" + step + output + step + output: [step]}
  asked = []

  def scripted(model, params, tokenizer, prompts, rng, config, batch_size, progress,
               shrink=False):
    asked.append((list(prompts), config.num_samples))
    assert tuple(tokenizer.encode(tool.end)) in config.stop_sequences
    out = [script[p][:config.num_samples] for p in prompts]
    return out, np.asarray([[len(t) for t in row] for row in out], np.int32)

  monkeypatch.setattr(texts_lib, "_generate", scripted)
  tok = tokenizers.load("synthetic")
  out, lengths = sampling.generate_texts(None, None, tok, ["Q"], jax.random.key(0),
                                         Config(max_new_tokens=8, num_samples=2), tool=tool,
                                         return_lengths=True)
  assert out == [["#### 1", step + output + step + output + step]]
  assert asked == [(["Q"], 2), (["Q" + step + output], 1),
                   (["Q" + step + output + step + output], 1)]
  assert lengths.tolist() == [[6, 3 * len(step)]]
