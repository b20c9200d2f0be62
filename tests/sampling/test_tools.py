"""The Python tool: the last program of a text, run in the sandbox, and what the model reads of
each outcome (output, error, timeout, no program)."""

import pytest

from reasonjax.sampling.tools import PythonTool


def test_the_last_program_runs_and_its_output_is_read_back():
  tool = PythonTool()
  text = ("<code>\nprint(1)\n</code>\n<output>\n1\n</output>\nCheck: no.\n"
          "<code>\nx1 = 6 * 7\nprint(x1)\n</code>")
  assert tool.code(text) == "x1 = 6 * 7\nprint(x1)\n"
  assert tool.run([text, "<code>\nprint(2 + 3)\n</code>"]) == [
      "\n<output>\n42\n</output>\n", "\n<output>\n5\n</output>\n"]


def test_errors_timeouts_and_missing_programs_are_reported_in_one_line():
  tool = PythonTool(timeout_s=0.5, max_output_chars=60)
  blocks = tool.run(["<code>\nprint(1 // 0)\n</code>", "<code>\nwhile True:\n  pass\n</code>",
                     "no program here </code>", "<code>\nprint('a' * 100)\n</code>"])
  assert blocks[0] == ("\n<output>\nZeroDivisionError: integer division or modulo by zero"
                       "\n</output>\n")
  assert blocks[1] == "\n<output>\nTimeoutError: the program ran for more than 0.5 s\n</output>\n"
  assert blocks[2].startswith("\n<output>\nno program")
  assert blocks[3] == "\n<output>\n" + "a" * 60 + "\n</output>\n"


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="max_calls >= 1"):
    PythonTool(max_calls=0)
