"""End-to-end: sim.py trains 3 clients for 2 rounds in the Flower simulation (the shared ``tiny_sweep``), attacks,
writes complete runs and the sweep's report."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import every_20th, rows, sim

from attack.run import CSV_KEYS
from core.privacy import epsilon
from sim import main as sim_main


@pytest.fixture(scope="module")
def run_dir(tiny_sweep: Path) -> Path:
    """The sweep's DP run (sigma 0.5): 3 clients, 2 rounds, attacked."""
    return tiny_sweep / "s0.5"


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
    ledger = rows(run_dir / "ledger.csv")
    assert len(ledger) == 3 * 2
    assert {(int(r["round"]), int(r["partition_id"])) for r in ledger} == {(r, p) for r in (1, 2) for p in range(3)}
    by_client = defaultdict(list)
    for row in ledger:
        by_client[int(row["partition_id"])].append(row)
    for history in by_client.values():
        history.sort(key=lambda r: int(r["round"]))
        eps = [float(r["epsilon"]) for r in history]
        assert all(math.isfinite(e) and e > 0 for e in eps)
        assert eps == sorted(eps) and eps[1] > eps[0]
        last = history[-1]
        assert int(last["steps_total"]) == sum(int(r["steps_round"]) for r in history)
        one_shot = epsilon([(0.5, float(last["sample_rate"]), int(last["steps_total"]))], 1e-5, "rdp")
        assert float(last["epsilon"]) == pytest.approx(one_shot, rel=1e-9)
    metrics = rows(run_dir / "metrics.csv")
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
    # every 20th image of small2 (tiny_sweep, as in test_attack_reruns_alone): 50 of its 156 are small1's (seen)
    assert leakage["unseen"]["seed"]["n"] == 156 - 50 and leakage["seen"]["seed"]["n"] == 50
    assert leakage["unseen"]["whitebox"]["n"] == 8  # the expensive attack scores a sample (--whitebox-images) ...
    assert leakage["unseen"]["whitebox"]["pool"] == 156 - 50  # ... each ranked among every unseen image
    assert leakage["client_0_inference"]["cond"]["n"] == 64  # every image of the client (train + validation)
    assert leakage["unseen"]["baseline"]["reid_chance"] == pytest.approx(1 / (156 - 50))
    with np.load(run_dir / "reconstructions_unseen.npz") as z:
        assert z["originals"].shape == z["reconstructions_seed"].shape == (100, 1, 105, 105)
        assert z["originals"].dtype == np.uint8 and len(z["files"]) == len(z["rows"]) == 100
        assert len(z["rows_whitebox"]) == len(z["reconstructions_whitebox"]) <= 8
    for k in range(3):
        assert (run_dir / f"reconstructions_client_{k}.png").read_bytes()[:4] == b"\x89PNG"
    report = (run_dir.parent / "report.md").read_text()
    assert "leakage_vs_epsilon.png" in report and "s0.5/reconstructions_client_2.png" in report


@pytest.mark.slow
def test_attack_reruns_alone(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``sim.py attack`` on a copy of the finished run, other attacks, in this process with small2 and small1 cut
    to every 20th image (so a whole attack takes seconds): leakage.json is rewritten for the attacks asked for."""
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    monkeypatch.setattr("data.omniglot.load_set", every_20th)
    assert sim_main(["attack", str(again), "--attack-epochs", "1", "--attacks", "seed"]) == 0
    leakage = json.loads((again / "leakage.json").read_text())
    assert set(leakage["unseen"]) == {"seed", "baseline", "best"}
    assert leakage["unseen"]["seed"]["n"] == 156 - 50  # every 20th image of small2, less those of small1's slice
    assert "report: " in capsys.readouterr().out


@pytest.mark.slow
def test_noise_sweep_reports_leakage_per_epsilon(tiny_sweep: Path) -> None:
    table = rows(tiny_sweep / "leakage_vs_epsilon.csv")
    noises = {float(r["noise"]): float(r["epsilon_median"]) for r in table}
    assert set(noises) == {0.0, 0.5}
    assert math.isinf(noises[0.0]) and math.isfinite(noises[0.5])
    assert {r["set"] for r in table} == {"unseen", "clients_inference", "clients_train"}
    assert (tiny_sweep / "leakage_vs_epsilon.png").read_bytes()[:4] == b"\x89PNG"
    assert "s0/" in (tiny_sweep / "report.md").read_text() and (tiny_sweep / "s0" / "leakage.json").exists()
    # A sweep's report.html is the study's page, each run a point of the DP-SGD curve.
    assert "Leakage against epsilon (DP-SGD)" in (tiny_sweep / "report.html").read_text()


@pytest.mark.slow
def test_overwrite_leaves_no_stale_file(ray_cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "reconstructions_client_9.png").write_bytes(b"an earlier run's")
    (out / "s0.5").mkdir()
    done = sim(
        "--clients", "2", "--rounds", "1", "--limit-per-client", "16", "--skip-attack", "--out", str(out), "--overwrite"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "reconstructions_client_9.png").exists() and not (out / "s0.5").exists()
    assert json.loads((out / "config.json").read_text())["settings"]["clients"] == 2
