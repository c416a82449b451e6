"""``--server hijack`` end to end: a real federated run whose server sends the critic's gradient down the cut, then
the attack. Beside the shared sweep's honest σ 0.5 run of the same settings, its ledger is the same: the client's
DP-SGD does not depend on the server's honesty."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from runs import SIM_SMALL, sim

from core.rundir import RunDir


def _ledger(path: Path) -> list[dict]:
    """The ledger's rows without the Flower node ids (new every run)."""
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k != "client"} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_a_hijack_run_keeps_the_honest_ledger_and_scores_its_decoder(tiny_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "hijack"
    args = ["--clients", "3", "--rounds", "2", "--limit-per-client", "64", "--noise", "0.5", "--audit", "30"]
    args += ["--server", "hijack", "--hijack-epochs", "1", "--attack-epochs", "1", "--whitebox-images", "8"]
    done = sim(*args, "--out", str(out), script=SIM_SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hijack pilot warm start" in done.stdout or "(cached)" in done.stdout
    assert _ledger(out / "ledger.csv") == _ledger(tiny_sweep / "s0.5" / "ledger.csv")
    run = RunDir(out)
    leakage = json.loads(run.leakage.read_text())
    for name in ("unseen", "clients_inference", "clients_train"):
        assert leakage[name]["hijack"]["n"] > 0 and 0 <= leakage[name]["hijack"]["reid_top1"] <= 1
    ceiling = json.loads(run.attack.read_text())["ceiling_unseen"]["hijack_pilot"]
    assert ceiling["n"] == leakage["unseen"]["hijack"]["n"] == 106
    saved = torch.load(run.model, weights_only=True)
    assert {k.split(".")[0] for k in saved["server"]} == {"pilot", "decoder", "critic"}
    page = run.report_html.read_text()
    assert "The hijacking server" in page and "does not depend on the server&#x27;s honesty" in page
