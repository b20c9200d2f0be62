"""Launchers that run `python -m reasonjax.main` as a multi-process job: `tpu` (Cloud TPU VM
slices, through gcloud), `slurm` (multi-node GPU jobs, through sbatch) and `local` (N processes
on 127.0.0.1). Plain standard-library scripts: they import neither jax nor reasonjax, so they run
on a laptop that only has gcloud or sbatch. `--dry_run` prints every command instead of running it.
"""
