"""The training machinery programs share: train state, the jitted step, the optimizer, the loop
(checkpoints, resume, signals, metrics), evaluation and export. Nothing here imports a program
(`reasonjax.programs`)."""
