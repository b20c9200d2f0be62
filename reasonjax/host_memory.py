"""How the process's C allocator returns memory to the operating system.

XLA:CPU allocates each execution's temporary buffer (2.7 GB for the small train step of
`benchmarks/train_step.py`) with `malloc` from a worker thread and frees it when the step ends.
With glibc's defaults a block that large is always served by a fresh `mmap` and handed back with
`munmap`, so every step zero-fills the whole buffer again, one page fault per 4 KiB page:
686k faults and about 4 s of kernel time per small step on the 2-core CI machine. Keeping
freed memory in the heap lets the next step reuse the same pages.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory mapped for reuse; returns whether it applied.

  Three settings, in this order: one arena for all threads (a thread's own arena cannot hold a
  block above 64 MiB and falls back to `mmap`), no `mmap` for large blocks, and no trimming of
  the heap's free top. The process's resident memory then stays at its peak instead of
  shrinking between steps.

  Call it before JAX starts its backend: threads created earlier keep the arena they have. A
  no-op (False) where the C library is not glibc.
  """
  if platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # -1 is glibc's "never" for the trim threshold (man mallopt).
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  return all(mallopt(param, value) == 1 for param, value in settings)
