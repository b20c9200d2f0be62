"""The SFT trainer's choice of starting checkpoint: `init_from`, and `model.hf_path`, its
deprecated alias, which warns. (The runs themselves: tests/test_configs.py and
tests/programs/test_gsm8k_configs.py.)"""

import warnings

import pytest

from configs import sft_arith
from reasonjax.programs import sft


def test_init_from_and_its_deprecated_alias():
  config = sft_arith.get_config("runlocal")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing to warn about
    assert sft.start_checkpoint(config) == ""
    config.init_from = "ckpt"
    assert sft.start_checkpoint(config) == "ckpt"
  config.init_from = ""
  config.model.hf_path = "old"
  with pytest.warns(FutureWarning, match="model.hf_path is deprecated: set config.init_from"):
    assert sft.start_checkpoint(config) == "old"
  config.init_from = "new"
  with pytest.warns(FutureWarning), pytest.raises(ValueError, match="disagree; set init_from"):
    sft.start_checkpoint(config)

