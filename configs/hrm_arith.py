"""The Hierarchical Reward Model paper's mini reproduction on arithmetic chains, in one command.

    python -m reasonjax.main --config=configs/hrm_arith.py --workdir=runs/hrm_mini \
        --config.results_page=docs/results/hrm_mini.md
    python -m reasonjax.main --config=configs/hrm_arith.py:runlocal --workdir=/tmp/hrm
    ... --config=configs/hrm_arith.py:countdown       # the same on Countdown

SFT policy (or `init_from`) -> full step trees -> HNC -> ORM, PRM, HRM, HRM+HNC -> best-of-N and
step-level greedy search with each, majority vote and the oracle, 3 seeds -> first-error
detection -> GRPO with each reward model as the only reward (reward hacking) -> self-training
of the policy on reward-model-selected tree paths at two KL weights -> evaluation again. Each
stage stores its output in the workdir and is skipped when present (programs/hrm.py).

Args: `runlocal` (a few problems and steps of each stage, for tests), `countdown` (the
Countdown task instead of arithmetic chains).
"""

import ml_collections

from configs import common, grpo_arith, sft_arith


def policy_sft(runlocal: bool, countdown: bool) -> ml_collections.ConfigDict:
  """The starting policy: a quick SFT run that solves some of the problems greedily (a fifth to a
  half of arithmetic's, varying between machines and versions; about a tenth of Countdown's), so
  that trees hold right and wrong paths (the full sft_arith config solves nearly all)."""
  sft = sft_arith.nested(True)
  if runlocal and not countdown:
    return sft  # The tests' shared SFT start (sft_arith:runlocal) solves these.
  if countdown:
    sft.task.name = "countdown"
    # Numbers to 10: with numbers to 20 and targets to 100 this model got the arithmetic of its
    # own steps wrong (5 * 2 = 15) and solved 0 of 64 held-out problems after 800 steps. These
    # knobs allow only ~1,150 distinct training problems: num_train takes nearly all (runlocal's
    # 1,500 too would run out).
    sft.task.knobs = {"num_numbers": 3, "max_number": 10, "min_target": 10, "max_target": 50}
    sft.task.num_train = 1100
  else:
    sft.task.knobs = {"min_steps": 2, "max_steps": 4, "max_operand": 9, "max_value": 30,
                      "ops": "+-"}
  if not runlocal:
    if not countdown:
      sft.task.num_train = 6000
    common.loop(sft, steps=800, batch_size=16, seq_len=128, learning_rate=3e-3,
                warmup_steps=10, log_every=50, eval_every=0, checkpoint_every=200)
    if countdown:
      # Held-out greedy accuracy still rises at 2,000 steps (~10%) and reaches 9-14% at 3,500
      # (about 7 CPU minutes), long after the training loss is near 0.
      sft.steps, sft.checkpoint_every = 3500, 700
  return sft


def program(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A program's config as a nested run's template: without the fields the top level gives it
  (programs.stages.INHERITED) or that it does not use."""
  for key in ("seed", "init_from", "tokenizer", "task", "model", "sft", "name"):
    if key in config:
      del config[key]
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, countdown=False)
  config = ml_collections.ConfigDict()
  config.trainer = "hrm"
  config.name = "hrm_countdown" if arg.countdown else "hrm_arith"
  sft = policy_sft(arg.runlocal, arg.countdown)
  common.post_training(config, sft)
  config.results_page = ""  # e.g. docs/results/hrm_mini.md (+ .json and .png beside it)

  # Tree data: every open node gets num_children next steps, breadth-first, to max_depth; a low
  # temperature, as the paper's data generation (reference: 5 children, depth 5; 4 children
  # here keep a 2-core CPU's trees to about 1,400 nodes per 4-step problem, and every inner
  # node still qualifies for HNC). Many problems: reward models trained on the trees of 32
  # problems learned those problems' answers and ranked held-out solutions worse than chance;
  # on 256 problems their AUC was 0.80 on training problems and 0.65 on held-out ones.
  config.trees = ml_collections.ConfigDict({
      "num_problems": 1024, "num_children": 4, "max_depth": 5, "temperature": 0.7, "top_p": 1.0,
      "max_step_tokens": 16, "batch_size": 64})
  # Training nodes per level (search.tree_data.select_nodes) and HNC (tree_data.compress).
  config.data = ml_collections.ConfigDict({
      "fraction": 0.1, "single_score_count": 5, "hnc_min_children": 4,
      "hnc_probability": 0.5})

  # The reward models, all from the policy with a new score head, trained on tree records:
  # orm (leaves, 0/1), prm (selected nodes, MC scores), hrm (+ merged last two steps),
  # hrm_hnc (hrm records of the trees and of their HNC versions). label_kind: mse | bce.
  # Nested runs take seed, init_from, tokenizer, task and model from the top level
  # (programs.stages.nested_config).
  rm = ml_collections.ConfigDict({
      "names": ("orm", "prm", "hrm", "hrm_hnc"), "label_kind": "mse", "granularity": "prm",
      "pack": True})
  common.loop(rm, steps=800, batch_size=32, seq_len=128, learning_rate=3e-4, warmup_steps=20,
              log_every=50, checkpoint_every=100)
  config.reward_models = rm

  # Best-of-N and step-level greedy search with each reward model, the oracle (the task's
  # check_steps) and majority vote, on held-out problems, for each seed.
  config.evaluation = ml_collections.ConfigDict({
      "num_problems": 64, "seeds": (0, 1, 2), "n_values": (1, 2, 4, 8, 16, 32, 64),
      # N candidates per step for every step: beyond 16 a 2-core CPU spends most of the run here.
      "step_greedy_n_values": (1, 2, 4, 8, 16),
      "aggregation": "min",  # a solution's score from its step scores (orm: always the last)
      "oracle": True,  # also search with the task's check_steps (tasks that have it)
      # The trees' temperature: the reward models are judged on the kind of text they learned.
      "temperature": 0.7, "top_p": 1.0, "max_step_tokens": 16, "max_steps": 6,
      "max_new_tokens": 96, "batch_size": 64, "score_batch_size": 128})

  # First wrong step (ProcessBench's metric) of PRM vs HRM against the task's check_steps, on
  # the policy's own samples of held-out problems; no reward models: no such stage.
  config.first_error = ml_collections.ConfigDict({
      "num_problems": 200, "num_samples": 8, "threshold": 0.5,
      "reward_models": ("prm", "hrm", "hrm_hnc")})

  # Reward hacking: GRPO with a reward model's score as the only reward, for each model.
  hacking = program(grpo_arith.get_config("runlocal"))
  grpo_arith.loop(hacking, steps=40, learning_rate=5e-5, warmup_steps=2, log_every=1,
                  checkpoint_every=20)
  hacking.eval = common.evaluation(num_problems=64, max_new_tokens=64, num_samples=0, k=1)
  config.hacking = hacking
  config.hacking_reward_models = ("orm", "prm", "hrm", "hrm_hnc")

  # Self-training: SFT of the policy on the best tree path per problem by each reward model,
  # with loss CE + kl_weight * log(1 + KL(start || policy)); the paper sweeps 0 .. 10.
  st = program(sft_arith.get_config("runlocal"))
  common.loop(st, steps=100, batch_size=16, seq_len=128, learning_rate=3e-4,
              warmup_steps=10, log_every=10, eval_every=0, checkpoint_every=50)
  st.eval = common.evaluation(num_problems=200, max_new_tokens=64, num_samples=4, k=4)
  config.self_training = st
  config.self_training_reward_models = ("orm", "prm", "hrm", "hrm_hnc")
  config.kl_weights = (0.5, 5.0)
  config.paths_per_problem = 2  # the reward model's best correct-or-not leaf paths

  if arg.runlocal:
    # Four children, so that HNC (hnc_min_children 4) has nodes to move.
    config.trees.update({"num_problems": 4, "num_children": 4, "max_depth": 3,
                         "batch_size": 32})
    common.loop(config.reward_models, steps=6, batch_size=8, seq_len=128, learning_rate=1e-3,
                warmup_steps=1, log_every=2, checkpoint_every=6)
    config.evaluation.update({"num_problems": 4, "seeds": (0, 1), "n_values": (1, 4),
                              "step_greedy_n_values": (2,), "max_steps": 4,
                              "max_new_tokens": 48, "batch_size": 16})
    config.first_error.update({"num_problems": 6, "num_samples": 2})
    grpo_arith.loop(config.hacking, steps=2, learning_rate=5e-5, warmup_steps=1, log_every=1,
                    checkpoint_every=2)
    config.hacking.eval = common.evaluation(num_problems=6, max_new_tokens=48, num_samples=0,
                                            k=1)
    config.hacking_reward_models = ("prm", "hrm")
    common.loop(config.self_training, steps=4, batch_size=8, seq_len=128, learning_rate=3e-4,
                warmup_steps=1, log_every=2, eval_every=0, checkpoint_every=4)
    config.self_training.eval = common.evaluation(num_problems=6, max_new_tokens=48,
                                                  num_samples=0, k=1)
    config.self_training_reward_models = ("hrm",)
  return config
