"""Tasks, datasets, tokenizers and batching.

Submodules: `tasks` (synthetic step-structured tasks), `datasets` (GSM8K / MATH JSONL),
`builders` (TFDS array_record builders), `tokenizers`, `batching` (grain pipelines). Import them
directly (`from reasonjax.data import tasks`); the heavier ones load TFDS or grain.
"""
