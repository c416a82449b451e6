"""Per-run locks of a shared study directory (study/locks.py): one holder at a time, stale locks broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import locks
from study.locks import held, holder_of, is_stale, try_lock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it (until the system reuses it)


def test_one_holder_at_a_time_and_released_on_the_way_out(tmp_path: Path) -> None:
    lock = tmp_path / "cell.lock"
    with held(lock) as mine:
        assert mine and lock.exists()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not try_lock(lock)  # this process's own live lock is not stale
        with held(lock) as again:
            assert not again
        assert holder_of(lock) == f"{socket.gethostname()} pid {os.getpid()}"
    assert not lock.exists()


def test_a_dead_holder_on_this_host_is_broken_at_once_a_live_one_never(tmp_path: Path) -> None:
    lock = tmp_path / "cell.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": time.time()}))
    assert is_stale(lock)
    assert try_lock(lock) and json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": 0.0}))
    assert not is_stale(lock) and not try_lock(lock)  # a live holder, however old its start


def test_another_host_s_lock_is_stale_only_without_heartbeat(tmp_path: Path, monkeypatch) -> None:
    lock = tmp_path / "cell.lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time()}))
    assert not is_stale(lock) and not try_lock(lock)
    old = time.time() - locks.STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    assert is_stale(lock)
    assert try_lock(lock) and json.loads(lock.read_text())["host"] == socket.gethostname()


def test_the_holder_s_heartbeat_keeps_its_lock_fresh(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    lock = tmp_path / "cell.lock"
    with held(lock):
        old = time.time() - 1000
        os.utime(lock, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 5


@pytest.mark.slow
def test_two_processes_racing_for_one_lock_give_it_to_one(tmp_path: Path) -> None:
    lock = tmp_path / "cell.lock"
    code = (
        "import sys, time; from study.locks import try_lock; print(try_lock(__import__('pathlib').Path(sys.argv[1])))"
    )
    code += "; time.sleep(8)"  # the winner stays alive while the others try
    root = Path(__file__).resolve().parents[2]
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(lock)], cwd=root, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = [r.communicate(timeout=60)[0].strip() for r in racers]
    assert sorted(answers) == ["False", "False", "False", "True"]
