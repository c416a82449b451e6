"""Keep freed memory inside the process (glibc ``mallopt``): about twice as fast CPU training here.

The first block's maps are 40 MB per tensor at batch 32 (32 x 32 x 99 x 99 floats). glibc serves every allocation
above 32 MB with a fresh ``mmap`` and returns it to the kernel on free, so each training step page-faults and
zeroes hundreds of MB anew. Measured on 2 cores (``benchmarks/results-2core-cpu.json``, ``step_ms_glibc_default_*``
against ``step_ms_threads2_*``): the plain split step drops from 217 ms to 89 ms, the DP-SGD step from 227 ms to
102 ms. The cost: a process keeps its peak heap until it exits.

``keep_freed_memory()`` is called by the training loops (``clients.train.train_local``) and is a no-op where glibc
is not the allocator.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters and defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP_TRIM = 2**31 - 1  # mallopt takes an int: the heap is trimmed only above 2 GiB of free top memory

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError unless this is glibc)
            _libc = libc
        except (OSError, AttributeError):
            return None
    return _libc


def keep_freed_memory(keep: bool = True) -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (``keep=False``: glibc's defaults).
    Returns whether the setting took effect (False off glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_max, trim = (0, _KEEP_TRIM) if keep else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
    return bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
