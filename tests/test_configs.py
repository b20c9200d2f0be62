"""Config files: each loads, locks, and has a runlocal variant; the shared arg parser."""

import glob
import importlib
import os

import pytest

from configs import common

CONFIG_FILES = sorted(os.path.basename(f)[:-3] for f in glob.glob(
    os.path.join(os.path.dirname(common.__file__), "*.py")) if not f.endswith(("__init__.py",
                                                                                "common.py")))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_has_runlocal_and_a_known_trainer(name):
  from reasonjax import trainers
  module = importlib.import_module(f"configs.{name}")
  for arg in (None, "runlocal"):
    config = module.get_config(arg)
    assert trainers.get(config.trainer)
  assert module.__doc__ and "python -m reasonjax.main" in module.__doc__


def test_parse_arg():
  arg = common.parse_arg("runlocal,preset=small,steps=3", runlocal=False, preset="tiny", steps=1)
  assert (arg.runlocal, arg.preset, arg.steps) == (True, "small", 3)
  assert common.parse_arg(None, runlocal=False).runlocal is False
  with pytest.raises(ValueError, match=r"config arg 'x' is unknown; valid: \['runlocal'\]"):
    common.parse_arg("x", runlocal=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("steps", steps=1)
