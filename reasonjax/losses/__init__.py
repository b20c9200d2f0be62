"""Pure loss functions: arrays in, per-token or per-sequence values out; reductions in `tokens`."""
