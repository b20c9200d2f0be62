"""SentencePiece (shipped and trained here) and local Hugging Face tokenizers."""

import pytest
import tokenizers as hf_tokenizers
import transformers

from reasonjax.data import tasks, tokenizers

CORPUS = ["Start with 7. Add 5.\n7 + 5 = 12\n#### 12", "Mia has 3 apples.\n3 * 4 = 12\n"] * 50


def test_shipped_synthetic_model_round_trips_every_task():
  tok = tokenizers.load("synthetic")
  assert "synthetic" in tokenizers.shipped()
  newline = tok.encode("\n")
  assert len(newline) == 1 and (newline[0],) in tok.step_end_sequences()
  for name in sorted(tasks.TASKS):
    task = tasks.get_task(name)
    for problem in task.generate(300, seed=11, split="test"):
      text = task.prompt(problem) + problem.solution
      ids = tok.encode(text, add_bos=True, add_eos=True)
      assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
      assert tok.decode(ids[1:-1]) == text
      # Step ends in token space line up with the task's own step parsing.
      ends = sum(1 for i in ids if (i,) in tok.step_end_sequences())
      assert ends == text.count("\n")


def test_train_sentencepiece(tmp_path):
  tok = tokenizers.train_sentencepiece(CORPUS, str(tmp_path / "t.model"), vocab_size=300)
  assert tok.vocab_size == 300
  text = "Add 12345.\n  two  spaces"
  assert tok.decode(tok.encode(text)) == text
  digits = [tok.sp.id_to_piece(i) for i in tok.encode("2745")]
  assert digits == ["2", "7", "4", "5"]  # one token per digit


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """A byte-level BPE tokenizer with a chat template, saved like a checkpoint's tokenizer."""
  model = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  # Runs of newlines stay one pre-token, as in the Llama-3 and Qwen2 regexes, so BPE learns
  # merged newline tokens ("\n\n") that must end a step too.
  pre = hf_tokenizers.pre_tokenizers
  model.pre_tokenizer = pre.Sequence([
      pre.Split(hf_tokenizers.Regex(r"\s*[\r\n]+"), behavior="isolated"),
      pre.ByteLevel(add_prefix_space=False, use_regex=True)])
  model.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<s>", "</s>"],
      initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
  model.train_from_iterator(CORPUS + ["a.\nb.\n\nc"] * 30, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>",
                                              eos_token="</s>")
  fast.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
  path = tmp_path_factory.mktemp("hf_tok")
  fast.save_pretrained(path)
  return str(path)


def test_hf_tokenizer_from_local_folder(hf_folder):
  tok = tokenizers.load(hf_folder)
  assert isinstance(tok, tokenizers.HFTokenizer)
  text = "a.\nb.\n\nc 7 + 5 = 12\n"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  ends = tok.step_end_sequences()
  # Every generated token that carries a newline must end a step, merged tokens included...
  newline_tokens = [i for i in ids if "\n" in tok.decode([i])]
  assert newline_tokens and all((i,) in ends for i in newline_tokens)
  assert any(len(tok.decode([i])) > 1 for i in newline_tokens), "expected a merged newline"
  # ...and nothing else does.
  assert all("\n" in tok.decode(list(seq)) for seq in ends)
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert chat == "<|user|>hi\n<|assistant|>"


def test_custom_delimiter(hf_folder):
  tok = tokenizers.load(hf_folder, step_delimiter="=")
  assert all("=" in tok.decode(list(seq)) for seq in tok.step_end_sequences())


def test_load_errors_name_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"neither a shipped model \['synthetic'\]"):
    tokenizers.load("gpt5")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokenizers.load(str(tmp_path / "x.model"))
  with pytest.raises(ValueError, match="step_delimiter"):
    tokenizers.load("synthetic", step_delimiter="")


def _same(a, b, text):
  assert type(a) is type(b)
  assert a.encode(text, add_bos=True, add_eos=True) == b.encode(text, add_bos=True, add_eos=True)
  assert (a.vocab_size, a.bos_id, a.eos_id, a.pad_id) == (b.vocab_size, b.bos_id, b.eos_id,
                                                          b.pad_id)
  assert a.step_end_sequences() == b.step_end_sequences()


def test_save_then_load_round_trips_sentencepiece(tmp_path):
  tok = tokenizers.load("synthetic")
  tok.save(str(tmp_path / "hf"))
  _same(tok, tokenizers.load(str(tmp_path / "hf")), "Start with 7. Add 5.\n7 + 5 = 12\n#### 12")
  trained = tokenizers.train_sentencepiece(CORPUS, str(tmp_path / "t.model"), vocab_size=300)
  trained.save(str(tmp_path / "trained"))
  _same(trained, tokenizers.load(str(tmp_path / "trained")), "Mia has 3 apples.\n")


def test_save_then_load_round_trips_hugging_face(hf_folder, tmp_path):
  tok = tokenizers.load(hf_folder)
  # Beside a checkpoint's files, as an export writes it.
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  tok.save(str(tmp_path / "hf"))
  again = tokenizers.load(str(tmp_path / "hf"))
  _same(tok, again, "a.\nb.\n\nc 7 + 5 = 12\n")
  messages = [{"role": "user", "content": "hi"}]
  assert again.apply_chat_template(messages) == tok.apply_chat_template(messages)
