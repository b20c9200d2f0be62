"""The programs `reasonjax.main` runs, picked by `config.trainer`: each a short composition of
the stages in `programs.stages` over the machinery of `reasonjax.training`, which never imports
a program."""

from collections.abc import Callable

from reasonjax.programs import (distill, dpo, expert_iteration, grpo, hrm, model_report,
                                process_bench, reward_model, search, self_play, sft)
from reasonjax.training import loop

PROGRAMS: dict[str, Callable] = {
    "model_report": model_report.run,
    "sft": sft.run,
    "dpo": dpo.run,
    "reward_model": reward_model.run,
    "grpo": grpo.run,
    "search": search.run,
    "hrm": hrm.run,
    "expert_iteration": expert_iteration.run,
    "process_bench": process_bench.run,
    "self_play": self_play.run,
    "distill": distill.run,
}


def get(name: str) -> Callable:
  """The `run(config, workdir)` function named `name`; an unknown name lists the valid ones."""
  if name not in PROGRAMS:
    raise ValueError(f"config.trainer={name!r} is unknown; valid programs: {sorted(PROGRAMS)}")
  return PROGRAMS[name]


def check_config(config) -> None:
  """Validates a config before any work, so that a bad value fails at start and not after a
  nested SFT run and sampling: the loop's fields, the program's own (`CHECKS`), and those of
  nested SFT run (`config.sft`; a program with other nested runs checks them in its CHECKS).
  Raises ValueError naming the field and the valid values."""
  get(config.trainer)
  if "task" in config and config.task.get("code") is not None and config.trainer not in TOOLS:
    raise ValueError(f"config.task.code: the {config.trainer} program samples without running "
                     f"programs; the code format runs in {sorted(TOOLS)}")
  if "checkpoint_every" in config:  # A program that runs `loop.train`.
    loop.check_config(config)
  if config.trainer in CHECKS:
    CHECKS[config.trainer](config)
  if "sft" in config and config.sft is not None:
    check_config(config.sft)


# The programs that sample through `generate_texts` with the task's tool (config.task.code).
TOOLS = ("dpo", "expert_iteration", "sft")

# Each program's check of its name-valued fields (loss, aggregation, rewards, ...).
CHECKS: dict[str, Callable] = {
    "sft": sft.check_config,
    "dpo": dpo.check_config,
    "reward_model": reward_model.check_config,
    "grpo": grpo.check_config,
    "search": search.check_config,
    "hrm": hrm.check_config,
    "expert_iteration": expert_iteration.check_config,
    "process_bench": process_bench.check_config,
    "self_play": self_play.check_config,
    "distill": distill.check_config,
}

__all__ = ["CHECKS", "PROGRAMS", "TOOLS", "check_config", "get"]
