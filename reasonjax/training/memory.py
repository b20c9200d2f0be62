"""A memory planner: bytes per device of a training run, from its shapes, before anything is
allocated or compiled.

    plan = memory.plan(cfg, mesh_shape=mesh.shape, rules=rules, batch_size=32, seq_len=512)
    print(memory.format_plan(plan, memory.device_memory()))
    memory.check_fits(plan, memory.device_memory())   # raises DoesNotFit naming the knobs

`loop.train` checks the state alone (batch_size=0) before making it, then does this before
compiling its step, with `plan_for_run` (config + first batch).

Components, per device (P: this device's shard of the parameters in `param_dtype`):
  parameters      exact: every leaf's shard under the sharding rules (`sharding.py`).
  optimizer       AdamW's two moments, 2 P (optax keeps them in the parameters' dtype).
  gradients       P; 2 P with gradient accumulation (the running sum and a micro-batch's).
  update          3 P: `optim.skip_nonfinite` holds every update and both new moments until it
                  knows that all of them are finite, so none can be written in place.
  gathered        weights sharded over a batch axis (FSDP) are all-gathered for the matmuls and
                  XLA keeps the gathered copies from the forward pass for the backward one,
                  beside full-size gradients before their reduction: GATHERED x their size.
  activations     what the backward pass reads, for the micro-batch on this device (see
                  `_layer_bytes`), plus one layer's working set while it is differentiated.
  kv cache        the sampler's cache (`models.init_cache` / `SharedPrefixCache`) in the
                  compute dtype, rows over the batch axes and KV heads over `tensor`.
  reference       a frozen model's parameters, placed like P, and its logits.

With LoRA (`config.lora.rank` > 0) the trained tree T is the adapters and the modules trained in
full (replicated): parameters are P + T, and the optimizer, gradients and update scale with T
instead of P. The step reads the factors unmerged (`lora.attach`), so no kernel has a full-size
gradient beside the gathered weights (a head trained in full does), and a layer keeps less for
the backward pass: no input of a projection that trains nothing, no norm input for the frozen
scales (`_frozen_bytes`). Sampling merges the targeted kernels anew (their shards, M: kv cache +
M). A reference that is the frozen model itself costs nothing more. Measured on XLA:CPU: within
25% of the compiled step (tested), but for remat='full', 24-28% high (full training's, 17%).

The train step and the sampler never run at once, and the step's transients peak at different
times (the activations in the backward pass, the update after it), so

    total = parameters + optimizer + reference
            + max(activations + gathered [+ gradients, when accumulating or scanning layers],
                  gradients + update, kv cache).

Checked against `compiled.memory_analysis()` of the real train step on XLA:CPU
(`tests/training/test_memory.py`: within 25%, most shapes within 10%); the activation counts
follow what XLA:CPU's buffer assignment keeps for this decoder (`_layer_bytes`). GPU and TPU
fuse more (the norms' broadcasts, some layout copies) and should need less, so there the estimate
is expected to err high. Device memory (`device_memory`): `bytes_limit` of
`device.memory_stats()` on GPU and TPU; CPU devices have none and share the host's memory, so
each gets the host's physical memory divided by the local devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from reasonjax import sampling, sharding
from reasonjax.models import ModelConfig, lora
from reasonjax.models.decoder import init_boxed_params, param_shapes
from reasonjax.training import step

GiB, MiB = 1 << 30, 1 << 20
# The batch's arrays: an SFT batch has five fields of 4 bytes a token (inputs, targets, loss_mask,
# positions, segment_ids).
BATCH_BYTES_PER_TOKEN = 5 * 4
# Weights sharded over a batch axis (FSDP), in units of their gathered size: the all-gathered
# copies XLA keeps from the forward pass for the backward one (1), and the full-size gradients
# computed before their reduction over the batch axes, about half of them live at the peak.
GATHERED = 1.5


class DoesNotFit(ValueError):
  """The planned bytes per device exceed the device's memory; the message says by how much and
  which config fields would make it fit."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """Estimated bytes per device by component (module docstring), and what they assume."""

  params: int
  optimizer: int
  gradients: int
  update: int
  gathered: int
  activations: int
  kv_cache: int
  reference: int
  mesh: tuple[tuple[str, int], ...]
  rows: int  # Rows of a micro-batch on one device.
  seq_len: int
  batch_size: int
  accum_steps: int
  remat: str  # The policy in effect (`effective_remat`), with a note when it is not the config's.
  # Whether the gradients are allocated before the backward pass: accumulation's running sum,
  # or the stacked gradients a scanned backward pass writes layer by layer.
  held_gradients: bool

  @property
  def total(self) -> int:
    """Peak bytes per device (module docstring)."""
    resident = self.params + self.optimizer + self.reference
    backward = self.activations + self.gathered + self.gradients * self.held_gradients
    return resident + max(backward, self.gradients + self.update, self.kv_cache)

  def components(self) -> dict[str, int]:
    """Component name -> bytes, in the order `format_plan` prints them."""
    return {"parameters": self.params, "optimizer state": self.optimizer,
            "gradients": self.gradients, "optimizer update": self.update,
            "gathered weights (fsdp)": self.gathered, "activations": self.activations,
            "sampler kv cache": self.kv_cache, "reference model": self.reference}


def _mesh(mesh_shape: Mapping[str, int]):
  """An object with the `shape` mapping `sharding.logical_to_mesh_spec` reads: no devices."""
  return types.SimpleNamespace(shape=dict(mesh_shape))


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _ways(logical: tuple, shape: tuple[int, ...], mesh_shape, rules, *, skip=()) -> list[int]:
  """How many shards each dim of `shape` is split into under the rules (axes in `skip` not
  counted)."""
  spec = sharding.logical_to_mesh_spec(PartitionSpec(*logical), shape, _mesh(mesh_shape), rules)
  spec = tuple(spec) + (None,) * (len(shape) - len(spec))
  return [math.prod(mesh_shape[a] for a in _axes(e) if a not in skip) for e in spec]


def _shard_elements(logical, shape, mesh_shape, rules, *, skip=()) -> int:
  ways = _ways(tuple(logical), tuple(shape), mesh_shape, rules, skip=skip)
  return math.prod(-(-d // w) for d, w in zip(shape, ways))


@functools.lru_cache(maxsize=16)
def _param_leaves(cfg: ModelConfig) -> tuple[tuple[tuple, tuple, tuple[int, ...]], ...]:
  """(path keys, logical axes, shape) of every parameter, from an abstract init (nothing
  allocated)."""
  boxed = jax.eval_shape(functools.partial(init_boxed_params, cfg), jax.random.key(0))
  logical = jax.tree.leaves(nn.get_partition_spec(boxed),
                            is_leaf=lambda x: isinstance(x, PartitionSpec))
  # Traced: no mesh needed.
  shapes = jax.tree_util.tree_flatten_with_path(jax.eval_shape(lambda: nn.unbox(boxed)))[0]
  return tuple((tuple(k.key for k in path), tuple(spec), tuple(x.shape))
               for spec, (path, x) in zip(logical, shapes))


def param_bytes(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules,
                keep=lambda keys: True) -> int:
  """Bytes of this device's shard of every parameter (whose path keys `keep` accepts), in
  `param_dtype`."""
  elements = sum(_shard_elements(spec, shape, mesh_shape, rules)
                 for keys, spec, shape in _param_leaves(cfg) if keep(keys))
  return elements * jnp.dtype(cfg.param_dtype).itemsize


def lora_bytes(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules, lora_section
               ) -> tuple[int, int]:
  """(bytes of the trained tree: the adapters and the modules trained in full, replicated; bytes
  of this device's shard of the targeted kernels, which the merge for sampling writes anew) of a
  LoRA run; `lora_section` has rank, targets and modules_to_save (`config.lora`)."""
  targets = tuple(lora_section.targets)
  full = {m: param_shapes(cfg)[m]
          for m in lora.modules(cfg, tuple(lora_section.get("modules_to_save", ())))}
  trained = jax.eval_shape(lambda: lora.init(
      cfg, jax.random.key(0), rank=lora_section.rank, targets=targets,
      full=jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), full)))
  merged = param_bytes(cfg, mesh_shape, rules,
                       keep=lambda keys: keys[-1] == "kernel" and keys[-2] in targets)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trained)), merged


def gathered_bytes(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules,
                   axes: tuple[str, ...], keep=lambda keys: True) -> int:
  """Bytes, in the compute dtype, of the parameters (whose path keys `keep` accepts) that are
  sharded over mesh `axes`, as an all-gather over those axes leaves them on a device (the others
  are not gathered)."""
  total = 0
  for keys, spec, shape in _param_leaves(cfg):
    if not keep(keys):
      continue
    gathered = _shard_elements(spec, shape, mesh_shape, rules, skip=axes)
    if gathered != _shard_elements(spec, shape, mesh_shape, rules):
      total += gathered
  return total * jnp.dtype(cfg.dtype).itemsize


def _batch_axes(rules) -> tuple[str, ...]:
  return _axes(dict(rules).get("act_batch"))


def _frozen_bytes(cfg: ModelConfig, targets, split, a: int) -> float:
  """Bytes per token a layer of a LoRA run does not keep (`_layer_bytes`'s base less these):
  the inputs of the projections that train nothing, which only a weight gradient reads (the
  input norm's output when none of q, k, v is adapted, the attention output when o_proj is not,
  the second norm's output when neither gate nor up is, the MLP product when down_proj is not),
  and 3 float32 [D] of the norms, whose scales are frozen. Fitted on XLA:CPU, where it
  undercounts the saving: the plans of the LoRA cases measured 2-28% above the compiled step."""
  t = set(targets)
  d, hd = cfg.hidden_size, cfg.head_dim
  h = cfg.num_heads / split("act_heads", cfg.num_heads)
  f = cfg.intermediate_size / split("act_mlp", cfg.intermediate_size)
  inputs = ((not t & {"q_proj", "k_proj", "v_proj"}) * d + ("o_proj" not in t) * h * hd
            + (not t & {"gate_proj", "up_proj"}) * d + ("down_proj" not in t) * f)
  return a * inputs + 3 * 4 * d


def _layer_bytes(cfg: ModelConfig, tokens: int, seq_len: int, split, a: int, barriers: bool,
                 frozen: float = 0.0) -> tuple[int, int]:
  """(bytes one decoder layer keeps for the backward pass, the working set of the layer being
  differentiated) for `tokens` = rows x seq_len tokens on a device; `split(name, size)` is how
  many ways the rules shard a logical activation axis of that size.

  Per token, in a bytes (the activations' dtype) unless said, with `remat='none'`:
    each RMSNorm   3 float32 [D] (the scaled input and two broadcasts) + its a [D] output;
    the residual   the o_proj and down_proj outputs, 2 a D;
    attention      a (3 H + 2 K) hd: q sliced per query block, k and v grouped, the output
                   grouped and ungrouped; float32 log-sum-exp per head;
    MLP            5 a F: gate, up, sigmoid(gate), silu(gate), their product.
  The backward pass recomputes blockwise attention's scores (`layers.blockwise_causal_attention`)
  and a remat policy's dropped activations from inputs behind an optimization barrier, and the
  policy acts: 'full' keeps the layer input (XLA:CPU holds about 4 a D per layer under
  `scan_layers`, a D unrolled); 'dots' the matmul outputs, a ((H + 2 K) hd + 2 F + 2 D), and
  the attention einsums' float32 scores and outputs; 'dots_no_batch' the matmul outputs only.
  The working set of the layer being differentiated is its scores and what the policy did not
  save, recomputed; with 'none', its residuals copied out of the stack under `scan_layers`,
  else its float32 gate and up gradients, 2 a F. Where the barriers do not hold (`_barriers_hold`)
  unrolled layers keep what 'none' keeps, XLA's common-subexpression pass having merged the
  recomputation back into the forward pass, and for each of the nb = T / block query blocks the
  scores and the keys and values they read stay live too: per token 2 H block (nb + 1) / 2
  float32 scores, a (nb - 1) K hd key and value prefixes and a H hd (nb (nb + 1) / 2 - 1) / nb
  query-sized blocks (a scan's forward and backward passes are different loops: nothing merges).
  'xla' attention materialises [H, T] float32 scores per token
  (probabilities and gradient). A LoRA run keeps `frozen` bytes per token less (`_frozen_bytes`).
  """
  d, hd = cfg.hidden_size, cfg.head_dim
  h = cfg.num_heads / split("act_heads", cfg.num_heads)
  k = cfg.num_kv_heads / split("act_kv_heads", cfg.num_kv_heads)
  f = cfg.intermediate_size / split("act_mlp", cfg.intermediate_size)
  block = max(min(cfg.attention_block, seq_len), 1)  # seq_len 0: a plan of the state alone
  nb = -(-seq_len // block)
  blockwise = cfg.attention_impl == "blockwise"
  base = (2 * (3 * 4 + a) * d + 2 * a * d + a * (3 * h + 2 * k) * hd + 4 * h + 5 * a * f
          - frozen)
  if not blockwise and cfg.attention_impl != "cudnn":
    base += 2 * 4 * h * seq_len  # 'xla' / 'auto' off GPU: the [T, T] scores per head.
  # Every query block's float32 scores and their exp: [H, block] per token and block seen.
  scores = 2 * 4 * h * block * (nb + 1) / 2 if blockwise else 0
  if not cfg.scan_layers and not barriers:
    # CSE merges the backward's recomputation with the forward pass (docstring).
    cse = scores + a * (nb - 1) * k * hd + a * h * hd * (nb * (nb + 1) / 2 - 1) / nb
    return int((base + (cse if blockwise else 0)) * tokens), 0
  remat = cfg.remat
  if remat == "none":
    saved = base
  elif remat == "full":
    saved = (4 if cfg.scan_layers else 1) * a * d
  else:
    saved = a * ((h + 2 * k) * hd + 2 * f + 2 * d)
    if remat == "dots" and blockwise:
      saved += 4 * h * hd + scores / 2  # The score and output einsums (float32).
  # The layer being differentiated: all its query blocks' scores, and what the policy did not
  # save recomputed, or its residuals copied out of the stack, or its gate and up gradients.
  if remat != "none":
    working = base + scores - saved
  else:
    working = scores + (base if cfg.scan_layers else 2 * a * f)
  return int(saved * tokens), int(working * tokens)


def _barriers_hold(backend: str) -> bool:
  """Whether the train step keeps the optimization barriers behind which the backward pass
  recomputes (remat with unrolled layers, blockwise attention's scores) until after XLA's
  common-subexpression pass: GPU and TPU expand them after it; XLA:CPU removes them before it
  unless `step.compiler_options` disables that (`layers.CPU_KEEP_BARRIERS`)."""
  if backend != "cpu":
    return True
  options = step.compiler_options() or {}
  return "cse_barrier_expander" in options.get("xla_disable_hlo_passes", "").split(",")


def effective_remat(cfg: ModelConfig, backend: str | None = None) -> str:
  """The remat policy as it acts on `backend` (default: JAX's): with unrolled layers
  (`scan_layers=False`) the decoder's remat keeps its recomputation apart from the forward pass
  with optimization barriers; where they do not hold (`_barriers_hold`), XLA's
  common-subexpression pass merges the two and every policy keeps what 'none' keeps (measured:
  the same temp bytes)."""
  if cfg.scan_layers or _barriers_hold(backend or jax.default_backend()):
    return cfg.remat
  return "none"


def plan(cfg: ModelConfig, *, mesh_shape: Mapping[str, int], rules, batch_size: int,
         seq_len: int, accum_steps: int = 1, reference: bool | ModelConfig = False,
         kv_cache: tuple[int, int] | None = None, kv_prefix: tuple[int, int] | None = None,
         kv_model: ModelConfig | None = None, lora_section=None,
         backend: str | None = None) -> Plan:
  """Estimated bytes per device of training `cfg` with AdamW (formulas in the module docstring).

  Args:
    cfg: the model (its dtype, param_dtype, remat, attention_impl and scan_layers count).
    mesh_shape: mesh axis sizes, e.g. {"data": 2, "fsdp": 4, "tensor": 1} or `mesh.shape`.
    rules: the logical-axis rules (`config.axis_rules`).
    batch_size: global rows per optimizer step; seq_len: tokens per row (both summed over a
      batch's `*inputs` fields by `plan_for_run`).
    accum_steps: micro-batches per step (`config.accum_steps`).
    reference: a frozen reference model (DPO, GRPO with a KL term, SFT with kl_weight): True
      for one of `cfg`'s shape, or its ModelConfig (a distillation teacher).
    kv_cache: (rows, slots) of the sampler's per-row cache, or None when nothing samples
      during training; kv_prefix: (prompts, slots) of a cache shared by each prompt's rows;
      kv_model: the model that samples (a distillation teacher), default `cfg`.
    lora_section: `config.lora` of a run that trains LoRA adapters on the frozen model (rank
      > 0), or None; `reference` then counts a reference other than that frozen model only.
    backend: the XLA backend the step compiles for ('cpu', 'gpu', 'tpu'); default: JAX's.

  Returns:
    A `Plan`.
  """
  mesh_shape = dict(mesh_shape)
  split = lambda name, size: _ways((name,), (size,), mesh_shape, rules)[0]  # noqa: E731
  params = trained = param_bytes(cfg, mesh_shape, rules)
  merged, differentiated = 0, lambda keys: True  # the weights with a full-size gradient
  if lora_section is not None and lora_section.rank:
    trained, merged = lora_bytes(cfg, mesh_shape, rules, lora_section)
    params += trained
    full = lora.modules(cfg, tuple(lora_section.get("modules_to_save", ())))
    differentiated = lambda keys: keys[0] in full  # noqa: E731
  batch_axes = tuple(a for a in _batch_axes(rules) if mesh_shape.get(a, 1) > 1)
  gathered = 0
  if batch_axes:
    # The gathered copies, and the full-size gradients of the weights that have one (LoRA: the
    # heads trained in full only).
    gathered = int(gathered_bytes(cfg, mesh_shape, rules, batch_axes) + (GATHERED - 1)
                   * gathered_bytes(cfg, mesh_shape, rules, batch_axes, differentiated))
  # Rows and tokens of one micro-batch on one device (`step._accumulate` splits the batch).
  rows_way, len_way = _ways(("act_batch", "act_len"), (batch_size // accum_steps, seq_len),
                            mesh_shape, rules)
  rows = -(-batch_size // accum_steps // rows_way)
  length = -(-seq_len // len_way)
  tokens = rows * length
  # XLA:CPU has no bfloat16 arithmetic: it computes in float32 and keeps both (measured: a
  # bfloat16 step's temporaries are no smaller than a float32 one's).
  backend = backend or jax.default_backend()
  a = 4 if backend == "cpu" else jnp.dtype(cfg.dtype).itemsize
  frozen = (_frozen_bytes(cfg, lora_section.targets, split, a) if lora_section is not None
            and lora_section.rank else 0.0)
  saved, working = _layer_bytes(cfg, tokens, length, split, a, _barriers_hold(backend), frozen)
  vocab = (cfg.vocab_size / split("act_vocab", cfg.vocab_size)) if cfg.lm_head else 1
  # The head: the final norm's arrays, the embedding lookup, float32 logits and their gradient.
  head = (2 * (3 * 4 * cfg.hidden_size + a * cfg.hidden_size) + 2 * 4 * vocab) * tokens
  inputs = BATCH_BYTES_PER_TOKEN * rows * length * accum_steps
  activations = cfg.num_layers * saved + working + int(head) + inputs
  ref = 0
  if reference:
    # Its forward pass is not differentiated: one layer at a time, and its float32 logits.
    ref_cfg, ref_vocab = (cfg, vocab) if reference is True else (
        reference, reference.vocab_size / split("act_vocab", reference.vocab_size))
    ref = param_bytes(ref_cfg, mesh_shape, rules) + int(4 * ref_vocab * tokens)
  kv = 0
  for part in (kv_cache, kv_prefix):
    if part is not None:
      kv += _cache_bytes(kv_model or cfg, *part, mesh_shape, rules)
  if kv and kv_model is None and cfg.dtype != cfg.param_dtype:
    kv += param_bytes(cfg.replace(param_dtype=cfg.dtype), mesh_shape, rules)  # Cast weights.
  if kv:
    kv += merged  # The policy that samples: the base merged with the adapters.
  remat = effective_remat(cfg, backend)
  if remat != cfg.remat:
    remat += (f" (model.remat={cfg.remat!r} acts on XLA:CPU only with scan_layers=True or "
              "layers.CPU_KEEP_BARRIERS)")
  return Plan(params=params, optimizer=2 * trained,
              gradients=trained * (2 if accum_steps > 1 else 1), update=3 * trained,
              gathered=gathered, activations=int(activations), kv_cache=kv, reference=ref,
              mesh=tuple(mesh_shape.items()), rows=rows, seq_len=seq_len,
              batch_size=batch_size, accum_steps=accum_steps, remat=remat,
              held_gradients=accum_steps > 1 or cfg.scan_layers)


def compiled_bytes(stats) -> int:
  """Bytes per device XLA assigns a compiled program, from `compiled.memory_analysis()`:
  arguments + outputs - the buffers both hold (a donated state) + temporaries. What `plan` is
  checked against."""
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def _cache_bytes(cfg: ModelConfig, rows: int, slots: int, mesh_shape, rules) -> int:
  """Keys and values of every layer, [rows, K, slots, hd] each, in the compute dtype."""
  shape = (rows, slots, cfg.num_kv_heads, cfg.head_dim)
  elements = _shard_elements(("act_batch", "cache_len", "act_kv_heads", "head_dim"), shape,
                             mesh_shape, rules)
  return 2 * cfg.num_layers * elements * jnp.dtype(cfg.dtype).itemsize


def device_memory(device: jax.Device | None = None) -> tuple[int, str]:
  """(bytes one device may use, where the number comes from).

  GPU and TPU report `bytes_limit` in `memory_stats()` (on GPU the allocator's share, e.g. 75%
  of HBM by default). CPU devices report none: they share the host's physical memory, so each
  gets an equal part of it.
  """
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001 -- some backends raise instead of returning None.
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} bytes_limit"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  count = jax.local_device_count()
  return host // count, f"host memory {_size(host)} / {count} local devices"


def _size(n: float) -> str:
  return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


def format_plan(plan: Plan, available: tuple[int, str] | None = None) -> str:
  """The breakdown as a small table, one component a line, zero ones left out."""
  mesh = " x ".join(f"{k}={v}" for k, v in plan.mesh)
  lines = [f"memory per device (estimate): mesh {mesh}; a micro-batch of {plan.rows} rows x "
           f"{plan.seq_len} tokens per device, {plan.accum_steps} per step; remat {plan.remat}"]
  lines += [f"  {name:<24}{_size(value):>12}" for name, value in plan.components().items()
            if value]
  total = f"  {'total (peak)':<24}{_size(plan.total):>12}"
  if available is not None:
    total += f"   of {_size(available[0])} ({available[1]})"
  return "\n".join(lines + [total])


def check_fits(plan: Plan, available: tuple[int, str]) -> None:
  """Raises DoesNotFit with the numbers and the config fields to change when the plan's total
  exceeds `available` (bytes, source) from `device_memory`. A plan of no rows (batch_size 0)
  is the state alone: what must fit before any batch."""
  limit, source = available
  if plan.total <= limit:
    return
  mesh = dict(plan.mesh)
  parts = plan.components()
  largest = sorted(parts, key=parts.get, reverse=True)[:3]
  knobs = []
  state = plan.params + plan.optimizer + plan.gradients + plan.update
  if state >= plan.activations:
    knobs.append(f"mesh.fsdp (now {mesh.get('fsdp', 1)}; parameters, gradients and optimizer "
                 "state shrink with fsdp x tensor, so more devices once the mesh uses all)")
  if plan.batch_size:
    knobs.append(f"batch_size (now {plan.batch_size}) or the sequence length (now "
                 f"{plan.seq_len}), accum_steps (now {plan.accum_steps}: activations are per "
                 f"micro-batch), model.remat (now {plan.remat.split(' (')[0]!r}; 'full' keeps "
                 "about one [T, D] per layer where its optimization barriers hold: on XLA:CPU "
                 "with model.scan_layers=True)")
  if state < plan.activations:
    knobs.append(f"mesh.fsdp (now {mesh.get('fsdp', 1)})")
  if plan.kv_cache:
    knobs.append("the sampler's rows and length (rollouts.prompts, rollouts.num_samples, "
                 "rollouts.max_new_tokens)")
  if plan.reference:
    knobs.append("the KL term's weight (policy_loss.beta, kl_weight) at 0 drops the reference "
                 "model")
  what = "this run needs" if plan.batch_size else (
      "before any batch, the parameters, gradients, optimizer state and update need")
  raise DoesNotFit(
      f"{what} an estimated {_size(plan.total)} per device but a device has "
      f"{_size(limit)} ({source}); largest parts: "
      + ", ".join(f"{name} {_size(parts[name])}" for name in largest)
      + ". Change: " + "; ".join(knobs) + ".\n" + format_plan(plan, available))


def plan_for_run(config, cfg: ModelConfig, mesh_shape: Mapping[str, int], host_batch, *,
                 reference: bool | ModelConfig) -> Plan:
  """The `plan` of a `loop.train` run from its config and first host batch.

  Tokens per step: every `*inputs` field of the batch (a preference pair's two, a rollout
  batch's prompts and completions), counted as rows of the longest field's length and summed
  over processes. The sampler's cache of a program that samples between steps
  (`_sampler_cache`) is counted; evaluation's is not.
  """
  inputs = ([v for key, v in host_batch.items() if key.endswith("inputs") and v.ndim == 2]
            or [v for v in host_batch.values() if v.ndim == 2])
  seq_len = max(x.shape[1] for x in inputs)
  rows = -(-sum(x.shape[0] * x.shape[1] for x in inputs) // seq_len) * jax.process_count()
  kv_cache, kv_prefix, kv_model = _sampler_cache(config, cfg, host_batch, seq_len, reference)
  return plan(cfg, mesh_shape=mesh_shape, rules=tuple(config.axis_rules), batch_size=rows,
              seq_len=seq_len, accum_steps=config.accum_steps, reference=reference,
              kv_cache=kv_cache, kv_prefix=kv_prefix, kv_model=kv_model,
              lora_section=config.get("lora"))


def _sampler_cache(config, cfg: ModelConfig, host_batch, seq_len: int, reference):
  """(kv_cache, kv_prefix, kv_model) of `plan` for the sampling between a run's steps, as
  `sampling.sampler` builds the caches:

    GRPO (a `rollouts` section with `prompts`): each prompt once, in its power-of-two bucket,
      and `num_samples` rows of `max_new_tokens` per prompt;
    self-play: `episodes` rows of the `prompt_width` bucket + `max_new_tokens`;
    distillation: `batch_size` rows of the bucket of seq_len - max_new_tokens (the longest a
      prompt can be) + max_new_tokens, sampled by the student (on-policy steps) or the teacher
      (the "teacher" source): the larger cache of the two.

  A reward model's policy samples before training: nothing.
  """
  if "rollouts" in config and "prompts" in config.rollouts:
    section = config.rollouts
    prompt = host_batch.get("prompt_inputs")
    width = sampling.bucket_length(prompt.shape[1] if prompt is not None else seq_len)
    if section.num_samples > 1:  # `SamplingConfig.share_prefix`, the default.
      return ((section.prompts * section.num_samples, max(section.max_new_tokens - 1, 1)),
              (section.prompts, width), None)
    return (section.prompts, width + section.max_new_tokens), None, None
  if "self_play" in config:
    s = config.self_play
    return (s.episodes, sampling.bucket_length(s.prompt_width) + s.max_new_tokens), None, None
  if "distill" in config:
    d = config.distill
    samplers = ([cfg] if d.on_policy_fraction > 0 else []) + (
        [reference] if d.source == "teacher" and isinstance(reference, ModelConfig) else [])
    if samplers:
      rows = (config.batch_size,
              sampling.bucket_length(max(config.seq_len - d.max_new_tokens, 1))
              + d.max_new_tokens)
      model = max(samplers, key=lambda m: m.num_layers * m.num_kv_heads * m.head_dim)
      return rows, None, None if model is cfg else model
  return None, None, None
