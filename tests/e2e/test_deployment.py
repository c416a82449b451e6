"""The app on Flower's Deployment Engine: a SuperLink and two SuperNodes on 127.0.0.1, one round with `flwr run`.

Ports are picked free at test time; FLWR_HOME is a temporary folder holding the SuperLink connection. `flwr run`
gets a copy of the app without `[tool.flwr.federations]`: flwr 1.41 would otherwise migrate that legacy section,
commenting it out of the repository's pyproject.toml. Every process started here, and everything they started, is
stopped by PID at the end and checked gone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _descendants(pids: list[int]) -> set[int]:
    tree, found, todo = _children(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(tree.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie, already dead and waiting to be reaped by init, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop(procs: list[subprocess.Popen]) -> set[int]:
    """SIGTERM every process started here and all their descendants, SIGKILL what is left after 20 s."""
    pids = _descendants([p.pid for p in procs])
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            for p in procs:
                p.poll()  # reap our direct children
            time.sleep(0.2)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
    return pids


def _app_copy(target: Path) -> Path:
    """The app as a user's checkout holds it: every package pyproject.toml installs, README and pyproject."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in found["include"]):
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", target / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.sub(r"\[tool\.flwr\.federations\].*?(?=\n\[tool\.ruff\])", "", pyproject, flags=re.S)
    assert "tool.flwr.federations" not in pyproject
    (target / "pyproject.toml").write_text(pyproject)
    return target


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "flower-superlink exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@pytest.mark.slow
def test_deployment_engine_one_round(omniglot_root: Path, tmp_path: Path) -> None:
    app = _app_copy(tmp_path / "app")
    home, logs, out = tmp_path / "flwr-home", tmp_path / "logs", tmp_path / "run"
    home.mkdir()
    logs.mkdir()
    link_port, *node_ports = _free_ports(3)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\naddress = "127.0.0.1:{link_port}"\n'
        "insecure = true\n"
    )
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # offline: the app runs on this venv as it is
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the SuperLink starts flower-superexec by name
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    started: set[int] = set()
    try:
        link = start("superlink", "flower-superlink", "--insecure", "--port", str(link_port))
        _wait_for_port(link_port, link)
        for pid, port in enumerate(node_ports):
            start(
                f"supernode{pid}",
                *("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port", str(port)),
                *("--node-config", f"partition-id={pid} num-partitions=2"),
            )
        run_config = f"clients=2 rounds=1 limit-per-client=64 out='{out}' data-dir='{omniglot_root}'"
        done = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "local-deploy", "--stream", "--run-config", run_config],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        listed = subprocess.run(
            [str(BIN / "flwr"), "ls", "local-deploy", "--format", "json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        runs = json.loads(listed.stdout)["runs"]
        assert [r["status"] for r in runs] == ["finished:completed"], listed.stdout
        started = _descendants([p.pid for p in procs])
        assert len(started) >= 3
    finally:
        stopped = _stop(procs)
    assert not [pid for pid in started | stopped if _alive(pid)], "processes left running"
    with (out / "ledger.csv").open(newline="") as fh:
        ledger = list(csv.DictReader(fh))
    assert [(r["round"], r["partition_id"], r["status"]) for r in ledger] == [
        ("1", "0", "trained"),
        ("1", "1", "trained"),
    ]
    assert all(int(r["steps_round"]) == 2 for r in ledger)
    assert (out / "model.pt").exists() and not (out / "INCOMPLETE").exists()
