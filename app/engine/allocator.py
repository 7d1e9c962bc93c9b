"""Keep freed memory in the process for reuse, instead of handing it back to the OS (glibc only).

A forward pass on the CPU allocates tens of activation tensors of several to tens of MB each and frees
them again. With glibc's defaults each such block is a fresh ``mmap`` (anything over 128 KB, a threshold
that only adapts up to 32 MB) or a heap top that is trimmed back after the free, so every pass touches
its memory anew and the kernel zeroes it page by page: on 2 CPU cores the float32 photo denoiser took
about a tenth longer for those page faults (``bench/bench_denoise_speed.py`` with
``DIFFUSION_KEEP_FREED_MEMORY=false``; docs/denoising.md, "Faster passes"). Three ``mallopt`` settings
make the heap keep what it has and serve the next pass from it:

- ``M_ARENA_MAX`` 1: every thread allocates from the main heap. A thread's own arena grows in heaps of
  at most 64 MB, each a fresh mapping, and anything larger is mapped on its own; the engine computes on
  its own thread. glibc fixes the number of arenas at a process's first allocation by a second thread,
  so this only takes where it runs before any: the console scripts call ``keep_freed_memory`` first.
- ``M_MMAP_THRESHOLD`` 1 GiB: blocks up to that size come from the heap, not from their own mapping.
- ``M_TRIM_THRESHOLD`` 2 GiB - 1: the heap is not shrunk when its top is freed.

The cost: the process's resident memory stays at its peak (the largest batch it has run) instead of
falling back between jobs. ``DIFFUSION_KEEP_FREED_MEMORY=false`` leaves glibc's defaults. Elsewhere than
glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1))
_applied = False


def keep_freed_memory() -> bool:
    """Apply ``SETTINGS`` to this process's allocator once; whether they are in effect (False where the C
    library is not glibc or refused one of them)."""
    global _applied
    if _applied:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    refused = [option for option, value in SETTINGS if mallopt(option, value) != 1]
    if refused:
        log.warning("glibc refused mallopt options %s: freed memory goes back to the OS", refused)
        return False
    _applied = True
    return True
