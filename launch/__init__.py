"""Launchers that run `python -m reasonjax.main` as a multi-process job: `tpu` (Cloud TPU VM
slices, through gcloud), `slurm` (multi-node GPU jobs, through sbatch) and `local` (N processes
on 127.0.0.1). Plain standard-library scripts: they import neither jax nor reasonjax, so they run
on a laptop that only has gcloud or sbatch. `--dry_run` prints every command instead of running it.
"""

import argparse
import sys


def parse(parser: argparse.ArgumentParser, argv: list[str] | None
          ) -> tuple[argparse.Namespace, list[str], list[str]]:
  """(the launcher's flags, the flags it does not know, everything after `--`) of `argv`
  (default: the command line). The unknown ones may be reasonjax.main's --config.KEY=VALUE."""
  argv = list(sys.argv[1:] if argv is None else argv)
  passthrough = []
  if "--" in argv:
    argv, passthrough = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  args, unknown = parser.parse_known_args(argv)
  return args, unknown, passthrough
