"""core/runtime.py: with keep_freed_memory() a freed large tensor stays in the process for reuse; without it glibc
returns the memory to the kernel at once (each allocation then page-faults anew). Run in fresh processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import os, sys, torch
from core.runtime import keep_freed_memory
assert keep_freed_memory({keep}) is True
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before = rss()
t = torch.ones(64 * 2**20)  # 256 MiB, every page touched
del t
print((rss() - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("keep", [True, False])
def test_freed_memory_is_kept_or_returned(keep: bool) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(keep=keep)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    retained_mib = float(out.stdout.strip())
    if keep:
        assert retained_mib > 200  # kept in the heap
    else:
        assert retained_mib < 50  # unmapped on free
