"""Tunix's GRPOLearner on the GRPO benchmark's workload (benchmarks/peers/workload.py).

    ~/.cache/reasonjax/peers/tunix/bin/python benchmarks/peers/tunix_grpo.py --model_dir=DIR

Runs in Tunix's own virtualenv (benchmarks/peers/setup.sh). The model is Tunix's own Qwen2
(`tunix.models.qwen2`) with the tiny dims, loaded from the benchmark's safetensors by Tunix's
loader; policy and reference are two copies, as a user without LoRA has them. The RLCluster
puts actor, rollout and reference on one 1 x 1 (fsdp, tp) mesh: the actor and its rollout
share weights (no weight sync), and rollouts use Tunix's vanilla JAX sampler with a KV cache of
exactly prompt + completion tokens. One global step of the learner is one GRPO iteration: 4
prompts x num_generations 4, one optimizer update (mini batch = the whole batch).

An iteration is timed from the parent's go to the start of the next global step (the
learner's bookkeeping after a step included), after the actor's parameters are ready.
Prints the protocol's JSON lines.
"""

from __future__ import annotations

import json
import os
import sys

import workload


class _Finished(Exception):
  """Raised at the start of the global step after the last one asked for."""


def main():
  args = workload.arguments(__doc__.split("\n")[0])
  try:
    import jax
    import numpy as np
    import optax
    import transformers
    from flax import nnx

    import tunix
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.rollout import base_rollout
  except ImportError as e:  # A broken virtualenv: reported as skipped, with the reason.
    workload.emit("unsupported", reason=f"import failed: {e}")
    return

  with open(os.path.join(args.model_dir, "config.json")) as f:
    hf = json.load(f)
  config = qwen2_model.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf["rope_theta"]),
      norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf["tie_word_embeddings"])
  # Auto axes, as tunix.utils.mesh makes them (Explicit, JAX's default, fails in the embedding).
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

  def load():
    return qwen2_params.create_model_from_safe_tensors(args.model_dir, config, mesh)

  actor, reference = load(), load()
  tokenizer = workload.hf_tokenizer(config.vocab_size)
  # EOS and pad ids lie past the model's logits: no row ends early, and since every prompt has
  # exactly max_prompt_length tokens and every completion max_tokens_to_generate, no pad id
  # ever reaches the embedding.
  assert tokenizer.eos_token_id >= config.vocab_size and tokenizer.pad_token_id >= config.vocab_size
  optimizer = optax.chain(optax.clip_by_global_norm(workload.CLIP_NORM),
                          optax.adamw(workload.LEARNING_RATE, weight_decay=0.0))
  training = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optimizer, eval_every_n_steps=1_000_000,
      # One more step than timed: its start ends the last timed one, then `_Finished`.
      max_steps=args.iterations + 1, metrics_logging_options=None,
      checkpoint_root_directory=None, pbar_description=None)
  rollout = base_rollout.RolloutConfig(
      max_tokens_to_generate=workload.NEW_TOKENS, max_prompt_length=workload.PROMPT_LEN,
      kv_cache_size=workload.PROMPT_LEN + workload.NEW_TOKENS, temperature=1.0, top_p=1.0,
      top_k=None)
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                        rl_cluster_lib.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False, training_config=training,
          rollout_config=rollout))
  lengths = []

  def reward(prompts, completions, **kwargs):
    del prompts, kwargs
    ids = [workload.text_ids(text) for text in completions]
    lengths.extend(len(i) for i in ids)
    return [workload.reward(i) for i in ids]

  turns = workload.Turns(args.iterations, args.turns)

  class TimedLearner(tunix.GRPOLearner):
    """Marks an iteration's end (and waits for the next go) at each global step's start."""

    def _run_global_step(self, *a, **k):
      if turns.start is not None:
        jax.block_until_ready(nnx.state(self.rl_cluster.actor_trainer.model))
        turns.end()
      if not turns.begin():
        raise _Finished
      return super()._run_global_step(*a, **k)

  learner = TimedLearner(
      rl_cluster=cluster, reward_fns=reward,
      algo_config=tunix.GRPOConfig(
          num_generations=workload.GENERATIONS, num_iterations=1, beta=workload.BETA,
          epsilon=workload.EPSILON, loss_agg_mode="sequence-mean-token-mean"))
  prompts = [workload.prompt_text(ids)
             for ids in workload.prompt_ids(args.iterations + 1, config.vocab_size)]
  # Batches as a grain loader gives them: "prompts" an array of strings [PROMPTS].
  batches = [{"prompts": np.array(prompts[i:i + workload.PROMPTS])}
             for i in range(0, len(prompts), workload.PROMPTS)]
  workload.emit("ready", framework="tunix",
                params=sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.Param))),
                dtype=np.dtype(config.param_dtype).name)
  try:
    learner.train(batches)
    if turns.start is not None and len(turns.seconds) < args.iterations:
      jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
      turns.end()
  except _Finished:
    pass
  if not lengths or min(lengths) != workload.NEW_TOKENS:
    sys.exit(f"Tunix generated completions of {min(lengths, default=0)}.."
             f"{max(lengths, default=0)} tokens, not {workload.NEW_TOKENS}")
  import flax
  # The policy moved away from the reference: the updates were applied.
  change = max(float(abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(nnx.state(cluster.actor_trainer.model, nnx.Param)),
      jax.tree.leaves(nnx.state(reference, nnx.Param))))
  turns.done(framework="tunix", completion_tokens=[min(lengths), max(lengths)],
             updates=int(cluster.actor_trainer.train_steps), max_param_change=change,
             versions={"tunix": tunix.__version__, "jax": jax.__version__,
                       "flax": flax.__version__, "optax": optax.__version__,
                       "transformers": transformers.__version__})
  os._exit(0)  # The learner's worker threads are idle; nothing is left to flush.


if __name__ == "__main__":
  main()
