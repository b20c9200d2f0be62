"""What every runner of the GRPO benchmark (benchmarks/grpo.py) shares: the workload and the
protocol between the parent and a runner. Standard library only at import: each peer imports
it from its own virtualenv.

Workload: one GRPO iteration samples GENERATIONS completions of each of PROMPTS prompts of
PROMPT_LEN random token ids, exactly NEW_TOKENS new tokens each (temperature 1, no early stop),
scores them on the host with `reward` (the fraction of even token ids: cheap, the same
everywhere), turns the rewards into group-relative advantages, and takes one AdamW step of the
GRPO loss with the KL to the frozen starting policy weighted by BETA. Float32 throughout.

Prompts are text for the peers, whose trainers take strings: token id i is the word "t<i>" of
a word-level tokenizer (`hf_tokenizer`), so a prompt of PROMPT_LEN words is PROMPT_LEN ids.

Protocol: a runner writes JSON objects, one a line, to stdout (other lines are ignored):
  {"event": "ready", ...}                    built, before the first iteration
  {"event": "iteration", "seconds": s, ...}  after each iteration the parent asked for
  {"event": "done", "seconds": [...], ...}   the last line: every iteration's seconds
  {"event": "unsupported", "reason": "..."}  instead of "ready": the framework cannot run here
and reads one line from stdin before each iteration: "step" runs it, "stop" ends the run.
Without `--turns` a runner runs its iterations back to back (standalone use).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

PROMPTS = 4
GENERATIONS = 4
PROMPT_LEN = 32
NEW_TOKENS = 64
BETA = 0.04
LEARNING_RATE = 1e-5  # AdamW, no weight decay, gradients clipped at global norm 1.0
CLIP_NORM = 1.0
EPSILON = 0.2  # PPO clip range
SEED = 0
WORD = "t{}"  # the word of token id i in the peers' tokenizer (`hf_tokenizer`)


def prompt_ids(iterations: int, vocab_size: int) -> list[list[int]]:
  """PROMPTS prompts per iteration, PROMPT_LEN ids each: [iterations * PROMPTS][PROMPT_LEN]."""
  rng = random.Random(SEED)
  return [[rng.randrange(vocab_size) for _ in range(PROMPT_LEN)]
          for _ in range(iterations * PROMPTS)]


def prompt_text(ids: list[int]) -> str:
  return " ".join(WORD.format(i) for i in ids)


def text_ids(text: str) -> list[int]:
  """Token ids of a decoded completion (words that are not "t<i>" are skipped)."""
  return [int(w[1:]) for w in text.split() if w[:1] == "t" and w[1:].isdigit()]


def reward(ids) -> float:
  """The fraction of even ids among a completion's tokens (0 for an empty one)."""
  ids = list(ids)
  return sum(1 for i in ids if int(i) % 2 == 0) / len(ids) if ids else 0.0


def hf_tokenizer(vocab_size: int):
  """A `transformers` fast tokenizer whose words "t0".."t{V-1}" are ids 0..V-1; the pad token
  "<pad>" is id V, EOS "<eos>" id V + 1 (neither is ever sampled: the model has V logits)."""
  import tokenizers
  import transformers
  vocab = {WORD.format(i): i for i in range(vocab_size)}
  vocab |= {"<pad>": vocab_size, "<eos>": vocab_size + 1}
  core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
  core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  core.decoder = tokenizers.decoders.WordPiece(prefix="##", cleanup=False)  # joins with spaces
  return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                              eos_token="<eos>", unk_token="<pad>",
                                              padding_side="left")


def arguments(description: str) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--model_dir", required=True,
                      help="Hugging Face folder of the model (config.json + safetensors)")
  parser.add_argument("--iterations", type=int, default=4, help="iterations to run, warm-up "
                      "included")
  parser.add_argument("--turns", action="store_true",
                      help="wait for 'step' on stdin before each iteration")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch threads (0: one per CPU, as benchmarks/train_step.py)")
  return parser.parse_args()


def emit(event: str, **fields) -> None:
  """One protocol message: a JSON line on stdout, flushed."""
  sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
  sys.stdout.flush()


class Turns:
  """The runner's side of the protocol: `begin()` waits for the parent's go (False: stop),
  `end()` reports the seconds since `begin()` returned."""

  def __init__(self, iterations: int, turns: bool):
    self.iterations, self.turns = iterations, turns
    self.seconds: list[float] = []
    self.start = None

  def begin(self) -> bool:
    if len(self.seconds) >= self.iterations:
      return False
    if self.turns:
      command = sys.stdin.readline().strip()
      if command != "step":
        return False
    self.start = time.perf_counter()
    return True

  def end(self, **fields) -> float:
    """Reports the iteration; `fields` (e.g. the seconds of its phases) ride along."""
    seconds = time.perf_counter() - self.start
    self.seconds.append(seconds)
    emit("iteration", seconds=seconds, index=len(self.seconds) - 1, **fields)
    return seconds

  def done(self, **fields) -> None:
    emit("done", seconds=self.seconds, **fields)
