"""The README's quick start works as written: its Python blocks run on a run's export."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

QUICK_START_RUN = "runs/demo_local/hf"  # The folder the quick start's command exports.


def _python_blocks(section: str) -> list[str]:
  """The ```python blocks of the README section whose heading is `section`."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_quick_start_command_is_the_demo_runlocal():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  command = ("python -m reasonjax.main --config=configs/demo.py:runlocal "
             "--workdir=runs/demo_local")
  assert command in text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("section", ["Quick start", "Models"])
def test_the_python_blocks_run_as_written(section, sft_workdir, tmp_path):
  """On the SFT runlocal export (the same kind of folder as the demo's: model and tokenizer),
  with only the folder's path replaced."""
  blocks = _python_blocks(section)
  assert blocks and all(QUICK_START_RUN in block for block in blocks)
  for block in blocks:
    code = block.replace(QUICK_START_RUN, os.path.join(sft_workdir, "hf"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if section == "Quick start":  # Four problems, each with its generated text and grade.
      assert len(re.findall(r"correct: (True|False)", out.stdout)) == 4


def test_the_memory_planner_example_prints_what_the_readme_shows():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read().split("\n### Memory planner\n", 1)[1]
  code, shown = re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.S)[:2]
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout == shown
