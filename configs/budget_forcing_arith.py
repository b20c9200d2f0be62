"""Budget forcing on arithmetic chains: test-time scaling by holding the answer back.

Test-time scaling by budget forcing on arithmetic chains: one solution per problem whose
answer is held back n - 1 times (each time the model writes its answer line, the line is cut,
"Wait," appended and sampling goes on), against majority vote over n samples at the tokens each
spends (programs/search.py, `search.methods.budget_forcing`). Muennighoff et al. 2025, "s1:
Simple test-time scaling".

    python -m reasonjax.main --config=configs/budget_forcing_arith.py --workdir=runs/budget \
        --config.init_from=runs/sft_arith/hf
    python -m reasonjax.main --config=configs/budget_forcing_arith.py:runlocal \
        --workdir=/tmp/budget --config.init_from=/tmp/sft/hf

Knobs: search.n_values (n - 1 forced extensions), search.wait (the text appended),
search.max_new_tokens (each extension's budget; a solution that runs out is made to answer),
search.temperature, and the search program's others (configs/search_arith.py). A policy never
trained to go on after "Wait," may gain nothing from it: the table shows whether it does.

Args: `runlocal` (a few problems, for tests).
"""

import ml_collections

from configs import common, search_arith


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  config = search_arith.get_config("runlocal" if arg.runlocal else None)
  config.name = "budget_forcing"
  config.search.methods = ("majority_vote", "budget_forcing")
  config.search.n_values = (1, 2, 4) if arg.runlocal else (1, 2, 4, 8)
  return config
