"""TRL's GRPOTrainer on the GRPO benchmark's workload (benchmarks/peers/workload.py).

    ~/.cache/reasonjax/peers/trl/bin/python benchmarks/peers/trl_grpo.py --model_dir=DIR

Runs in TRL's own virtualenv (benchmarks/peers/setup.sh). The trainer is TRL's as a user runs
it, without vLLM: `transformers` generate for the rollouts, a frozen reference model for the
KL term, `torch.optim.AdamW`. One trainer step is one GRPO iteration: per_device_train_batch_size
16 completions = 4 prompts x num_generations 4, one optimizer step per generation batch.
TRL's defaults that differ from the workload are set explicitly: float32 (bf16 off), no
gradient checkpointing, loss_type 'grpo' (reasonjax's aggregation 'grpo'), a constant learning
rate, no weight decay.

An iteration is timed from one `on_step_end` to the next (the first from the parent's go):
everything the trainer does per step, its logging included. Prints the protocol's JSON lines.
"""

from __future__ import annotations

import os
import sys
import tempfile

import workload


def main():
  args = workload.arguments(__doc__.split("\n")[0])
  try:
    import datasets
    import torch
    import transformers
    import trl
  except ImportError as e:  # A broken virtualenv: reported as skipped, with the reason.
    workload.emit("unsupported", reason=f"import failed: {e}")
    return

  torch.set_num_threads(args.threads or os.cpu_count())
  config = transformers.AutoConfig.from_pretrained(args.model_dir)
  tokenizer = workload.hf_tokenizer(config.vocab_size)
  # The tokenizer's EOS and pad ids lie past the model's logits: generation never stops early
  # (64 new tokens in every row, as in the other frameworks), checked after the run.
  assert tokenizer.eos_token_id >= config.vocab_size and config.eos_token_id is None, config
  prompts = [workload.prompt_text(ids)
             for ids in workload.prompt_ids(args.iterations, config.vocab_size)]
  dataset = datasets.Dataset.from_dict({"prompt": prompts})
  lengths = []

  def reward(prompts, completions, completion_ids, **kwargs):
    del prompts, kwargs
    lengths.extend(len(ids) for ids in completion_ids)
    return [workload.reward(workload.text_ids(text)) for text in completions]

  turns = workload.Turns(args.iterations, args.turns)

  class Timer(transformers.TrainerCallback):
    """Ends an iteration at each step's end and waits for the parent's go for the next."""

    def on_train_begin(self, args_, state, control, **kwargs):
      if not turns.begin():
        control.should_training_stop = True

    def on_step_end(self, args_, state, control, **kwargs):
      turns.end()
      if state.global_step < state.max_steps and not turns.begin():
        control.should_training_stop = True

  with tempfile.TemporaryDirectory() as output_dir:
    training_args = trl.GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=workload.PROMPTS * workload.GENERATIONS,
        num_generations=workload.GENERATIONS, max_completion_length=workload.NEW_TOKENS,
        temperature=1.0, top_p=1.0, top_k=0, beta=workload.BETA, epsilon=workload.EPSILON,
        loss_type="grpo", scale_rewards="group", learning_rate=workload.LEARNING_RATE,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=workload.CLIP_NORM,
        max_steps=args.iterations, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=True, seed=workload.SEED, report_to="none", logging_steps=1_000_000,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"})
    trainer = trl.GRPOTrainer(model=args.model_dir, reward_funcs=reward, args=training_args,
                              train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[Timer()])
    model = trainer.model
    workload.emit("ready", framework="trl", params=sum(p.numel() for p in model.parameters()),
                  dtype=str(model.dtype))
    trainer.train()
    # The policy moved away from the reference: the updates were applied.
    with torch.no_grad():
      change = max(float((a - b).abs().max()) for a, b in zip(
          trainer.model.parameters(), trainer.ref_model.parameters()))
    updates = trainer.state.global_step
  if not lengths or min(lengths) != workload.NEW_TOKENS:
    sys.exit(f"TRL generated completions of {min(lengths, default=0)}.."
             f"{max(lengths, default=0)} tokens, not {workload.NEW_TOKENS}")
  turns.done(framework="trl", completion_tokens=[min(lengths), max(lengths)],
             updates=updates, max_param_change=change,
             versions={"trl": trl.__version__, "transformers": transformers.__version__,
                       "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "datasets": datasets.__version__})


if __name__ == "__main__":
  main()
