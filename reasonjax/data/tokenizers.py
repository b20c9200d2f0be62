"""Tokenizers behind one interface: SentencePiece (trained here) and Hugging Face (local folder).

    tok = tokenizers.load("synthetic")                 # a model shipped in the package
    tok = tokenizers.load("path/to/hf_checkpoint")     # tokenizer.json (+ chat template)
    tok.save("runs/x/hf")                              # then tokenizers.load("runs/x/hf")
    ids = tok.encode("3 + 4 = 7\\n", add_bos=True)
    tok.step_end_sequences()                           # token-id sequences that end a step

Reasoning steps end at a delimiter (default "\\n"). A BPE vocabulary may fold it into larger
tokens (".\\n", "\\n\\n"), so the sequences that end a step are every token whose text contains
the delimiter, plus the delimiter's own encoding; the sampler stops on any of them.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm

SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "tokenizer_models")
# The file name of a SentencePiece model saved into a folder (the name Llama checkpoints use).
SENTENCEPIECE_FILE = "tokenizer.model"
# Any of these makes a folder a Hugging Face tokenizer (its tokenizer.model, if any, is HF's).
HF_FILES = ("tokenizer.json", "tokenizer_config.json")


class Tokenizer:
  """Common interface. Subclasses set vocab_size, bos_id, eos_id, pad_id and implement
  `_encode`, `decode`, `_vocab_texts`, `save`."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int

  def __init__(self, step_delimiter: str = "\n"):
    if not step_delimiter:
      raise ValueError("step_delimiter must be a non-empty string")
    self.step_delimiter = step_delimiter

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def _vocab_texts(self) -> list[str]:
    """The text of each token id (for finding the tokens that contain the delimiter)."""
    raise NotImplementedError

  def save(self, directory: str) -> None:
    """Writes the tokenizer into `directory` (created if needed; e.g. beside an exported
    checkpoint), so that `load(directory)` gives the same ids and special ids."""
    raise NotImplementedError

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ids = self._encode(text)
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    if add_eos and self.eos_id is not None:
      ids = ids + [self.eos_id]
    return ids

  @functools.cache  # noqa: B019 -- tokenizers live as long as the program
  def step_end_sequences(self) -> tuple[tuple[int, ...], ...]:
    """Token-id sequences whose generation ends a reasoning step (for SamplingConfig)."""
    singles = [(i,) for i, text in enumerate(self._vocab_texts())
               if self.step_delimiter in text]
    own = tuple(self._encode(self.step_delimiter))
    return tuple(dict.fromkeys(singles + ([own] if own else [])))

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
    """A plain "role: content" transcript ending with the assistant's turn."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (from a .model file or its bytes)."""

  def __init__(self, model: str | bytes, step_delimiter: str = "\n"):
    super().__init__(step_delimiter)
    if isinstance(model, str):
      if not os.path.exists(model):
        raise FileNotFoundError(f"SentencePiece model {model!r} does not exist")
      with open(model, "rb") as f:
        model = f.read()
    self.sp = spm.SentencePieceProcessor(model_proto=model)
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    self.pad_id = max(self.sp.pad_id(), 0)

  def _encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def _vocab_texts(self) -> list[str]:
    return [self.sp.decode([i]) if not self.sp.is_control(i) else ""
            for i in range(self.vocab_size)]

  def save(self, directory: str) -> None:
    """`directory/tokenizer.model`, the model proto (special ids included)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SENTENCEPIECE_FILE), "wb") as f:
      f.write(self.sp.serialized_model_proto())


class HFTokenizer(Tokenizer):
  """A Hugging Face tokenizer from a local folder (tokenizer.json etc.); never downloads."""

  def __init__(self, path: str, step_delimiter: str = "\n"):
    super().__init__(step_delimiter)
    import transformers  # Heavy import, only for this backend.
    if not os.path.isdir(path):
      raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
    self.hf = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.vocab_size = len(self.hf)
    self.bos_id = self.hf.bos_token_id
    self.eos_id = self.hf.eos_token_id
    self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else (
        self.eos_id or 0)

  def _encode(self, text: str) -> list[int]:
    return self.hf.encode(text, add_special_tokens=False)

  def decode(self, ids: Sequence[int]) -> str:
    return self.hf.decode([int(i) for i in ids])

  def _vocab_texts(self) -> list[str]:
    return [self.hf.decode([i]) for i in range(self.vocab_size)]

  def save(self, directory: str) -> None:
    """The tokenizer's files (`save_pretrained`: tokenizer.json, its config, chat template)."""
    os.makedirs(directory, exist_ok=True)
    self.hf.save_pretrained(directory)

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
    """The checkpoint's chat template when it has one."""
    if self.hf.chat_template:
      return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return super().apply_chat_template(messages)


def train_sentencepiece(texts: Iterable[str], path: str, *, vocab_size: int = 1024,
                        model_type: str = "bpe") -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` and writes it to `path` (a .model file).

  Newlines survive as their own token (reasoning steps end with them), digits are split one per
  token (arithmetic sees every digit), unknown bytes fall back to byte tokens, and no text
  normalisation is applied, so decode(encode(x)) == x.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, user_defined_symbols=["\n"], split_digits=True, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_by_whitespace=True,
      character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3, num_threads=1,
      max_sentence_length=1 << 16, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return SentencePieceTokenizer(path)


def load(name_or_path: str, step_delimiter: str = "\n") -> Tokenizer:
  """A shipped SentencePiece model by name (see `shipped()`), a .model file, or a folder: a
  Hugging Face tokenizer (tokenizer.json or tokenizer_config.json), else a SentencePiece
  `tokenizer.model` (what `SentencePieceTokenizer.save` writes)."""
  shipped_path = os.path.join(SHIPPED_DIR, name_or_path + ".model")
  if os.path.exists(shipped_path):
    return SentencePieceTokenizer(shipped_path, step_delimiter)
  if name_or_path.endswith(".model"):
    return SentencePieceTokenizer(name_or_path, step_delimiter)
  if os.path.isdir(name_or_path):
    sp_path = os.path.join(name_or_path, SENTENCEPIECE_FILE)
    has_hf = any(os.path.exists(os.path.join(name_or_path, f)) for f in HF_FILES)
    if not has_hf and os.path.isfile(sp_path):
      return SentencePieceTokenizer(sp_path, step_delimiter)
    return HFTokenizer(name_or_path, step_delimiter)
  raise ValueError(f"tokenizer {name_or_path!r} is neither a shipped model {shipped()}, a "
                   ".model file nor a folder with a Hugging Face or SentencePiece tokenizer")


def shipped() -> list[str]:
  """Names of the SentencePiece models shipped in the package."""
  if not os.path.isdir(SHIPPED_DIR):
    return []
  return sorted(f[:-6] for f in os.listdir(SHIPPED_DIR) if f.endswith(".model"))


def train_synthetic(path: str, *, vocab_size: int = 512, problems_per_task: int = 5000
                    ) -> SentencePieceTokenizer:
  """The shipped 'synthetic' model: trained on prompts and gold solutions of every synthetic
  task (train split, seed 0). Rebuild with `python -m reasonjax.data.tokenizers`."""
  from reasonjax.data import tasks  # Local: tasks do not need the tokenizer module.
  texts = []
  for name in sorted(tasks.TASKS):
    task = tasks.get_task(name)
    texts += [task.prompt(p) + p.solution for p in task.generate(problems_per_task, seed=0)]
  return train_sentencepiece(texts, path, vocab_size=vocab_size)


if __name__ == "__main__":
  train_synthetic(os.path.join(SHIPPED_DIR, "synthetic.model"))
  print(f"wrote {os.path.join(SHIPPED_DIR, 'synthetic.model')}")
