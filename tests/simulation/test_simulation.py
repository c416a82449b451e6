"""End-to-end: sim.py trains 3 clients for 2 rounds in the Flower simulation, attacks, writes a complete run."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from attack.run import CSV_KEYS
from core.privacy import epsilon

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "e2e"
    cmd = [sys.executable, "sim.py", "--clients", "3", "--rounds", "2", "--limit-per-client", "64", "--out", str(out)]
    cmd += ["--attack-epochs", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained: 2 rounds" in done.stdout
    return out


@pytest.mark.slow
def test_run_directory_is_complete(run_dir):
    for name in ("ledger.csv", "metrics.csv", "client_metrics.csv", "config.json", "model.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    for name in ("epsilon_per_round.png", "accuracy_per_round.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((run_dir / "config.json").read_text())["settings"]
    assert settings["clients"] == 3 and settings["noise"] == 0.5
    model = torch.load(run_dir / "model.pt", weights_only=False)
    assert set(model) == {"device", "head"}  # the settings are in config.json only


@pytest.mark.slow
def test_ledger_is_complete_and_composed(run_dir):
    ledger = _rows(run_dir / "ledger.csv")
    assert len(ledger) == 3 * 2
    assert {(int(r["round"]), int(r["partition_id"])) for r in ledger} == {(r, p) for r in (1, 2) for p in range(3)}
    by_client = defaultdict(list)
    for row in ledger:
        by_client[int(row["partition_id"])].append(row)
    for rows in by_client.values():
        rows.sort(key=lambda r: int(r["round"]))
        eps = [float(r["epsilon"]) for r in rows]
        assert all(math.isfinite(e) and e > 0 for e in eps)
        assert eps == sorted(eps) and eps[1] > eps[0]
        last = rows[-1]
        assert int(last["steps_total"]) == sum(int(r["steps_round"]) for r in rows)
        one_shot = epsilon([(0.5, float(last["sample_rate"]), int(last["steps_total"]))], 1e-5, "rdp")
        assert float(last["epsilon"]) == pytest.approx(one_shot, rel=1e-9)
    metrics = _rows(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in metrics] == [1, 2]
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in metrics)


SETS = ["unseen", "seen", "clients_inference", "clients_train"]
SETS += [f"client_{k}_{point}" for k in range(3) for point in ("inference", "train")]
KEYS = set(CSV_KEYS)


@pytest.mark.slow
def test_attack_writes_every_set_and_key(run_dir):
    leakage = json.loads((run_dir / "leakage.json").read_text())
    assert set(leakage) == set(SETS)
    for set_name, methods in leakage.items():
        attacks = {"seed", "cond"} | ({"whitebox"} if set_name != "seen" else set())  # white-box skips `seen`
        assert set(methods) == attacks | {"baseline", "best"}  # the default attacks
        for name, metrics in methods.items():
            assert set(metrics) == (KEYS | {"attack"} if name == "best" else KEYS)
            assert metrics["reid_top1_lo"] <= metrics["reid_top1"] <= metrics["reid_top1_hi"]
        assert methods["best"]["attack"] in attacks
    assert leakage["unseen"]["seed"]["n"] == 2120 and leakage["seen"]["seed"]["n"] == 1000
    assert leakage["unseen"]["whitebox"]["n"] == 64  # the expensive attack scores a sample ...
    assert leakage["unseen"]["whitebox"]["pool"] == 2120  # ... each ranked among every unseen image
    assert leakage["client_0_inference"]["cond"]["n"] == 64  # every image of the client (train + validation)
    assert leakage["unseen"]["baseline"]["reid_chance"] == pytest.approx(1 / 2120)
    with np.load(run_dir / "reconstructions_unseen.npz") as z:
        assert z["originals"].shape == z["reconstructions_seed"].shape == (100, 1, 105, 105)
        assert z["originals"].dtype == np.uint8 and len(z["files"]) == len(z["rows"]) == 100
        assert len(z["rows_whitebox"]) == len(z["reconstructions_whitebox"]) <= 64
    for k in range(3):
        assert (run_dir / f"reconstructions_client_{k}.png").read_bytes()[:4] == b"\x89PNG"
    report = (run_dir / "report.md").read_text()
    assert "leakage_vs_epsilon.png" in report and "reconstructions_client_2.png" in report


@pytest.mark.slow
def test_attack_reruns_alone(run_dir):
    cmd = [sys.executable, "-m", "attack", str(run_dir), "--attack-epochs", "1", "--decoders", "seed"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    leakage = json.loads((run_dir / "leakage.json").read_text())
    assert set(leakage["unseen"]) == {"seed", "baseline", "best"}


@pytest.mark.slow
def test_noise_sweep_reports_leakage_per_epsilon(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "sim.py", "--clients", "2", "--rounds", "1", "--limit-per-client", "32", "--out", str(out)]
    cmd += ["--noise", "0", "0.8", "--attack-epochs", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out / "leakage_vs_epsilon.csv")
    noises = {float(r["noise"]): float(r["epsilon_median"]) for r in rows}
    assert set(noises) == {0.0, 0.8}
    assert math.isinf(noises[0.0]) and math.isfinite(noises[0.8])
    assert {r["set"] for r in rows} == {"unseen", "clients_inference", "clients_train"}
    assert (out / "leakage_vs_epsilon.png").read_bytes()[:4] == b"\x89PNG"
    assert "s0/" in (out / "report.md").read_text() and (out / "s0.8" / "leakage.json").exists()


@pytest.mark.slow
def test_overwrite_leaves_no_stale_file(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "reconstructions_client_9.png").write_bytes(b"an earlier run's")
    (out / "s0.5").mkdir()
    cmd = [sys.executable, "sim.py", "--clients", "2", "--rounds", "1", "--limit-per-client", "16", "--skip-attack"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "reconstructions_client_9.png").exists() and not (out / "s0.5").exists()
    assert json.loads((out / "config.json").read_text())["settings"]["clients"] == 2
