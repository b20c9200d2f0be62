"""host_memory.retain_freed_memory: XLA's per-execution buffers stop faulting in fresh pages."""

import platform
import subprocess
import sys

import pytest

from reasonjax import host_memory

# A jitted program whose intermediate (a @ b: 5000 x 5000 float32, 100 MB) lives in XLA's
# temporary buffer; prints the page faults of its third call.
_PROGRAM = """
import resource, sys
from reasonjax import host_memory
if sys.argv[1] == "retain":
  assert host_memory.retain_freed_memory()
import jax, jax.numpy as jnp
a, b = jnp.ones((5000, 64)), jnp.ones((64, 5000))
f = jax.jit(lambda a, b: jnp.sum((a @ b) @ a))
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def third_call_faults(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True,
                       check=True).stdout
  return int(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retained_memory_is_reused_across_executions():
  pages = 5000 * 5000 * 4 // 4096
  # The default: every call maps the 100 MB buffer afresh and faults in each of its pages.
  assert third_call_faults("default") > pages // 2
  assert third_call_faults("retain") < pages // 50


def test_no_op_without_glibc(monkeypatch):
  monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
  assert host_memory.retain_freed_memory() is False
