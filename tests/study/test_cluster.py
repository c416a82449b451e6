"""The study over a real Ray cluster: a head and a worker node joined with ``ray start --address`` on 127.0.0.1, the
grid's shards submitted as Ray jobs (``ray job submit``) sharing one ``--out``, one of them killed and resubmitted."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runs import SIM_SMALL, flat, stop_group

from core.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def job_cluster(tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A two-node Ray cluster with a job server: the head (1 CPU, the dashboard that serves ``ray job``) and one
    worker node (1 CPU) joined on 127.0.0.1. Every port Ray would otherwise take at a fixed number is a free one, so
    the session's own test cluster (conftest.py) runs beside it. Yields the job server's address."""
    gcs, dashboard, client, *agents = _free_ports(7)
    # The session's test cluster (conftest.py) exports RAY_ADDRESS; the ray CLI would send ``ray job`` there.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp = tempfile.mkdtemp(prefix="ray-jobs-", dir="/tmp")  # short: Ray's socket paths have a size limit
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head_cmd = [RAY, "start", "--head", f"--port={gcs}", f"--temp-dir={temp}", "--dashboard-host=127.0.0.1"]
    head_cmd += [f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}"]
    head_cmd += [f"--dashboard-agent-listen-port={agents[0]}", f"--metrics-export-port={agents[1]}", *common]
    worker_cmd = [RAY, "start", f"--address=127.0.0.1:{gcs}", *common]
    worker_cmd += [f"--dashboard-agent-listen-port={agents[2]}", f"--metrics-export-port={agents[3]}"]
    logs = [(tmp_path / f"{name}.log").open("w") for name in ("head", "worker")]
    started = []
    try:
        head = subprocess.Popen(head_cmd, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
        started.append(head)
        address = f"http://127.0.0.1:{dashboard}"
        _wait(lambda: _jobs_answer(address), 180, "the head's job server")
        worker = subprocess.Popen(worker_cmd, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        started.append(worker)
        # 120 s was not enough once on the slow 2-core machine with a study running beside the suite.
        _wait(lambda: _alive_nodes(gcs) == 2, 300, "the worker node joining")
        yield address
    finally:
        for process in reversed(started):
            stop_group(process)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not ready after {timeout} s")


def _jobs_answer(address: str) -> bool:
    done = subprocess.run([RAY, "job", "list", f"--address={address}"], capture_output=True, text=True)
    return done.returncode == 0


def _alive_nodes(gcs: int) -> int:
    code = f"import ray; ray.init(address='127.0.0.1:{gcs}', logging_level='ERROR')"
    code += "; print(len([n for n in ray.nodes() if n['Alive']]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def _submit(address: str, job_id: str, args: str) -> None:
    """``ray job submit --no-wait``: ``sim.py study`` run from this checkout, as a user would submit it (through
    ``SIM_SMALL``: the attacks read every 20th image of the attacker's sets)."""
    runtime = {"env_vars": {"OMNIGLOT_ROOT": os.environ["OMNIGLOT_ROOT"], "FLWR_TELEMETRY_ENABLED": "0"}}
    entry = f"cd {ROOT} && {sys.executable} {SIM_SMALL} study {args}"
    cmd = [RAY, "job", "submit", f"--address={address}", f"--submission-id={job_id}", "--no-wait"]
    cmd += [f"--runtime-env-json={json.dumps(runtime)}", "--", "bash", "-c", entry]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _finish(address: str, job_id: str, timeout: float = 1500) -> str:
    """Wait for the job to end (the job SDK's status, the CLI's is prose); its final status."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status.value
        time.sleep(3)
    raise AssertionError(f"job {job_id} still {status.value} after {timeout} s")


def _logs(address: str, job_id: str) -> str:
    done = subprocess.run([RAY, "job", "logs", f"--address={address}", job_id], capture_output=True, text=True)
    return flat(re.sub(r"\x1b\[[0-9;]*m", "", done.stdout))  # Ray's and rich's colours out


@pytest.mark.slow
def test_two_shards_as_ray_jobs_share_one_study_and_a_killed_one_resubmitted_finishes_it(
    job_cluster: str, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.toml"
    base = (
        'clients = 2\nrounds = 3\nlimit-per-client = 16\nattack-epochs = 1\nattacks = "seed"\ncpus-per-client = 0.5\n'
    )
    cells = '[[cells]]\nname = "a"\nfamily = "dp"\nnoise = 0.0\n\n[[cells]]\nname = "b"\nfamily = "nopeek"\n'
    grid.write_text(f"[base]\n{base}\n{cells}noise = 0.0\nnopeek = 0.5\n")
    out = tmp_path / "study"
    args = f"--grid {grid} --out {out}"
    _submit(job_cluster, "shard-1", f"{args} --shard 1/2")
    _submit(job_cluster, "shard-2", f"{args} --shard 2/2")
    # Stop shard 1 once cell a has checkpointed a round (of 3), so that the resubmitted job resumes it.
    _wait(lambda: (out / "a" / "checkpoint.pt").exists(), 600, "shard 1's first round of cell a")
    stop = subprocess.run([RAY, "job", "stop", f"--address={job_cluster}", "shard-1"], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _finish(job_cluster, "shard-1") == "STOPPED"
    assert _finish(job_cluster, "shard-2") == "SUCCEEDED", _logs(job_cluster, "shard-2")
    assert RunDir(out / "b").state() == "attacked" and RunDir(out / "a").state() != "attacked"
    assert "report: not written yet, 1 run(s) to finish: a" in _logs(job_cluster, "shard-2")
    b_model = (out / "b" / "model.pt").stat().st_mtime_ns
    # Resubmitted, shard 1 breaks its dead predecessor's lock, finishes cell a and writes the report.
    _submit(job_cluster, "shard-1-again", f"{args} --shard 1/2")
    assert _finish(job_cluster, "shard-1-again") == "SUCCEEDED", _logs(job_cluster, "shard-1-again")
    logs = {job: _logs(job_cluster, job) for job in ("shard-1", "shard-2", "shard-1-again")}
    assert RunDir(out / "a").state() == "attacked" and (out / "b" / "model.pt").stat().st_mtime_ns == b_model
    again = logs["shard-1-again"]
    # Stopped in round 2 or 3 ("incomplete": resumed from its checkpoint) or in its attack ("trained": attacked only).
    assert re.search(r"run a \(dp, eps inf, cut 4, train seed 0\): (incomplete|trained)", again), again[:3000]
    assert [row.split(",")[0] for row in (out / "a" / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    assert sum(log.count("run b (") for log in logs.values()) == 1  # cell b trained once
    written = [job for job, log in logs.items() if re.search(r"report: \S+report\.html(?! \(up to date\))", log)]
    assert written == ["shard-1-again"]
    report = (out / "report.md").read_text()
    assert "| a | 1 |" in report and "| b | 1 |" in report
    assert not list(out.glob("*.lock"))
