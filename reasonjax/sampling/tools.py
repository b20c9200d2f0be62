"""A Python tool for tool-integrated sampling: the model writes a program, the host runs it in
the sandbox, and the model reads its output (CoSC, program-aided reasoning).

    tool = PythonTool(timeout_s=2.0, max_calls=3)
    texts = generate_texts(model, params, tok, prompts, rng, config, tool=tool)

A program is the text between `start` and `end`. `generate_texts` stops a row when it generates
`end`, appends `tool.run(...)`'s block ("\\n<output>\\n32\\n</output>\\n") to its text and
samples the row on from its prompt and text so far. The code only ever runs through
`rewards.sandbox.run_python`: a fresh interpreter with time and memory limits and no network.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

from reasonjax.rewards import sandbox

OUTPUT = "\n<output>\n"  # the start of a run's output block, after the program's end marker


@dataclasses.dataclass(frozen=True)
class PythonTool:
  """Knobs of the tool. Hashable and comparable, like the tasks that carry it.

  Attributes:
    start, end: the markers around a program in the model's text.
    timeout_s, memory_mb: the sandbox's limits per run.
    max_calls: runs per sample; a program after the last one is left without output.
    max_output_chars: what the model reads of a run's output (the end is cut).
    workers: runs in flight at once (each is a subprocess).
  """
  start: str = "<code>\n"
  end: str = "</code>"
  timeout_s: float = 2.0
  memory_mb: int = 256
  max_calls: int = 3
  max_output_chars: int = 200
  workers: int = 4

  def __post_init__(self):
    if not (self.start and self.end) or self.max_calls < 1 or self.timeout_s <= 0:
      raise ValueError(f"PythonTool: non-empty markers, max_calls >= 1 and timeout_s > 0 "
                       f"needed, got {self}")

  def code(self, text: str) -> str | None:
    """The program of the last call in `text` (which ends with `end`); None without a start."""
    body = text[:len(text) - len(self.end)] if text.endswith(self.end) else text
    at = body.rfind(self.start)
    return None if at < 0 else body[at + len(self.start):]

  def block(self, result: sandbox.Result | None) -> str:
    """What the model reads after its program: stdout when it ran, else the error's last line."""
    if result is None:
      text = f"no program: a program starts with {self.start!r}"
    elif result.timed_out:
      text = f"TimeoutError: the program ran for more than {self.timeout_s:g} s"
    elif result.ok:
      text = result.stdout.strip()
    else:
      lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
      text = lines[-1] if lines else f"the program exited with status {result.returncode}"
    return self.output_block(text)

  def output_block(self, text: str) -> str:
    """A run's output as the model reads it (seed traces write theirs with it too)."""
    return f"{OUTPUT}{text[:self.max_output_chars]}\n</output>\n"

  def calls(self, text: str) -> int:
    """The programs of `text` that ran (their output follows them)."""
    return text.count(self.end + OUTPUT)

  def run(self, texts: list[str]) -> list[str]:
    """The output block of the last program of each text, the programs run in parallel."""
    def one(text):
      code = self.code(text)
      return None if code is None else sandbox.run_python(code, self.timeout_s, self.memory_mb)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(self.workers, len(texts)))) as pool:
      return [self.block(r) for r in pool.map(one, texts)]
