"""Device meshes and logical-axis sharding.

Model code names array axes logically ('embed', 'heads', 'act_batch', ...); the rules that map
those names to the mesh axes `data`, `fsdp` and `tensor` come from the config
(`configs/common.py:AXIS_RULES`), so parallelism changes without touching model code.

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.logical_to_shardings(models.param_logical_axes(cfg),
                                              models.param_shapes(cfg), mesh, rules)
    params = sharding.init_sharded(functools.partial(models.init_params, cfg), rng, shardings)
    with sharding.axis_rules(mesh, rules):
      logits = jax.jit(model.apply)({"params": params}, tokens)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all) with Auto axis types.

  One size may be -1: it takes the devices the other two leave.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes data={data}, fsdp={fsdp}, tensor={tensor}: each must be "
                     "positive, and at most one may be -1")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if len(devices) % rest:
      divisors = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
      raise ValueError(f"mesh: {len(devices)} devices do not split into data={data}, "
                       f"fsdp={fsdp}, tensor={tensor}: the fixed sizes' product {rest} must "
                       f"divide {len(devices)} (valid sizes: {divisors})")
    sizes[sizes.index(-1)] = len(devices) // rest
  if math.prod(sizes) != len(devices):
    divisors = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                     f"{math.prod(sizes)} devices, but {len(devices)} are available: the "
                     f"sizes must multiply to {len(devices)} (each one of {divisors}; one "
                     "may be -1 to take the rest)")
  # Explicit axis types (the new default) would require sharding-aware code everywhere.
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(logical: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                         rules: Rules) -> PartitionSpec:
  """Maps a logical spec to mesh axes, leaving a dimension unsharded along mesh axes whose
  size does not divide it (e.g. 2 KV heads on a tensor axis of 4) instead of failing."""
  spec = nn.logical_to_mesh_axes(tuple(logical), tuple(rules))
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def logical_to_shardings(logical_tree, shape_tree, mesh: Mesh, rules: Rules):
  """NamedShardings for a tree of logical PartitionSpecs and a matching tree of shapes."""
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh, rules)),
      logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_sharded(init_fn: Callable, rng: jax.Array, shardings):
  """Runs `init_fn(rng)` compiled with `out_shardings`, so no device ever holds the whole tree."""
  return jax.jit(init_fn, out_shardings=shardings)(rng)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules):
  """Context for tracing model code: activations' logical constraints resolve on `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def batch_shardings(batch, mesh: Mesh, rules: Rules, *, process_count: int | None = None):
  """NamedShardings of a host batch (a dict of arrays): dim 0 on `act_batch`, dim 1 on
  `act_len`, the rest replicated. Shapes are per process; the global batch is process_count
  times larger along dim 0."""
  count = jax.process_count() if process_count is None else process_count
  logical = ("act_batch", "act_len")

  def one(x):
    shape = (x.shape[0] * count,) + x.shape[1:] if x.ndim else ()
    spec = PartitionSpec(*logical[:x.ndim])
    return NamedSharding(mesh, logical_to_mesh_spec(spec, shape, mesh, rules))

  return jax.tree.map(one, batch)


def check_batch(rows: int, mesh: Mesh, rules: Rules) -> None:
  """Raises ValueError when a global batch of `rows` does not split evenly over the mesh axes
  that `act_batch` maps to (it would silently run unsharded, every device holding it all)."""
  axes = dict(rules).get("act_batch") or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  ways = math.prod(mesh.shape[a] for a in axes)
  if rows % ways:
    below, above = rows // ways * ways, (rows // ways + 1) * ways
    raise ValueError(
        f"the global batch of {rows} rows does not split over the mesh's batch axes "
        f"{' x '.join(f'{a}={mesh.shape[a]}' for a in axes)} = {ways}: use a batch_size that "
        f"is a multiple of {ways} (e.g. {below or above} or {above}), or a mesh whose "
        "data x fsdp divides it")


def replicated(tree, mesh: Mesh):
  """Arrays that every process holds alike -> arrays replicated over `mesh`: what a jitted
  program over a multi-process mesh takes (a process can only place data on its own devices)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def multi_process_mesh(params) -> Mesh | None:
  """The mesh of `params` when it spans several processes' devices, else None."""
  leaf = jax.tree.leaves(params)[0]
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return leaf.sharding.mesh
  return None


def inputs_like(tree, params):
  """Host inputs of a program over `params`: as they are, or replicated over `params`' mesh when
  it spans several processes (every process passing the same inputs)."""
  mesh = multi_process_mesh(params)
  return tree if mesh is None else replicated(tree, mesh)


def to_host(tree):
  """Device arrays -> numpy on every process; a multi-process array is gathered from all of
  them (`jax.device_get` reads only arrays whose devices are all this process's)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def put_batch(batch, shardings):
  """Each process's rows of a batch -> global arrays in `shardings` (one host copy). A field
  whose rows are not split over the devices (too few of them: a rollout batch's prompts) is
  gathered from every process first, since each device then holds all of its rows."""
  def one(x, s):
    if jax.process_count() > 1 and np.ndim(x) and (not s.spec or s.spec[0] is None):
      x = multihost_utils.process_allgather(x, tiled=True)
    return jax.make_array_from_process_local_data(s, x)
  return jax.tree.map(one, batch, shardings)
