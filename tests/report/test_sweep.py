"""report/sweep.py: leakage per epsilon from two fabricated runs (no training, no attack): CSV rows, report.md, PNG."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from runs import make_run

from data.base import ImageSet
from report.sweep import COLUMNS, write_report

SETS = ("unseen", "seen", "client_0_inference", "clients_inference", "clients_train")
REPORTED = ("clients_inference", "clients_train", "unseen")  # what the report keeps, in its (sorted) order


def metrics(run: int, method: str, set_name: str) -> dict:
    """Distinct, recognisable numbers per (run, method, set): mse 0.0RMS, ssim 0.RMS (R run, M method, S set)."""
    code = run * 100 + ("seed", "up", "baseline").index(method) * 10 + SETS.index(set_name)
    return {
        "n": 10,
        "mse": code / 10_000,
        "psnr": 10 * math.log10(10_000 / code),
        "ssim": code / 1_000,
        "reid_top1": 0.5,
        "reid_chance": 0.1,
        **{f"{k}_{end}": v for k, v in (("mse", code / 10_000), ("ssim", code / 1_000)) for end in ("lo", "hi")},
        "reid_top1_lo": 0.4,
        "reid_top1_hi": 0.6,
        "reid_top5": 0.7,
    }


def write_attack_outputs(run_dir: Path, run: int) -> None:
    """leakage.json for every set and method, and attack.json naming the attacks."""
    leakage = {s: {m: metrics(run, m, s) for m in ("seed", "up", "baseline")} for s in SETS}
    for s in SETS:  # the attack with the most re-identification there (both tie: the last, as the attack picks)
        leakage[s]["best"] = {**leakage[s]["up"], "attack": "up"}
    (run_dir / "leakage.json").write_text(json.dumps(leakage))
    (run_dir / "attack.json").write_text(json.dumps({"attacks": ["seed", "up"], "epochs": 1}))


@pytest.fixture
def runs(tmp_path: Path, evaluation: ImageSet) -> list[Path]:
    """Run 1: noise 0.5, final epsilons 2 and 4 (median 3); run 2: noise 0, epsilon inf for both clients."""
    dp = make_run(tmp_path / "sweep" / "s0.5", evaluation, noise=0.5, epsilons=(2.0, 4.0))
    plain = make_run(tmp_path / "sweep" / "s0", evaluation, noise=0.0, epsilons=(math.inf, math.inf))
    write_attack_outputs(dp, 1)
    write_attack_outputs(plain, 2)
    for name in ("reconstructions_unseen.png", "reconstructions_client_10.png", "reconstructions_client_2.png"):
        (dp / name).write_bytes(b"\x89PNG fake")
    return [dp, plain]


def test_report_rows_markdown_and_figure(runs: list[Path]) -> None:
    out = runs[0].parent
    report = write_report(out, runs)
    assert report == out / "report.md"

    with (out / "leakage_vs_epsilon.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    # Sorted by attack, then set, then noise from none (epsilon inf) to the most.
    order = [(r["attack"], r["set"], r["noise"]) for r in rows]
    assert order == [(a, s, n) for a in ("best", "seed", "up") for s in REPORTED for n in ("0.0", "0.5")]
    assert rows[order.index(("best", "unseen", "0.5"))]["ssim"] == rows[order.index(("up", "unseen", "0.5"))]["ssim"]
    dp_up_unseen = rows[order.index(("up", "unseen", "0.5"))]
    expected = metrics(1, "up", "unseen")
    baseline = metrics(1, "baseline", "unseen")
    assert {k: float(dp_up_unseen[k]) for k in ("epsilon_median", "epsilon_min", "epsilon_max", "val_acc")} == {
        "epsilon_median": 3.0,
        "epsilon_min": 2.0,
        "epsilon_max": 4.0,
        "val_acc": 0.25,
    }
    assert (dp_up_unseen["accountant"], float(dp_up_unseen["delta"]), dp_up_unseen["run_dir"]) == (
        "rdp",
        1e-5,
        str(runs[0]),
    )
    assert {k: float(dp_up_unseen[k]) for k in ("mse", "psnr", "ssim", "reid_top1", "reid_chance")} == {
        k: expected[k] for k in ("mse", "psnr", "ssim", "reid_top1", "reid_chance")
    }
    assert (float(dp_up_unseen["baseline_mse"]), float(dp_up_unseen["baseline_ssim"])) == (
        baseline["mse"],
        baseline["ssim"],
    )
    plain = rows[order.index(("seed", "clients_train", "0.0"))]
    assert math.isinf(float(plain["epsilon_median"]))
    assert float(plain["ssim"]) == metrics(2, "seed", "clients_train")["ssim"]

    text = report.read_text()
    # One table row per CSV row, with the numbers rounded for reading.
    assert "| 0.5 | 3.00 | 0.250 | up | unseen | 0.0110 | 19.59 | 0.110 | 0.500 | 0.0120 | 0.120 |" in text
    assert "| 0 | inf | 0.250 | seed | clients_train | 0.0204 | 16.90 | 0.204 | 0.500 | 0.0224 | 0.224 |" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + len(rows)  # header + rows
    assert "## Run `s0.5`" in text and "## Run `s0`" in text
    # Only figures that exist are linked; clients in numeric order (2 before 10).
    assert "![reconstructions_unseen.png](s0.5/reconstructions_unseen.png)" in text
    assert "s0/reconstructions_unseen.png" not in text and "epsilon_per_round.png" not in text
    links = "[client_2](s0.5/reconstructions_client_2.png), [client_10](s0.5/reconstructions_client_10.png)"
    assert f"Reconstructions per client: {links}" in text
    assert "Tables: [ledger.csv](s0/ledger.csv), [metrics.csv](s0/metrics.csv), [leakage.json](s0/leakage.json)" in text
    assert (out / "leakage_vs_epsilon.png").read_bytes()[:4] == b"\x89PNG"
