"""One lock per study cell, so that shards (or machines) sharing one study directory never run a cell twice.

A lock is a file ``<cell>.lock`` beside the cell's run directory, created with ``O_CREAT | O_EXCL`` (atomic on a
local file system and on NFSv3+): whoever creates it runs the cell. It holds the holder's host, pid and start time,
and the holder touches it every ``HEARTBEAT_S`` seconds while the cell runs.

A lock is stale, and is broken by the next shard that wants the cell, when
- its holder ran on this host and that process is gone (a killed job: broken at once), or
- nobody has touched it for ``STALE_AFTER_S`` seconds (a holder on another machine that died or lost the file
  system; that machine's clock and ours must agree to within a minute or so).
Breaking is itself guarded by an ``O_EXCL`` file, so two shards that both find a lock stale do not both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _read(path: Path) -> dict | None:
    """The lock's holder, {} for an unreadable (half-written) lock, None when there is no lock."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the lock at ``path`` (which exists) may be broken: see the module's docstring."""
    holder = _read(path)
    if holder is None:
        return False
    try:
        idle = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"]) or idle > STALE_AFTER_S
    return idle > STALE_AFTER_S


def holder_of(path: Path) -> str:
    """ "host pid N" of a lock's holder, for messages."""
    holder = _read(path) or {}
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(_holder(), fh)
    return True


def _break_stale(path: Path) -> None:
    """Remove the stale lock at ``path``, unless another shard is breaking it at the same moment."""
    guard = path.with_name(path.name + ".break")
    if not _create(guard):
        if is_stale(guard):  # a breaker that died between its two steps
            guard.unlink(missing_ok=True)
        return
    try:
        if is_stale(path):  # still stale now that we hold the guard (nobody took it in between)
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def try_lock(path: Path) -> bool:
    """Take the lock at ``path``: True if this process now holds it, False if a live holder has it."""
    if _create(path):
        return True
    if is_stale(path):
        _break_stale(path)
        return _create(path)
    return False


@contextlib.contextmanager
def held(path: Path) -> Iterator[bool]:
    """``with held(path) as mine:``: ``mine`` tells whether this process holds the lock; while it does, a
    heartbeat thread touches it, and it is removed on the way out (an exception included; a ``kill -9`` leaves it
    to the stale rule)."""
    mine = try_lock(path)
    if not mine:
        yield False
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"lock {path.name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)
