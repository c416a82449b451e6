"""End to end, tiny runs on the session's Ray cluster: seeded sampling, clients failing part-way (the test seam's
``SPLITFED_FAIL_RATE``), --max-epsilon, a crashing client, kill -9 and --resume (which must equal the uninterrupted
run exactly: the determinism check).

Every run is 2-3 clients with 64 images each (58 train: q = 0.5, 2 DP-SGD steps per round; 40 in the FedAdam
run), --skip-attack. Two columns can never repeat between runs and are left out of the comparisons: ``client`` (the
Flower node id, assigned afresh by every run) and the wall-clock seconds in metrics.csv.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import sim

from core.config import RunConfig
from core.privacy import epsilon

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--limit-per-client", "64", "--skip-attack"]
# 3 clients, 2 sampled per round (fraction 0.67): with seed 0 rounds 1-4 sample {1,2} {0,1} {1,2} {0,2}, and the
# seam's failure draw at rate 0.4 makes client 1 fail in round 1.
REFERENCE = ["--clients", "3", "--rounds", "4", "--fraction-train", "0.67", "--seed", "0", *TINY]
FAILING = {"SPLITFED_FAIL_RATE": "0.4"}
NOT_REPRODUCIBLE = {"client", "round_seconds", "elapsed_seconds"}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _flat(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


def _comparable(run_dir: Path, name: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in NOT_REPRODUCIBLE} for row in _rows(run_dir / name)]


def _sim(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """sim.py with the environment as it is now (the session's RAY_ADDRESS) plus ``env``."""
    return sim(*args, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def reference(ray_cluster: str, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = _sim(*REFERENCE, "--out", str(out), env=FAILING)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def _assert_same_run(a: Path, b: Path) -> None:
    for name in ("ledger.csv", "metrics.csv", "client_metrics.csv"):
        assert _comparable(a, name) == _comparable(b, name), name


@pytest.mark.slow
def test_clients_are_sampled_by_seed_and_round(reference) -> None:
    first, _ = reference
    ledger = _rows(first / "ledger.csv")
    sampled = defaultdict(set)
    for row in ledger:
        sampled[int(row["round"])].add(int(row["partition_id"]))
    assert dict(sampled) == {1: {1, 2}, 2: {0, 1}, 3: {1, 2}, 4: {0, 2}}  # seeded by (seed, round), not node ids
    assert len(_rows(first / "metrics.csv")) == 4 and not (first / "INCOMPLETE").exists()


@pytest.mark.slow
def test_fail_rate_round_goes_on_and_failed_steps_are_counted(reference) -> None:
    run_dir, stdout = reference
    ledger = _rows(run_dir / "ledger.csv")
    failed = [r for r in ledger if r["status"] == "failed"]
    assert [(int(r["round"]), int(r["partition_id"])) for r in failed] == [(1, 1)]
    assert int(failed[0]["steps_round"]) == 1  # failed part-way: 1 of its 2 steps
    others = [r for r in ledger if r["round"] == "1" and r["status"] == "trained"]
    assert [int(r["partition_id"]) for r in others] == [2]  # the round went on without it
    assert "client 1 simulated failure (test seam) after 1 of 2 steps" in _flat(stdout)
    assert int(_rows(run_dir / "metrics.csv")[0]["clients_trained"]) == 1
    by_client = defaultdict(list)
    for row in ledger:
        by_client[row["partition_id"]].append(row)
    for rows in by_client.values():  # every step, failed or not, is composed into the client's epsilon
        steps = 0
        for row in rows:
            steps += int(row["steps_round"])
            assert int(row["steps_total"]) == steps
            assert float(row["epsilon"]) == pytest.approx(epsilon([(0.5, 0.5, steps)], 1e-5), rel=1e-9)
    assert int(by_client["1"][-1]["steps_total"]) == 1 + 2 + 2  # round 1 (failed), rounds 2 and 3


def _kill_after(args: list[str], out: Path, csv_name: str, server_round: int, env: dict | None = None) -> None:
    """Start ``sim.py args --out out`` and kill -9 its whole process group once ``csv_name`` has a row of
    ``server_round``; the run directory must then be left unfinished."""
    cmd = [sys.executable, "sim.py", *args, "--out", str(out)]
    # Its own session: the kill reaches the Ray processes it starts too (they share its process group).
    env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 2400
        path = out / csv_name
        while not (path.exists() and any(r["round"] == str(server_round) for r in _rows(path))):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert (out / "INCOMPLETE").exists() and not (out / "model.pt").exists()


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path: Path) -> None:
    """The same seed gives the same run: killed after round 2 and resumed, it equals the uninterrupted reference
    (ledger, metrics, per-client metrics), failures included."""
    first, _ = reference
    out = tmp_path / "killed"
    _kill_after(REFERENCE, out, "ledger.csv", 2, env=FAILING)
    refused = _sim("--resume", str(out), "--lr", "0.001")
    assert refused.returncode == 2 and f"--lr 0.001 differs from the run's {RunConfig().lr:g}" in refused.stderr
    done = _sim("--resume", str(out), "--skip-attack", env=FAILING)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained: 4 rounds" in done.stdout
    _assert_same_run(first, out)
    assert not (out / "INCOMPLETE").exists() and (out / "model.pt").exists()
    again = _sim("--resume", str(out))
    assert again.returncode == 2 and "that run has finished" in again.stderr


def _resume_equals_whole(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run ``args`` whole, and again killed after round 2 then resumed; assert the two runs' ledgers, metrics and
    final weights are identical. Returns (whole, resumed) run directories."""
    whole = tmp_path / "whole"
    done = _sim(*args, "--out", str(whole))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    _kill_after(args, out, "metrics.csv", 2)
    done = _sim("--resume", str(out), "--skip-attack")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained: 3 rounds" in done.stdout
    _assert_same_run(whole, out)
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (whole, out))
    for part in ("device", "head"):
        for key, value in a[part].items():
            assert torch.equal(b[part][key], value), f"{part}.{key}"
    return whole, out


@pytest.mark.slow
def test_kill_9_then_resume_is_exact_with_a_server_optimiser_and_both_defenses_at_a_spatial_cut(
    ray_cluster: str, tmp_path: Path
) -> None:
    """FedAdam keeps moments between rounds, so the checkpoint must carry them; at cut 2 (32x13x13 activations) with
    noise on clipped activations and NoPeek, the resumed run must draw the same cut noise; with --ema the server's
    moving average of the device must survive the restart too. It ends with the same weights (the averaged device)
    and the same intercepted activations as the uninterrupted run."""
    args = ["--clients", "3", "--rounds", "3", "--limit-per-client", "40", "--skip-attack", "--noise", "0"]
    args += [
        "--ema",
        "0.5",
        "--strategy",
        "fedadam",
        "--cut",
        "2",
        "--cut-clip",
        "6",
        "--cut-noise",
        "0.1",
        "--nopeek",
        "0.5",
    ]
    whole, out = _resume_equals_whole(args, tmp_path)
    model = torch.load(whole / "model.pt", weights_only=True)
    assert model["device"]["6.weight"].shape == (32, 32, 7, 7) and model["head"]["0.weight"].shape == (32, 32, 5, 5)
    with np.load(whole / "intercepted.npz") as x, np.load(out / "intercepted.npz") as y:
        assert x["inference_activations"].shape[1:] == (32, 13, 13) and x["inference_activations"].dtype == np.float16
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.slow
def test_kill_9_then_resume_is_exact_under_the_hijacking_server(ray_cluster: str, tmp_path: Path) -> None:
    """--server hijack: the pilot, decoder and critic are server state; the critic trains in every client's round
    and is averaged, so the checkpoint must carry it and the resumed rounds must draw the same critic batches. The
    resumed run ends with the same device, head and server models as the uninterrupted one."""
    args = ["--clients", "3", "--rounds", "3", "--limit-per-client", "40", "--skip-attack", "--noise", "0.5"]
    args += ["--server", "hijack", "--hijack-epochs", "1"]
    whole, out = _resume_equals_whole(args, tmp_path)
    a, b = (torch.load(d / "model.pt", weights_only=True)["server"] for d in (whole, out))
    assert {key.split(".")[0] for key in a} == {"pilot", "decoder", "critic"} and a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(b[key], value), f"server.{key}"


@pytest.mark.slow
def test_max_epsilon_caps_every_client_and_stops(ray_cluster: str, tmp_path: Path) -> None:
    # 2 steps per round: epsilon 14.25 after one round, 20.78 after two, 25.88 after three; so each client trains
    # twice. Seed 0 samples {1,2} {0,1} {1,2} {0,2} {1,2} {0,1}: all three have been refused by round 6.
    cap = 21.0
    out = tmp_path / "capped"
    args = ["--clients", "3", "--rounds", "8", "--fraction-train", "0.67", "--max-epsilon", str(cap), *TINY]
    done = _sim(*args, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    ledger = _rows(out / "ledger.csv")
    assert max(float(r["epsilon"]) for r in ledger) <= cap
    status = {(int(r["round"]), int(r["partition_id"])): r["status"] for r in ledger}
    assert status[(3, 1)] == "over-budget" and status[(3, 2)] == "trained"  # the others go on
    trained = defaultdict(int)
    for row in ledger:
        if row["status"] == "trained":
            trained[row["partition_id"]] += 1
        else:
            assert row["status"] == "over-budget" and int(row["steps_round"]) == 0
            assert int(row["steps_total"]) == 4  # refused exactly when a third round would pass the cap
    assert dict(trained) == {"0": 2, "1": 2, "2": 2}
    assert [int(r["round"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3, 4, 5, 6]
    said = _flat(done.stdout)
    assert "stopped after round 6 of 8: no client can train another round without passing --max-epsilon 21" in said
    assert "round 3: client 1 not trained: 2 more steps would take epsilon past --max-epsilon 21" in said
    assert (out / "model.pt").exists() and not (out / "INCOMPLETE").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "says"),
    [("raise", "injected crash in client 1, round 2"), ("exit", "worker process has died")],
    ids=["exception", "worker-killed"],
)
def test_client_crash_ends_the_run_with_its_message(ray_cluster: str, mode: str, says: str, tmp_path: Path) -> None:
    out = tmp_path / "crashed"
    env = {"SPLITFED_INJECT_CRASH": f"{mode}:1:2"}  # client 1, round 2 (clients/fault_injection.py)
    done = _sim("--clients", "2", "--rounds", "3", *TINY, "--out", str(out), env=env)
    assert done.returncode == 1
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: training failed: client 1 failed during training in round 2: ")
    assert says in last
    assert (out / "INCOMPLETE").exists() and says in (out / "INCOMPLETE").read_text()
    assert {r["round"] for r in _rows(out / "ledger.csv")} == {"1"}  # nothing of the failed round is recorded
