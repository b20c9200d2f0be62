"""Self-PRM on arithmetic chains: the policy scores its own steps to rerank its solutions.

Self-PRM on arithmetic chains: the policy scores its own solutions' steps to rerank them
(best-of-N, weighted vote, step-level greedy search), against majority vote
(programs/search.py, `search.scorers.ImplicitScorer`). Feng et al. 2025, "Is PRM Necessary?
Problem-Solving RL Implicitly Induces PRM Capability in LLMs", find an RL-trained policy judges
its own steps well. That paper prompts the policy to judge; a small policy trained only on this
task cannot follow such a prompt, so here the judgement is the policy's implicit process reward
(Yuan et al. 2024): step k scores sigmoid(beta * sum of log pi / pi_ref over the tokens up to
it), pi the RL-trained policy and pi_ref its SFT start; without a reference, the policy's own
confidence in each step (exp of its mean token log-probability).

    python -m reasonjax.main --config=configs/self_prm_arith.py --workdir=runs/self_prm \
        --config.init_from=runs/grpo_arith/hf --config.reward_model.reference=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/self_prm_arith.py:runlocal --workdir=/tmp/self_prm \
        --config.init_from=/tmp/sft/hf

Knobs: reward_model.reference (the implicit reward's reference policy; "": confidence),
reward_model.beta, reward_model.path (another policy as the judge; "": the searching one),
search.methods and search.n_values, and the search program's others (configs/search_arith.py).

Args: `runlocal` (a few problems, for tests).
"""

import ml_collections

from configs import common, search_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = search_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "self_prm"
  config.reward_model.granularity = "implicit"
  config.search.methods = ("majority_vote", "best_of_n", "weighted_vote", "step_greedy")
  if not arg.runlocal:
    config.search.n_values = (1, 2, 4, 8, 16)
  return config
