"""SPIRAL: self-play on two-player zero-sum text games (Liu et al. 2025, "SPIRAL: Self-Play on
Zero-Sum Games Incentivizes Reasoning via Multi-Agent Multi-Turn Reinforcement Learning").

    python -m reasonjax.main --config=configs/spiral_games.py --workdir=runs/spiral

One policy plays both roles. Each iteration plays `self_play.episodes` episodes of every game in
`self_play.games` (`games.self_play.play_batch`, the jitted sampler behind it reading the very
parameters the train step updates), with seeds drawn from `config.seed` and the iteration, so a
rerun plays the same games. Every turn (observation -> reply) becomes one training row: the
prompt is the observation formatted as a task prompt (`prompt_text`), the completion the tokens
the sampler drew (its EOS included), old_logp their sampler log-probs, and the advantage
SPIRAL's Role-conditioned Advantage Estimation, A = R_p - b_{G,p}, with an EMA baseline per
(game, role) (`games.self_play.role_advantages`). The rows are the GRPO trainer's with groups of
one (`grpo.rollout_batch`, `grpo.grpo_loss`), shuffled and cut into minibatches of
`self_play.batch_rows` rows, the last one padded with loss_mask 0: every step has one shape, and
an iteration takes as many steps as its turns fill (`epochs` passes over them).

The starting policy is `config.init_from` (a Hugging Face folder) or the export of the nested SFT
run `config.sft`. It is evaluated before training (`workdir/start_eval.json`), every `eval_every`
steps and at the end against a uniformly random legal-move opponent, in both seats of every game
(`games.self_play.play_against`); `workdir/results.json` holds the start and final evaluations.

Per-step metrics ride in the batch (`rollout_*`, the numbers of the iteration the step trains
on): per game the win rate of player 0, draw, invalid-move and truncation rates, mean turns and
reply tokens, and the baselines after the iteration. A checkpoint keeps the untrained minibatches
and the baselines, so a resumed run trains on the same batches.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from reasonjax import games, models, sharding
from reasonjax.data import batching, tokenizers
from reasonjax.games import self_play
from reasonjax.losses import policy
from reasonjax.programs import grpo, stages
from reasonjax.sampling import sampler as sampler_lib
from reasonjax.sampling import texts as sampling_texts
from reasonjax.training import experiment, loop

# Aggregations that leave the padding rows (loss_mask 0) out: dr_grpo and luspo divide by all
# rows, so the padding of an iteration's last minibatch would shrink its gradient.
AGGREGATIONS = ("grpo", "bnpo", "dapo")


def prompt_text(observation: str) -> str:
  """The prompt of an observation, formatted as a task's (`Task.prompt`: text and a newline)."""
  return observation + "\n"


def episode_seeds(*entropy: int, count: int) -> list[int]:
  """`count` game seeds drawn from the non-negative ints `entropy` (config.seed, a stream, the
  iteration, ...): the same arguments give the same games."""
  return np.random.default_rng(list(entropy)).integers(2**31 - 1, size=count).tolist()


class TextPolicy:
  """`policy(observations) -> replies` for `play_batch`: one sampler call per lock step, the
  prompts right-padded to `width` tokens and the rows to `rows` (copies of the first), so every
  call has one shape. Call t uses fold_in(rng, t). `calls[t]` keeps call t's observations,
  replies, prompts int32 [n, width], prompt_lengths [n] and host `SamplingOutput` (n rows)."""

  def __init__(self, model, params, tokenizer, sampling: sampler_lib.SamplingConfig, *,
               width: int, rows: int, rng: jax.Array, name: str = ""):
    self.model, self.params, self.tokenizer, self.sampling = model, params, tokenizer, sampling
    self.width, self.rows, self.rng, self.name = width, rows, rng, name
    self.calls: list[dict] = []

  def __call__(self, observations: list[str]) -> list[str]:
    n = len(observations)
    if not 1 <= n <= self.rows:
      raise ValueError(f"TextPolicy of {self.rows} rows got {n} observations")
    ids = [batching.prompt_example(self.tokenizer, prompt_text(o), i)["prompt"]
           for i, o in enumerate(observations)]
    longest = max(len(x) for x in ids)
    if longest > self.width:
      raise ValueError(f"{self.name}: an observation takes {longest} tokens (BOS included), "
                       f"more than config.self_play.prompt_width={self.width}: raise "
                       "prompt_width (every prompt is padded to it, so that the sampler and the "
                       "loss compile once)")
    prompts = np.full((self.rows, self.width), self.tokenizer.pad_id, np.int32)
    lengths = np.full((self.rows,), len(ids[0]), np.int32)
    for i in range(self.rows):
      x = ids[i] if i < n else ids[0]
      prompts[i, :len(x)], lengths[i] = x, len(x)
    output = sharding.to_host(sampler_lib.sample(
        self.model, self.params, prompts, lengths, jax.random.fold_in(self.rng, len(self.calls)),
        self.sampling))
    output = jax.tree.map(lambda x: x[:n], output)
    replies = sampling_texts.decode_rows(self.tokenizer, output)
    self.calls.append({"observations": list(observations), "replies": replies,
                       "prompts": prompts[:n], "prompt_lengths": lengths[:n], "output": output})
    return replies


def turn_rows(episodes: Sequence[self_play.Episode], calls: list[dict]) -> list[int]:
  """The row, counted over `calls` in order, of every turn of `episodes` (episode-major).

  `play_batch` makes turn t of each live episode in call t, the episodes in seed order: episode
  i's turn t is the next unused row of call t. Each turn's observation and reply are checked
  against the row's, and every row must be used once.
  """
  offsets = np.cumsum([0] + [len(c["observations"]) for c in calls])
  used = [0] * len(calls)
  out = []
  for ep in episodes:
    for t, turn in enumerate(ep.turns):
      r = used[t]
      used[t] += 1
      call = calls[t]
      if (r >= len(call["observations"]) or call["observations"][r] != turn.observation
          or call["replies"][r] != turn.reply):
        raise RuntimeError(f"turn {t} of a {ep.game} episode is not row {r} of policy call {t}: "
                           "play_batch no longer calls the policy in lock step, in seed order")
      out.append(int(offsets[t]) + r)
  if used != [len(c["observations"]) for c in calls]:
    raise RuntimeError(f"{used} rows of the policy calls made turns, not all of theirs")
  return out


def game_stats(episodes: Sequence[self_play.Episode], reply_tokens: np.ndarray) -> dict:
  """One game's rollout statistics: win rate of player 0, draw, invalid and truncation rates,
  mean turns per episode and mean reply tokens per turn (`reply_tokens` [turns])."""
  r = np.asarray([ep.returns for ep in episodes], np.float64)
  return {"p0_win": np.mean(r[:, 0] > r[:, 1]), "draw": np.mean(r[:, 0] == r[:, 1]),
          "invalid": np.mean([ep.invalid is not None for ep in episodes]),
          "truncated": np.mean([ep.truncated for ep in episodes]),
          "turns": np.mean([len(ep.turns) for ep in episodes]),
          "reply_tokens": float(np.mean(reply_tokens))}


class SelfPlay:
  """The on-policy batch source of `loop.train` (like `grpo.Rollouts`): `next_batch(params)`
  gives the next minibatch, playing a new iteration's episodes with `params` when the last one's
  are used up. `get_state()` / `set_state()` save and restore the iteration count, the RAE
  baselines and the untrained minibatches (a JSON-able dict)."""

  def __init__(self, config, model, tokenizer):
    section = config.self_play
    self.model, self.tokenizer, self.seed = model, tokenizer, config.seed
    self.games = [games.make(name) for name in section.games]
    self.episodes, self.max_turns, self.invalid = (section.episodes, section.max_turns,
                                                   section.invalid)
    self.alpha, self.width, self.rows = section.rae_alpha, section.prompt_width, section.batch_rows
    self.epochs = config.epochs
    self.sampling = sampling_config(section, tokenizer)
    self.iteration = 0
    self.baselines: dict[tuple[str, int], float] = {}
    self.pending: list[dict[str, np.ndarray]] = []
    self.last_episodes: list[self_play.Episode] = []  # The latest iteration's, to look at.

  def next_batch(self, params) -> dict[str, np.ndarray]:
    """This process's rows of the next minibatch (all of it in a single-process job)."""
    if not self.pending:
      self.pending = self._iteration(params)
    batch = self.pending.pop(0)
    # Every process played the same games; the loop places process i's rows i-th.
    share = self.rows // jax.process_count()
    index = jax.process_index()
    return {k: v[index * share:(index + 1) * share] for k, v in batch.items()}

  def _iteration(self, params) -> list[dict[str, np.ndarray]]:
    """Plays, scores and splits one iteration's turns into epochs x minibatches."""
    key = jax.random.fold_in(jax.random.key(self.seed + 5), self.iteration)
    start = time.perf_counter()
    played = []
    for g, game in enumerate(self.games):
      text_policy = TextPolicy(self.model, params, self.tokenizer, self.sampling,
                               width=self.width, rows=self.episodes,
                               rng=jax.random.fold_in(key, g), name=game.name)
      episodes = self_play.play_batch(
          game, text_policy, episode_seeds(self.seed, 0, self.iteration, g, count=self.episodes),
          max_turns=self.max_turns, invalid=self.invalid)
      played.append((game.name, episodes, text_policy.calls))
    sample_s = time.perf_counter() - start
    episodes = [ep for _, eps, _ in played for ep in eps]
    advantages, self.baselines = self_play.role_advantages(episodes, self.baselines,
                                                           alpha=self.alpha)
    calls = [c for _, _, cs in played for c in cs]
    # Rows in episode-major order, as `advantages`: each game's turns index its own calls.
    rows, offset = [], 0
    for _, eps, cs in played:
      rows += [offset + r for r in turn_rows(eps, cs)]
      offset += sum(len(c["observations"]) for c in cs)
    rows = np.asarray(rows, np.int64)
    prompts = np.concatenate([c["prompts"] for c in calls])[rows]
    lengths = np.concatenate([c["prompt_lengths"] for c in calls])[rows]
    output = jax.tree.map(lambda *xs: np.concatenate(xs)[rows], *[c["output"] for c in calls])
    batch = grpo.rollout_batch(prompts, lengths, output,
                               np.asarray([a for ep in advantages for a in ep], np.float32))
    stats = {"iteration": self.iteration, "turns": len(rows),
             "generated_tokens": float(output.lengths.sum()),
             "sample_seconds": sample_s, "sample_tokens_per_s": output.lengths.sum() / sample_s}
    first = 0
    for name, eps, _ in played:
      count = sum(len(ep.turns) for ep in eps)
      per_game = game_stats(eps, output.lengths[first:first + count])
      first += count
      per_game |= {f"baseline_p{p}": self.baselines[(name, p)] for p in (0, 1)}
      stats |= {f"{name}_{k}": v for k, v in per_game.items()}
    n = len(rows)
    batch |= {f"rollout_{k}": np.full(n, v, np.float32) for k, v in stats.items()}
    self.last_episodes = episodes
    self.iteration += 1
    order_rng = np.random.default_rng([self.seed, self.iteration])
    out = []
    for _ in range(self.epochs):
      order = order_rng.permutation(n)
      for begin in range(0, n, self.rows):
        part = order[begin:begin + self.rows]
        real = len(part)
        # Padding rows: copies of a real one (valid prompts), out of the loss.
        part = np.concatenate([part, np.full(self.rows - real, part[0])])
        minibatch = {k: v[part] for k, v in batch.items()}
        minibatch["loss_mask"][real:] = 0.0
        minibatch["advantages"][real:] = 0.0
        out.append(minibatch)
    return out

  # The state holds whole minibatches, the same in every process: it restores under any
  # process count that divides batch_rows.
  def get_state(self) -> dict:
    return {"iteration": self.iteration,
            "baselines": [[g, p, b] for (g, p), b in sorted(self.baselines.items())],
            "pending": [{k: [v.dtype.str, v.tolist()] for k, v in b.items()}
                        for b in self.pending]}

  def set_state(self, state: dict) -> None:
    self.iteration = state["iteration"]
    self.baselines = {(g, int(p)): float(b) for g, p, b in state["baselines"]}
    self.pending = [{k: np.asarray(v, np.dtype(dtype)) for k, (dtype, v) in b.items()}
                    for b in state["pending"]]


def sampling_config(section, tokenizer, **overrides) -> sampler_lib.SamplingConfig:
  """One sample per observation, as `section` (self_play) says, ending at the tokenizer's EOS."""
  fields = {k: section[k] for k in ("max_new_tokens", "temperature", "top_p")}
  return sampler_lib.sampling_config(fields | {"num_samples": 1}, tokenizer, **overrides)


def outcome_rates(episodes: Sequence[self_play.Episode], seat: int) -> dict[str, float]:
  """Win, draw and loss rates of the player in `seat`, its invalid-move rate and mean return."""
  r = np.asarray([ep.returns for ep in episodes], np.float64)
  mine, other = r[:, seat], r[:, 1 - seat]
  return {"win": float(np.mean(mine > other)), "draw": float(np.mean(mine == other)),
          "loss": float(np.mean(mine < other)),
          "invalid": float(np.mean([ep.invalid == seat for ep in episodes])),
          "return": float(np.mean(mine))}


def evaluator(config, model, tokenizer):
  """`evaluate(params, rng) -> metrics`: per game and seat, `eval.episodes` episodes against a
  uniformly random legal-move opponent (`games.self_play.play_against`), the same deals and
  opponent moves at every evaluation; keys f"{game}_seat{s}_{outcome}" and the seats' mean
  f"{game}_{outcome}". None when eval.episodes is 0."""
  section, play = config.eval, config.self_play
  if not section.episodes:
    return None
  sampling = sampling_config(play, tokenizer, temperature=section.temperature)

  def evaluate(params, rng: jax.Array) -> dict[str, float]:
    metrics = {}
    for g, name in enumerate(play.games):
      game = games.make(name)
      seats = []
      for seat in (0, 1):
        text_policy = TextPolicy(model, params, tokenizer, sampling, width=play.prompt_width,
                                 rows=section.episodes, rng=jax.random.fold_in(rng, 2 * g + seat),
                                 name=name)
        episodes = self_play.play_against(
            game, text_policy, self_play.random_opponent(game),
            episode_seeds(config.seed, 1, g, seat, count=section.episodes), seat=seat,
            max_turns=play.max_turns, invalid=play.invalid)
        seats.append(outcome_rates(episodes, seat))
        metrics |= {f"{name}_seat{seat}_{k}": v for k, v in seats[-1].items()}
      metrics |= {f"{name}_{k}": (seats[0][k] + seats[1][k]) / 2 for k in seats[0]}
    return metrics

  return evaluate


def check_config(config) -> None:
  """Raises ValueError naming a bad field (games, episodes, max_turns, invalid rule, rae_alpha,
  sampling, prompt_width, batch_rows, epochs, aggregation, policy_loss, eval) before any work."""
  stages.check_policy_source(config)
  s = config.self_play
  names = tuple(s.games)
  unknown = [n for n in names if n not in games.GAMES]
  if not names or unknown or len(set(names)) != len(names):
    raise ValueError(f"config.self_play.games={names}: expected distinct names from "
                     f"{sorted(games.GAMES)}")
  if s.invalid not in self_play.INVALID_RETURNS:
    raise ValueError(f"config.self_play.invalid={s.invalid!r}; expected one of "
                     f"{sorted(self_play.INVALID_RETURNS)}")
  if not 0.0 <= s.rae_alpha <= 1.0:
    raise ValueError(f"config.self_play.rae_alpha={s.rae_alpha}: the baselines' EMA decay must be "
                     "in [0, 1] (0: the batch mean)")
  if not s.temperature > 0:
    raise ValueError(f"config.self_play.temperature={s.temperature}: expected > 0 (the loss's "
                     "log-probs are those of softmax(logits / temperature))")
  if not 0 < s.top_p <= 1:
    raise ValueError(f"config.self_play.top_p={s.top_p}: expected a fraction in (0, 1]")
  for name in ("episodes", "max_turns", "max_new_tokens", "prompt_width", "batch_rows"):
    if not s[name] >= 1:
      raise ValueError(f"config.self_play.{name}={s[name]!r}; expected a positive integer")
  count = jax.process_count()
  if s.batch_rows % count:
    raise ValueError(f"config.self_play.batch_rows={s.batch_rows} must split over the job's "
                     f"{count} processes (each trains on its share of every minibatch): make it "
                     f"a multiple of {count}")
  if not config.epochs >= 1:
    raise ValueError(f"config.epochs={config.epochs!r}; expected a positive integer")
  if config.aggregation not in AGGREGATIONS:
    raise ValueError(f"config.aggregation={config.aggregation!r}; expected one of "
                     f"{list(AGGREGATIONS)} (those that leave a minibatch's padding rows out)")
  try:
    policy.check_settings(**grpo.policy_loss_kwargs(config))
  except ValueError as e:
    raise ValueError(f"config.policy_loss: {e}") from e
  if not config.eval.episodes >= 0:
    raise ValueError(f"config.eval.episodes={config.eval.episodes!r}; expected 0 (no "
                     "evaluation) or a number of episodes per game and seat")
  if not config.eval.temperature >= 0:
    raise ValueError(f"config.eval.temperature={config.eval.temperature}: expected >= 0 "
                     "(0: greedy)")


def run(config, workdir: str) -> dict:
  """Evaluates the starting policy against random play, trains by self-play, evaluates;
  returns the results."""
  check_config(config)
  tokenizer = tokenizers.load(config.tokenizer)
  _, cfg, params = stages.load_policy(config, workdir)
  s = config.self_play
  if s.prompt_width + s.max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"config.self_play.prompt_width={s.prompt_width} + max_new_tokens="
                     f"{s.max_new_tokens} exceed the model's max_position_embeddings="
                     f"{cfg.max_position_embeddings}")
  model = models.Model(cfg)
  evaluate = evaluator(config, model, tokenizer)
  start = {}
  if evaluate is not None:
    start = stages.json_file(os.path.join(workdir, "start_eval.json"),
                             lambda: evaluate(params, jax.random.key(config.seed + 1)))
    print("starting policy vs random: " + " ".join(
        f"{k}={v:.3g}" for k, v in start.items() if "_seat" not in k), flush=True)
  source = SelfPlay(config, model, tokenizer)
  # Groups of one: no prompt to share, so the rows run as in plain training.
  loss_fn = functools.partial(grpo.grpo_loss, model=model, temperature=s.temperature,
                              aggregation=config.aggregation, max_len=s.max_new_tokens,
                              loss_kwargs=grpo.policy_loss_kwargs(config), share_prompt=False)
  logging.info("self-play: %d episodes of each of %s per iteration, %d rows per step",
               s.episodes, list(s.games), s.batch_rows)
  state, final = loop.train(config, workdir, cfg=cfg, loss_fn=loss_fn, batches=source,
                            params=params,
                            frozen=params if config.policy_loss.beta > 0 else None,
                            evaluate=evaluate)
  results = {"steps": int(state.step), "iterations": source.iteration,
             "baselines": {f"{g}_p{p}": b for (g, p), b in sorted(source.baselines.items())},
             "start": start, "final": final}
  results |= {f"final_{k}": v for k, v in final.items()}
  experiment.export(workdir, cfg, state.params, results, tokenizer=tokenizer)
  return results
