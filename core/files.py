"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer writes a temporary file in the target's directory and renames it over the target (``os.replace`` is
atomic on POSIX within one file system). ``fsync=True`` also forces the bytes to disk before the rename, for files
a ``kill -9`` or power loss must not corrupt (checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def savez(path: Path, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def write_with(path: Path, writer: Callable[[IO], None], fsync: bool = False) -> Path:
    """Call ``writer(binary file)`` (e.g. ``lambda fh: torch.save(obj, fh)``, ``fig.savefig``) and publish the result
    at ``path`` atomically; returns the path."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        writer(fh)
    return Path(path)
