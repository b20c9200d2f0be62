"""The programs `reasonjax.main` can run, picked by `config.trainer`."""

from collections.abc import Callable

from reasonjax.trainers import dpo, grpo, model_report, reward_model, sft

TRAINERS: dict[str, Callable] = {
    "model_report": model_report.run,
    "sft": sft.run,
    "dpo": dpo.run,
    "reward_model": reward_model.run,
    "grpo": grpo.run,
}


def get(name: str) -> Callable:
  """The `run(config, workdir)` function named `name`; an unknown name lists the valid ones."""
  if name not in TRAINERS:
    raise ValueError(f"config.trainer={name!r} is unknown; valid trainers: {sorted(TRAINERS)}")
  return TRAINERS[name]


__all__ = ["TRAINERS", "get"]
