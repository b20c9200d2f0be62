"""Meshes and logical-axis sharding on 8 fake CPU devices (tests/conftest.py sets them up)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from configs.common import AXIS_RULES
from reasonjax import models, sharding

# Every dim divides the (2, 2, 2) mesh, so each rule really applies. The default initializer
# (0.02, as in real checkpoints) gives logits up to ~2; sharded sums differ from single-device ones
# only by float32 round-off, which grows with the logit scale.
CFG = models.preset("tiny", num_layers=2)


def test_make_mesh_sizes_and_auto_axes():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert set(mesh.axis_types) == {AxisType.Auto}
  assert dict(sharding.make_mesh(fsdp=4).shape) == {"data": 2, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3}, r"3 devices, but 8 are available: .*\(each one of \[1, 2, 4, 8\]"),
    ({"data": -1, "fsdp": 3}, r"8 devices do not split.*valid sizes: \[1, 2, 4, 8\]"),
    ({"data": -1, "fsdp": -1}, "at most one may be -1"),
    ({"tensor": 0}, "each must be positive"),
])
def test_make_mesh_rejects_bad_sizes(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(**sizes)


def test_a_batch_that_does_not_split_over_the_batch_axes_is_refused():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharding.check_batch(8, mesh, AXIS_RULES)
  with pytest.raises(ValueError, match=r"6 rows .* data=2 x fsdp=2 = 4: .* multiple of 4 "
                                       r"\(e.g. 4 or 8\)"):
    sharding.check_batch(6, mesh, AXIS_RULES)


def test_non_dividing_mesh_axes_are_dropped():
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  spec = sharding.logical_to_mesh_spec(PartitionSpec("embed", "kv_heads", "head_dim"),
                                       (256, 2, 64), mesh, AXIS_RULES)
  assert spec == PartitionSpec("fsdp", None, None)  # 2 KV heads do not split 4 ways.
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  spec = sharding.logical_to_mesh_spec(PartitionSpec("act_batch", "act_len"), (2, 16), mesh,
                                       AXIS_RULES)
  assert spec == PartitionSpec("data", None)  # A batch of 2 cannot split over data x fsdp = 4.


def test_sharded_init_and_forward_equal_single_device():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = sharding.logical_to_shardings(models.param_logical_axes(CFG),
                                            models.param_shapes(CFG), mesh, AXIS_RULES)
  params = sharding.init_sharded(functools.partial(models.init_params, CFG), jax.random.key(0),
                                 shardings)
  q = params["layers_1"]["self_attn"]["q_proj"]["kernel"]  # [D, H, hd]
  assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (128, 2, 64)
  down = params["layers_1"]["mlp"]["down_proj"]["kernel"]  # [F, D]
  assert down.sharding.spec == PartitionSpec("tensor", "fsdp")
  assert params["embed_tokens"]["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
  scanned = CFG.replace(scan_layers=True)  # Stacked layers: the layer axis stays unsharded.
  stacked = sharding.logical_to_shardings(models.param_logical_axes(scanned),
                                          models.param_shapes(scanned), mesh, AXIS_RULES)
  assert (stacked["layers"]["self_attn"]["q_proj"]["kernel"].spec
          == PartitionSpec(None, "fsdp", "tensor", None))

  # The same random numbers as an unsharded init: sharding must not change the model.
  single = jax.device_get(models.init_params(CFG, jax.random.key(0)))
  np.testing.assert_array_equal(jax.device_get(q), single["layers_1"]["self_attn"]["q_proj"]["kernel"])

  tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[3, 9:] = 0
  apply = jax.jit(models.Model(CFG).apply)
  with sharding.axis_rules(mesh, AXIS_RULES):
    logits = apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  assert logits.sharding.spec[0] == ("data", "fsdp")  # Activations follow the rules too.
  ref = jax.jit(models.Model(CFG).apply)({"params": single}, tokens, attention_mask=mask)
  assert np.abs(np.asarray(ref)).max() > 1.0
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=0, atol=1e-5)
