"""GRPO on arithmetic chains from the SFT policy, rewarded by the task's answer check.

    python -m reasonjax.main --config=configs/grpo_arith.py --workdir=runs/grpo_arith \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/grpo_arith.py:runlocal --workdir=/tmp/grpo

Without `init_from`, the SFT run of configs/sft_arith.py (with the same arg) is trained first
into workdir/sft. The variants are config changes: DAPO is `--config.aggregation=dapo
--config.policy_loss.epsilon_high=0.28 --config.policy_loss.beta=0`; Dr. GRPO
`--config.aggregation=dr_grpo --config.advantage.scale=none`; GSPO
`--config.policy_loss.importance=sequence --config.policy_loss.epsilon_low=3e-4
--config.policy_loss.epsilon_high=4e-4`; RLOO `--config.advantage.leave_one_out=True
--config.advantage.scale=none`; CISPO `--config.policy_loss.surrogate=cispo
--config.policy_loss.epsilon_low=1.0 --config.aggregation=dapo` (the weight without a lower bound,
as MiniMax-M1; tune epsilon_high); SAPO `--config.policy_loss.surrogate=sapo`; LUSPO
`--config.aggregation=luspo --config.policy_loss.importance=sequence
--config.policy_loss.epsilon_low=2e-3 --config.policy_loss.epsilon_high=2.5e-3` (the range TRL's
docs quote from the paper). Rewarded by a trained reward model instead of the answer
check (reward hacking: `rollout_reward_mean` against `rollout_true_accuracy`):
`--config.reward_model.path=runs/prm_arith/hf --config.reward_model.granularity=prm`.

Args: `runlocal` (a small model, a few iterations: a CPU minute, for tests).
"""

import ml_collections

from configs import common, sft_arith

# A teacher's feedback on a wrong attempt, one of each of the paper's kinds of reflection
# (critique, conflict, consultancy, agreement), written here from the reference answer, which
# ThinkTuning's teacher model is shown.
FEEDBACK_TEXTS = (
    "\nWait, a step is wrong: the answer is {answer}. Let me redo it.\n",
    "\nHmm, another way gives {answer}. Let me check.\n",
    "\nAn expert gets {answer}. Where did I go wrong?\n",
    "\nMy first steps look right, but the answer is {answer}.\n",
)

# Old key -> new key: reasonjax.main rewrites an override of the old key, with a warning.
RENAMED = {"loss": "policy_loss"}


def grpo(config: ml_collections.ConfigDict) -> None:
  """The GRPO fields (reasonjax/programs/grpo.py) with their defaults."""
  config.trainer = "grpo"
  # cutoff_fraction: decoding stops once that fraction of the rows has ended (the rest are
  # truncated there); 1: off.
  config.rollouts = ml_collections.ConfigDict({
      "prompts": 16, "num_samples": 8, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64,
      "cutoff_fraction": 1.0})
  # Weights of rewards.scoring.REWARDS (all listed, so that any can be set from the command line).
  config.rewards = ml_collections.ConfigDict({
      "correctness": 1.0, "format": 0.0, "brevity": 0.0, "calibration": 0.0,
      "self_consistency": 0.0, "answer_frequency": 0.0, "group_length": 0.0})
  # DAPO's data controls, all off here (configs/dapo_arith.py): dynamic_sampling samples more
  # prompt batches until rollouts.prompts groups have unequal rewards (at most
  # max_sampling_rounds batches; then zero-variance groups fill the rest); overlong_filter
  # leaves truncated completions out of the loss; overlong_cache > 0 adds the soft overlong
  # penalty (rewards.scoring.overlong_penalty) times overlong_weight over the last
  # overlong_cache tokens of rollouts.max_new_tokens.
  # Guide-GRPO (configs/guide_grpo_arith.py), off here: in a group whose rewards are all below
  # `below`, the last `samples` completions are sampled again with `hint` in the prompt.
  config.guidance = ml_collections.ConfigDict({
      "samples": 0, "below": 0.5, "hint": " (The answer is {answer}.)"})
  # ThinkTuning's teacher feedback (configs/thinktuning_arith.py), off here (fraction 0): each
  # completion scored below `below` gets, with probability `fraction` (going linearly to
  # `final_fraction` over `decay_iterations`, 0: constant), one of `texts` (its {answer}
  # filled in) appended, and the policy continues from there; `max_tokens` bounds the text and
  # the continuation together. `shaping`: which feedback tokens the loss trains on, "positive"
  # (those of completions with a positive advantage), "all" or "none".
  config.feedback = ml_collections.ConfigDict({
      "fraction": 0.0, "final_fraction": 0.0, "decay_iterations": 0, "below": 0.5,
      "texts": FEEDBACK_TEXTS, "max_tokens": 96, "shaping": "positive"})
  # Satori's restart and explore (configs/restart_grpo_arith.py), off here (fraction 0): from
  # the second iteration on, `fraction` of each prompt batch's groups restart from a trajectory
  # of an earlier iteration (the last `buffer` kept): the problem's prompt, its first k steps
  # (k uniform in 1 .. steps - 1), and `cue` when it scored below `below`. Prompts are padded
  # `max_prefix_tokens` wider (one compiled shape); a longer prefix keeps fewer whole steps.
  config.restart = ml_collections.ConfigDict({
      "fraction": 0.0, "buffer": 512, "below": 0.5, "cue": "Wait, let me check that step.\n",
      "max_prefix_tokens": 64})
  # ThinkLite's data selection (configs/thinklite_arith.py), off here (simulations 0): the
  # training problems that step-level MCTS (num_children per expansion, simulations_per_round
  # leaves a round, rollout values) solves only after min_simulations or more.
  config.data_selection = ml_collections.ConfigDict({
      "simulations": 0, "min_simulations": 8, "keep_unsolved": False, "num_children": 4,
      "simulations_per_round": 2, "temperature": 1.0, "max_step_tokens": 24, "max_steps": 6,
      "batch_size": 32})
  config.data_controls = ml_collections.ConfigDict({
      "dynamic_sampling": False, "max_sampling_rounds": 3, "overlong_filter": False,
      "overlong_cache": 0, "overlong_weight": 1.0})
  # How answers are graded (rewards.scoring.VERIFIERS): "task" is the task's own check_answer;
  # "gsm8k" and "math" the numeric and boxed-LaTeX graders.
  config.verifier = "task"
  config.scorer_workers = 2
  # The reward model study: a reward model's solution score is the reward instead of
  # config.rewards; the verifier then only reports the true accuracy. "": verifier rewards.
  config.reward_model = common.reward_model()
  # losses.policy.group_advantages: scale group, batch or none (Dr. GRPO); leave_one_out: the
  # RLOO baseline; ddof: the standard deviation divides by n - ddof, 0 (population, the
  # default) or 1 (Bessel's correction, as TRL's GRPOTrainer).
  config.advantage = ml_collections.ConfigDict({"scale": "group", "leave_one_out": False,
                                                "ddof": 0})
  # losses.policy.aggregate: grpo, bnpo, dr_grpo, dapo or luspo (sum / rows: each completion's
  # token mean times its length; LUSPO with importance=sequence).
  config.aggregation = "grpo"
  # Keyword arguments of losses.policy.policy_loss. surrogate: ppo (the clipped surrogate),
  # cispo (REINFORCE with the clipped, detached ratio as weight: every token keeps a gradient)
  # or sapo (a sigmoid gate of temperature sapo_tau_pos for A > 0, sapo_tau_neg otherwise,
  # instead of the clip); importance: token or sequence (GSPO); epsilon_low / epsilon_high:
  # the clip range of the ratio (ppo) or of CISPO's weight; dual_clip: c > 1 (ppo), 0 off;
  # kl_importance_weight: the KL estimate times the ratio (DeepSeek-V3.2's unbiased estimate
  # when the update is off-policy).
  config.policy_loss = ml_collections.ConfigDict({
      "surrogate": "ppo", "importance": "token", "epsilon_low": 0.2, "epsilon_high": 0.2,
      "dual_clip": 0.0, "beta": 0.04, "kl_estimator": "k3", "kl_importance_weight": False,
      "entropy_coef": 0.0, "sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05})
  # Each prompt through the model once for all its samples (models.continuation_logits); False
  # runs every prompt + completion row, with the memory-lean attention of plain training.
  config.share_prompt = True
  # The split of the problems trained on: "test" is test-time RL on the evaluation's own
  # problems, without their answers (configs/ttrl_arith.py).
  config.train_split = "train"
  config.epochs = 1  # mu: passes over each iteration's rollouts
  config.minibatches = 1  # optimizer steps per pass; each holds prompts / minibatches groups


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.name = "grpo"
  common.post_training(config, sft_arith.nested(arg.runlocal))
  grpo(config)
  # steps = iterations * epochs * minibatches
  loop(config, steps=200, learning_rate=3e-5, warmup_steps=10, eval_every=50,
       checkpoint_every=50)
  config.eval = common.evaluation()
  if arg.runlocal:
    config.rollouts.update({"prompts": 8, "num_samples": 4, "max_new_tokens": 48})
    loop(config, steps=8, learning_rate=5e-5, warmup_steps=1, log_every=1,
         checkpoint_every=4)
    config.scorer_workers = 0  # grade in the trainer: spawning workers costs more than 32 texts
    config.eval = common.evaluation(num_problems=32, max_new_tokens=48, num_samples=4, k=4)
  return config


def loop(config: ml_collections.ConfigDict, **kwargs) -> None:
  """`common.loop` without batch_size and seq_len: a minibatch is rollouts.prompts / minibatches
  prompts with all their samples, of up to rollouts.max_new_tokens tokens. No weight decay: it
  would pull the policy towards zero, not the reference."""
  common.loop(config, batch_size=0, seq_len=0, **kwargs)
  del config["batch_size"], config["seq_len"]
  config.optimizer.weight_decay = 0.0
