"""A task's problems in a structured reasoning format, with seed traces to fine-tune on and the
format check that the `format` reward reads (`Task.well_formed`).

    task = tasks.with_format(tasks.get_task("arithmetic"), style="coat", error_rate=0.3)

"coat": Satori's chain of action-thought (Shen et al. 2025, "Satori"). Every line opens with a
meta-action: `<|continue|>` a step, `<|reflect|>` a check of the last step, `<|explore|>` another
try at it. A fraction `error_rate` of the seed traces writes one step wrong, refutes it and
explores the right one:

    <|continue|> 4 * 19 = 76
    <|continue|> 76 * 13 = 989
    <|reflect|> Wrong: 76 * 13 is not 989.
    <|explore|> 76 * 13 = 988
    <|continue|> 988 - 17 = 971
    <|reflect|> Right: every step holds.
    #### 971

A refuted step no longer counts: the base task grades the steps that stand (Countdown's checker
sees the moves kept).

"refine": ReFIne's tagged sections (Sun et al. 2025, "ReFIne: A Framework for Trustworthy Large
Reasoning Models with Reliability, Faithfulness, and Interpretability"), each once and in order:
<understanding> (the question's goal), <facts> (its numbers), <plan>, <think> (the steps),
<final_answer> (the answer line) and <self_assessment> ("Confidence: k/10", which the
`calibration` reward scores against the answer's correctness). The paper's sections are written
by a large model; the seeds here are written from the task's own steps, always confident.

Problems are the base task's, in the same order; the base task grades them. Tasks whose steps
are not equations `a op b = c` (GSM8K, MATH) have no COAT seeds: generating raises.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

from reasonjax.data.tasks.base import (ANSWER_PREFIX, Problem, StepCheck, Task, parse_answer,
                                       parse_equation, parse_steps)

STYLES = ("coat", "refine")
INSTRUCTIONS = {"coat": "Reason with meta-actions.\n", "refine": "Answer in tagged sections.\n"}
CONTINUE, REFLECT, EXPLORE = "<|continue|>", "<|reflect|>", "<|explore|>"
WRONG, RIGHT = "Wrong:", "Right: every step holds."
SECTIONS = ("understanding", "facts", "plan", "think", "final_answer", "self_assessment")
_CONFIDENCE = re.compile(r"Confidence:\s*(\d+)\s*/\s*10\b")
_SECTION = {name: re.compile(rf"<{name}>\n(.*?)\n</{name}>", re.S) for name in SECTIONS}


def parse_confidence(text: str) -> float | None:
  """k / 10 of the last "Confidence: k/10" in `text` (k in 0..10); None without one."""
  found = [int(k) for k in _CONFIDENCE.findall(text)]
  return found[-1] / 10 if found and found[-1] <= 10 else None


def standing_steps(text: str) -> list[str]:
  """The steps of a COAT text that stand: each `<|continue|>` or `<|explore|>` line's step, less
  those a `<|reflect|> Wrong:` line right after them refutes."""
  steps: list[str] = []
  for line in text.split("\n"):
    line = line.strip()
    if line.startswith((CONTINUE, EXPLORE)):
      steps.append(line.split(">", 1)[1].strip())
    elif line.startswith(REFLECT) and line[len(REFLECT):].strip().startswith(WRONG) and steps:
      steps.pop()
  return steps


def coat_trace(problem: Problem, error_rate: float) -> str:
  """The COAT seed trace of `problem` (module docstring); its draws are seeded by the question.
  Raises ValueError if a step is not an equation."""
  steps = parse_steps(problem.solution)
  equations = [parse_equation(s) for s in steps]
  if any(e is None for e in equations):
    raise ValueError(f"COAT seeds need equation steps 'a op b = c'; got {steps!r}")
  rng = np.random.default_rng(zlib.crc32(problem.question.encode()))
  wrong = int(rng.integers(len(steps))) if rng.random() < error_rate else -1
  lines = []
  for k, (step, (a, op, b, c)) in enumerate(zip(steps, equations)):
    if k == wrong:
      bad = c + int(rng.choice([-2, -1, 1, 2]))
      lines += [f"{CONTINUE} {a} {op} {b} = {bad}", f"{REFLECT} {WRONG} {a} {op} {b} is not {bad}.",
                f"{EXPLORE} {step}"]
    else:
      lines.append(f"{CONTINUE} {step}")
  return "\n".join(lines + [f"{REFLECT} {RIGHT}", f"{ANSWER_PREFIX} {problem.answer}"])


def refine_trace(problem: Problem) -> str:
  """The ReFIne seed trace of `problem` (module docstring)."""
  sentences = [s.strip() for s in re.split(r"(?<=[.?])\s+", problem.question) if s.strip()]
  goal = next((s for s in sentences if s.endswith("?")), sentences[0])
  steps = parse_steps(problem.solution)
  body = {"understanding": f"Goal: {goal}",
          "facts": "Given: " + ", ".join(re.findall(r"\d+", problem.question)),
          "plan": f"{len(steps)} steps, one operation each.", "think": "\n".join(steps),
          "final_answer": f"{ANSWER_PREFIX} {problem.answer}",
          "self_assessment": "Confidence: 10/10"}
  return "\n".join(f"<{name}>\n{body[name]}\n</{name}>" for name in SECTIONS)


def refine_well_formed(text: str) -> bool:
  """Each section once, in order, nothing else around them; the answer line is the whole
  <final_answer> and <self_assessment> holds a confidence."""
  pattern = r"\s*" + r"\s*".join(rf"<{n}>\n(.*?)\n</{n}>" for n in SECTIONS) + r"\s*"
  match = re.fullmatch(pattern, text, re.S)
  if not match or any(f"<{n}>" in m for m in match.groups() for n in SECTIONS):
    return False
  answer, assessment = match.group(5), match.group(6)
  return (answer.strip().startswith(ANSWER_PREFIX) and text.count(ANSWER_PREFIX) == 1
          and parse_confidence(assessment) is not None)


def coat_well_formed(text: str) -> bool:
  """Every line before the answer opens with a meta-action, the first with `<|continue|>`, and
  the one answer line is the last."""
  lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
  if len(lines) < 2 or text.count(ANSWER_PREFIX) != 1 or not lines[-1].startswith(ANSWER_PREFIX):
    return False
  return lines[0].startswith(CONTINUE) and all(
      line.startswith((CONTINUE, REFLECT, EXPLORE)) for line in lines[:-1])


@dataclasses.dataclass(frozen=True)
class WithFormat(Task):
  """`base`'s problems, prompted for `style` and solved by its seed traces; graded by `base` on
  the steps that stand (coat) or the <think> steps (refine) and the answer."""

  base: Task
  style: str = "coat"
  error_rate: float = 0.3

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"config.task.format.style={self.style!r}; expected one of {STYLES}")
    if not 0.0 <= self.error_rate <= 1.0:
      raise ValueError(f"config.task.format.error_rate={self.error_rate}: expected a fraction")

  @property
  def name(self) -> str:
    return f"{self.base.name}_{self.style}"

  @property
  def test_fraction(self) -> float:
    return self.base.test_fraction

  def _sample(self, rng: np.random.Generator) -> Problem:
    problem = self.base._sample(rng)
    solution = (coat_trace(problem, self.error_rate) if self.style == "coat"
                else refine_trace(problem))
    return dataclasses.replace(problem, solution=solution)

  def steps(self, text: str) -> list[str]:
    """The steps the base task grades."""
    if self.style == "coat":
      return standing_steps(text)
    think = _SECTION["think"].search(text)
    return parse_steps(think.group(1)) if think else parse_steps(text)

  def check_answer(self, problem: Problem, text: str) -> bool:
    answer = parse_answer(text)
    if answer is None:
      return False
    return self.base.check_answer(
        problem, "\n".join(self.steps(text) + [f"{ANSWER_PREFIX} {answer}"]))

  def check_steps(self, problem: Problem, steps: list[str]) -> StepCheck:
    raise NotImplementedError(f"{self.name}: a trace's lines are meta-actions or sections, not "
                              "steps the base task grades")

  def well_formed(self, text: str) -> bool:
    return coat_well_formed(text) if self.style == "coat" else refine_well_formed(text)

  def prompt(self, problem: Problem) -> str:
    return self.base.prompt(problem) + INSTRUCTIONS[self.style]


def with_format(task: Task, **knobs) -> WithFormat:
  """`task` in a structured format; knobs: style ("coat" or "refine") and error_rate (the COAT
  seeds that refute and redo a wrong step). Unknown knobs raise, naming the valid ones."""
  valid = {f.name for f in dataclasses.fields(WithFormat)} - {"base"}
  unknown = sorted(set(knobs) - valid)
  if unknown:
    raise ValueError(f"config.task.format has no field(s) {unknown}; valid: {sorted(valid)}")
  return WithFormat(task, **knobs)
