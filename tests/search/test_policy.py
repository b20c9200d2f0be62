"""The policy as search sees it: candidate steps against a teacher-forced forward pass, solution
steps against the task's parser."""

import jax
import numpy as np

from reasonjax import models
from reasonjax.data import tasks, tokenizers
from reasonjax.search import policy as policy_lib
from tests.conftest import random_params

TASK = tasks.get_task("arithmetic", min_steps=2, max_steps=3, max_operand=9, max_value=99)
TOK = tokenizers.load("synthetic")
CFG = models.preset("tiny", vocab_size=512, num_layers=2, hidden_size=64, intermediate_size=128,
                    num_heads=4, num_kv_heads=2, head_dim=16)


def test_expand_gives_steps_whose_logprobs_match_a_forward_pass():
  params = random_params(CFG, 0, scale=0.3)
  policy = policy_lib.StepPolicy(models.Model(CFG), params, TOK, TASK, temperature=1.0,
                                 max_step_tokens=12, batch_size=2)
  problems = TASK.generate(3, seed=0, split="test")
  # Prefixes of different lengths: a prompt, and prompts followed by a gold step or two.
  prefixes = []
  for i, p in enumerate(problems):
    steps = p.solution.split("\n")[:i]
    prefixes.append(np.concatenate([policy.prompt_ids(p)] + [
        np.asarray(TOK.encode(s + "\n"), np.int32) for s in steps]).astype(np.int32))
  cands = policy_lib.expand(policy, prefixes, 4, jax.random.key(0))
  assert [len(c) for c in cands] == [4, 4, 4]
  forward = jax.jit(lambda x: models.Model(CFG).apply({"params": params}, x))
  ends = {seq[-1] for seq in TOK.step_end_sequences()} | {TOK.eos_id}
  stopped = 0
  for prefix, row in zip(prefixes, cands):
    for c in row:
      assert 1 <= len(c.ids) <= 12
      stopped += int(c.ids[-1] in ends)
      if c.ids[-1] not in ends:
        assert len(c.ids) == 12  # Only the token budget ends a step without a delimiter.
      assert c.text == TOK.decode([t for t in c.ids.tolist() if t != TOK.eos_id]).strip()
      assert c.final == (TOK.eos_id in c.ids.tolist() or c.text.startswith("####"))
      logits = np.asarray(forward(np.concatenate([prefix, c.ids])[None]), np.float64)[0]
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                                keepdims=True)) \
          - logits.max(-1, keepdims=True)
      want = sum(logp[len(prefix) - 1 + t, tok] for t, tok in enumerate(c.ids))
      np.testing.assert_allclose(c.logprob, want, rtol=1e-4, atol=1e-3)
  assert stopped > 0


def test_solution_steps_are_the_parsed_steps_then_the_last_answer_line():
  text = "1 + 2 = 3\n\n3 * 2 = 6\n#### 5\n#### 6"
  assert policy_lib.solution_steps(TASK, text) == ["1 + 2 = 3", "3 * 2 = 6", "#### 6"]
  assert policy_lib.solution_steps(TASK, "1 + 2 = 3") == ["1 + 2 = 3"]
