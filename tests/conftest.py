"""Test setup: 8 fake CPU devices for sharding tests, and tiny Hugging Face checkpoints."""

import os

# Before jax initialises its backend: sharding tests need a (2, 2, 2) mesh of CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_dir(tmp_path_factory, name: str) -> str:
  """A directory of the whole run: under pytest-xdist, the same for every worker (the parent of
  the workers' own temporary directories); otherwise a fresh one."""
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    return str(tmp_path_factory.mktemp(name))
  path = tmp_path_factory.getbasetemp().parent / name
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the run, in every pytest-xdist worker and in the
  `reasonjax.main` subprocesses: a program that several tests compile is compiled once. A fresh
  directory, not the user's ~/.cache, so that a run does not depend on earlier ones. (JAX falls
  back to compiling when it reads an entry another process is still writing.)"""
  import jax
  path = shared_dir(tmp_path_factory, "xla_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  jax.config.update("jax_compilation_cache_dir", path)
  # Every program, not only those that took a second: the subprocess runs of the tests compile
  # the same small programs again and again (measured: a repeated runlocal GRPO run 11.1 s with
  # JAX's default of 1 s, 8.8 s with 0).
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def main_command(*flags, workdir) -> list[str]:
  """`python -m reasonjax.main --workdir=... *flags`, as a user runs it (from REPO)."""
  return [sys.executable, "-m", "reasonjax.main", f"--workdir={workdir}", *flags]


def run_main(*flags, workdir, env=None, timeout=600) -> subprocess.CompletedProcess:
  """Runs `main_command` to the end; stdout and stderr are captured as text."""
  return subprocess.run(main_command(*flags, workdir=workdir), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def sft_workdir(tmp_path_factory):
  """A finished `sft_arith:runlocal` run (its export: `<workdir>/hf`), shared by the tests that
  start from a policy. Run as a user runs it, on one CPU device (not the session's 8), once for
  all pytest-xdist workers: the first to get here trains it while the others wait on the lock."""
  import filelock
  workdir = os.path.join(shared_dir(tmp_path_factory, "sft_arith"), "run")
  with filelock.FileLock(workdir + ".lock"):
    if not os.path.exists(os.path.join(workdir, "hf", "config.json")):
      env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
      out = run_main("--config=configs/sft_arith.py:runlocal", workdir=workdir, env=env)
      assert out.returncode == 0, out.stderr[-3000:]
  return workdir


# Shapes not in any preset; initializer_range 0.2 gives logits of order 1-10, so that parity
# tolerances are meaningful.
HF_COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.2,
                 max_position_embeddings=128)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def hf_model(kind: str, **overrides):
  """A tiny random `transformers` model: 'llama' (GQA, untied, Llama-3 RoPE scaling),
  'qwen2' (q/k/v bias, tied), 'qwen3' (q/k norm, untied)."""
  import torch
  import transformers
  torch.manual_seed(0)
  if kind == "llama":
    cfg = transformers.LlamaConfig(**(HF_COMMON | dict(tie_word_embeddings=False,
                                                       rope_theta=500000.0,
                                                       rope_scaling=LLAMA3_ROPE) | overrides))
    return transformers.LlamaForCausalLM(cfg).eval()
  if kind == "qwen2":
    cfg = transformers.Qwen2Config(**(HF_COMMON | dict(tie_word_embeddings=True) | overrides))
    return transformers.Qwen2ForCausalLM(cfg).eval()
  if kind == "qwen3":
    cfg = transformers.Qwen3Config(**(HF_COMMON | dict(tie_word_embeddings=False) | overrides))
    return transformers.Qwen3ForCausalLM(cfg).eval()
  raise ValueError(kind)


@pytest.fixture(scope="session", params=["llama", "qwen2", "qwen3"])
def hf_checkpoint(request, tmp_path_factory):
  """(kind, folder, torch model) of a tiny checkpoint written by `transformers`."""
  model = hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(path)
  return request.param, str(path), model


def assert_same_batches(a: dict, b: dict) -> None:
  """Two host batches hold the same fields, dtypes and values (timings aside: they differ
  between runs)."""
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    if not k.endswith(("seconds", "per_s")):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def right_padded_batch(vocab_size: int, lengths=(11, 7, 4), seed: int = 0):
  """tokens int32 [B, T] and attention_mask int32 [B, T] for rows of `lengths`."""
  rng = np.random.default_rng(seed)
  length = max(lengths)
  tokens = rng.integers(0, vocab_size, (len(lengths), length)).astype(np.int32)
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return tokens * mask, mask


def random_params(cfg, seed: int, scale: float = 0.2):
  """Random parameters drawn on the host (the jitted initialiser takes seconds to compile):
  N(0, scale) weights, 1 + N(0, scale) norm scales. scale 0.2 gives logits of order 1-10, so
  greedy outputs vary from token to token."""
  import jax
  import jax.numpy as jnp

  from reasonjax import models
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    noise = rng.normal(0.0, scale, shape.shape)
    return jnp.asarray(noise + (path[-1].key == "scale"), shape.dtype)

  # Drawn in the stacked layout whatever cfg's: the same seed gives the same model either way.
  params = jax.tree_util.tree_map_with_path(
      leaf, models.param_shapes(cfg.replace(scan_layers=True)))
  return params if cfg.scan_layers else models.unstack_layers(params)


# ----------------------------------------------------------------------------- GSM8K checkpoint

# The read-only evaluation data beside the repository (see its README); tests that need it skip
# without it.
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
GSM8K_DIR = os.path.join(SHARED_DATA, "gsm8k")
# Qwen2.5's chat format, without its default system prompt.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_gsm8k_tokenizer(texts, vocab_size: int = 400):
  """A byte-level BPE `transformers` tokenizer trained on `texts`, with Qwen2.5's special tokens
  (eos <|im_end|>, pad <|endoftext|>) and chat format; no download."""
  import tokenizers as hf_tokenizers
  import transformers
  model = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  model.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  model.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  model.train_from_iterator(texts, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<|im_end|>",
                                              pad_token="<|endoftext|>")
  fast.chat_template = CHAT_TEMPLATE
  return fast


@pytest.fixture(scope="session")
def gsm8k_checkpoint(tmp_path_factory):
  """A folder like Qwen2.5-0.5B-Instruct's, tiny and random: a Qwen2 checkpoint (hidden 64, 2
  layers, vocabulary 512) and a BPE tokenizer trained on the first 300 GSM8K train rows."""
  import json
  import transformers
  path = os.path.join(GSM8K_DIR, "train.jsonl")
  if not os.path.exists(path):
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  with open(path) as f:
    rows = [json.loads(line) for _, line in zip(range(300), f)]
  tokenizer = tiny_gsm8k_tokenizer([r["question"] + "\n" + r["answer"] for r in rows])
  folder = str(tmp_path_factory.mktemp("gsm8k_checkpoint"))
  tokenizer.save_pretrained(folder)
  model = hf_model("qwen2", vocab_size=512, num_hidden_layers=2, max_position_embeddings=1024,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=None)
  assert len(tokenizer) <= model.config.vocab_size
  model.save_pretrained(folder)
  return folder
