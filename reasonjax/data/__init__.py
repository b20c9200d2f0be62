"""Tasks, datasets, tokenizers and batching."""
