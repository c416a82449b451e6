"""The study (study/grid.py, ``sim.py study``) and its report (report/study_*.py, report/headline.py), the page
opened in headless Chromium."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import math
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from runs import IMAGES_DECODED, SIM_SMALL, every_20th, flat, make_run, rendered_dom

from core.config import RunConfig
from core.defenses import FAMILIES
from core.errors import UserError
from core.rundir import RunDir
from data.base import ImageSet
from report import study_figures
from report.headline import controlled, headline
from report.study_csv import write_csv
from report.study_figures import DATA_FIGURE, plot_data_per_client, plot_epsilon, plot_headline
from report.study_page import central_accuracy, covers, write_study_report
from report.study_stats import StudyCell, curves, paired, read_point, summarise
from sim import main as sim_main
from study.grid import Cell, default_grid, matching, read_grid, seed_runs, shard_of
from study.runner import cell_state

ROOT = Path(__file__).resolve().parents[2]
SETS = ("unseen", "seen", "clients_inference", "clients_train")


def _row(reid: float, ssim: float) -> dict:
    return {
        "n": 100, "pool": 100, "mse": 0.05, "psnr": 13.0, "ssim": ssim, "ssim_lo": ssim - 0.01, "ssim_hi": ssim + 0.01,
        "reid_top1": reid, "reid_top1_lo": max(0.0, reid - 0.02), "reid_top1_hi": reid + 0.02, "reid_top5": reid,
        "reid_chance": 0.01,
    }  # fmt: skip


def _fake_cell(
    run_dir: Path, evaluation: ImageSet, val_acc: float, reid: float, hijack: float | None = None, **settings
) -> Path:
    """A finished cell without training: make_run's files, then val acc, leakage and real PNG reconstructions;
    ``hijack``: the hijack decoder's re-id (a row of its own; its pilot's ceiling 0.45)."""
    make_run(run_dir, evaluation, **settings)
    (run_dir / "metrics.csv").write_text(f"round,val_loss,val_acc\n1,3.0,0.05\n2,2.5,{val_acc}\n")
    leakage = {s: {"seed": _row(reid, 0.6), "cond": _row(reid / 2, 0.7), "baseline": _row(0.01, 0.65)} for s in SETS}
    for methods in leakage.values():
        methods["best"] = {**methods["seed"], "attack": "seed"}
        methods |= {"hijack": _row(hijack, 0.5)} if hijack is not None else {}
    (run_dir / "leakage.json").write_text(json.dumps(leakage))
    ceiling = {"activation_nn_reid_top1": 1.0} | ({"hijack_pilot": _row(0.45, 0.6)} if hijack is not None else {})
    (run_dir / "attack.json").write_text(json.dumps({"attacks": ["seed", "cond"], "ceiling_unseen": ceiling}))
    for name in ("reconstructions_unseen.png", "reconstructions_client_0.png", "reconstructions_client_1.png"):
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.imshow(np.random.default_rng(0).random((8, 16)))
        fig.savefig(run_dir / name)
        plt.close(fig)
    return run_dir


@pytest.fixture
def study(tmp_path: Path, evaluation: ImageSet) -> tuple[Path, list[Cell], dict[str, RunConfig]]:
    cells = [
        Cell("plain", "dp", {"noise": 0.0}),
        Cell("eps8", "dp", {"target_epsilon": 8.0}),
        Cell("noisy", "cut-noise", {"noise": 0.0, "cut_clip": 6.0, "cut_noise": 0.1}),
        Cell("nopeek", "nopeek", {"noise": 0.0, "nopeek": 3.0}),
    ]
    numbers = {"plain": (0.45, 0.30, (math.inf,) * 2), "eps8": (0.30, 0.05, (7.0, 9.0))}
    numbers |= {"noisy": (0.44, 0.04, (math.inf,) * 2), "nopeek": (0.20, 0.01, (math.inf,) * 2)}
    out = tmp_path / "study"
    configs = {}
    for cell in cells:
        val_acc, reid, eps = numbers[cell.name]
        noise = 0.5 if cell.name == "eps8" else 0.0
        extra = {k: v for k, v in cell.settings.items() if k in ("cut_clip", "cut_noise", "nopeek")}
        _fake_cell(out / cell.name, evaluation, val_acc, reid, noise=noise, epsilons=eps, **extra)
        configs[cell.name] = cell.config(RunConfig(clients=2, rounds=2), out)  # make_run's settings
    return out, cells, configs


def test_headline_is_computed_from_the_cells(study) -> None:
    out, cells, _ = study
    points = [read_point(c.for_report(), out / c.name) for c in cells]
    sentence = headline(points)
    assert sentence.startswith("At cut 4, going from epsilon inf to epsilon 8 moves the best attack's re-id")
    assert "from 0.300 [0.280, 0.320] to 0.050 [0.030, 0.070] at an accuracy cost of +0.150" in sentence
    # The weakest cut-noise strength at or below eps 8's upper bound (0.070): 0.04, costing 0.01 of accuracy.
    assert "noise on clipped activations (noise 0.1) reaches 0.040 [0.020, 0.060] at an accuracy cost of +0.010" in (
        sentence
    )
    assert "NoPeek (NoPeek 3) reaches 0.010 [0.000, 0.030] at an accuracy cost of +0.250" in sentence


def test_a_control_is_a_point_of_its_own_and_the_strongest_epsilon_joins_the_headline(
    study, evaluation: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, cells, _ = study
    extra = [Cell("eps1", "dp", {"target_epsilon": 1.0}), Cell("frozen", "control", {"noise": 0.0, "lr": 1e-12})]
    _fake_cell(out / "eps1", evaluation, 0.28, 0.04, noise=2.0, epsilons=(0.9, 1.0))
    _fake_cell(out / "frozen", evaluation, 0.25, 0.02, noise=0.0, epsilons=(math.inf,) * 2, lr=1e-12)
    cells = cells + extra
    points = [read_point(c.for_report(), out / c.name) for c in cells]
    assert all(p.cell.family != "control" for series in curves(points).values() for p in series)
    assert [p.cell.name for p in curves(points)[("dp", 4)]] == ["plain", "eps8", "eps1"]
    sentence = headline(points)
    assert "At epsilon 0.95 (cut 4) re-id is 0.040 [0.020, 0.060] at val acc 0.280." in sentence
    assert sentence.endswith("Control frozen (cut 4): re-id 0.020 [0.000, 0.040] at val acc 0.250.")
    # Without the no-defense cell each point stands alone, by its own name: no sigma-0 point is called "eps inf".
    alone = headline([p for p in points if p.cell.name != "plain"])
    assert "eps inf" not in alone and alone.count("Control frozen") == 1
    assert "At cut 4 and eps 8 (sigma 0.5) the best attack re-identifies 0.050 [0.030, 0.070] of unseen" in alone
    assert "At cut 4 and NoPeek (NoPeek 3) the best attack re-identifies 0.010 [0.000, 0.030]" in alone
    assert "At epsilon 0.95 (cut 4) re-id is 0.040 [0.020, 0.060] at val acc 0.280." in alone
    assert alone.endswith("Control frozen (cut 4): re-id 0.020 [0.000, 0.040] at val acc 0.250.")
    assert Cell("frozen", "control", {}).label == "frozen"
    saved = []
    monkeypatch.setattr(study_figures, "_save", lambda fig, path: saved.append(fig))
    plot_headline(points, tmp_path / "headline.png")
    legend = saved[0].axes[0].get_legend_handles_labels()[1]
    assert "control: frozen, cut 4" in legend and "DP-SGD (epsilon sweep), cut 4" in legend


def test_the_pretrained_arm_is_a_dp_curve_of_its_own(
    study, evaluation: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dp-public cells form their own curve, ordered by epsilon from inf down, drawn against epsilon beside DP-SGD from
    scratch, with a sentence of their own in the headline; the no-defense cell stays the scratch one."""
    out, cells, _ = study
    extra = [
        Cell("pre-eps8", "dp-public", {"target_epsilon": 8.0, "pretrain": "public"}),
        Cell("pre-plain", "dp-public", {"noise": 0.0, "pretrain": "public"}),
    ]
    _fake_cell(out / "pre-eps8", evaluation, 0.58, 0.06, noise=0.8, epsilons=(7.5, 8.0))
    _fake_cell(out / "pre-plain", evaluation, 0.66, 0.20, noise=0.0, epsilons=(math.inf,) * 2)
    points = [read_point(c.for_report(), out / c.name) for c in cells + extra]
    assert [p.cell.name for p in curves(points)[("dp-public", 4)]] == ["pre-plain", "pre-eps8"]
    assert curves(points)[("cut-noise", 4)][0].cell.name == "plain"  # a defense's curve starts from scratch's plain
    sentence = headline(points)
    assert sentence.startswith("At cut 4, going from epsilon inf to epsilon 8 moves the best attack's re-id on unseen")
    assert (
        "From the publicly pretrained device (cut 4): eps inf: val acc 0.660, re-id 0.200 [0.180, 0.220]; "
        "eps 7.75: val acc 0.580, re-id 0.060 [0.040, 0.080]." in sentence
    )
    saved = []
    monkeypatch.setattr(study_figures, "_save", lambda fig, path: saved.append(fig))
    plot_epsilon(points, tmp_path / "epsilon.png")
    labels = saved[0].axes[2].get_legend_handles_labels()[1]
    assert labels == ["DP-SGD (epsilon sweep), cut 4", "DP-SGD from public pretraining, cut 4"]
    assert "DP-SGD from public pretraining: the same (epsilon, delta)" in covers(["dp", "dp-public"])


T_975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (3 runs)


def test_seeds_are_summarised_across_runs_and_compared_paired_by_seed(
    evaluation: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three training runs a cell: means with t-intervals across runs, per-seed and summary rows in study.csv, the
    headline's comparisons paired by seed: separated -> a signed difference, overlapping -> "not distinguishable";
    the figure draws both axes' intervals and every run faintly."""
    cells = [
        Cell("plain", "dp", {"noise": 0.0}),
        Cell("eps8", "dp", {"target_epsilon": 8.0}),
        Cell("noisy", "cut-noise", {"noise": 0.0, "cut_clip": 6.0, "cut_noise": 0.1}),
        Cell("frozen", "control", {"noise": 0.0, "lr": 1e-12}),
    ]
    # (val acc, re-id) per seed: eps8 loses re-id against plain at every seed (separated); noisy's accuracy cost
    # changes sign from seed to seed (overlapping), as does eps8's re-id against the frozen control.
    numbers = {
        "plain": [(0.45, 0.30), (0.47, 0.32), (0.46, 0.31)],
        "eps8": [(0.30, 0.05), (0.33, 0.06), (0.31, 0.04)],
        "noisy": [(0.44, 0.04), (0.48, 0.04), (0.45, 0.04)],
        "frozen": [(0.25, 0.05), (0.26, 0.04), (0.24, 0.06)],
    }
    out = tmp_path / "study"
    runs = seed_runs(cells, 3)
    assert [r.name for r in runs[:5]] == ["plain", "eps8", "noisy", "frozen", "plain.seed1"]
    base = RunConfig(clients=2, rounds=2)
    configs = {}
    for run in runs:
        val_acc, reid = numbers[run.cell.name][run.k]
        noise = 0.5 if run.cell.name == "eps8" else 0.0
        extra = {k: v for k, v in run.cell.settings.items() if k in ("cut_clip", "cut_noise", "lr")}
        eps = (7.0, 9.0) if noise else (math.inf,) * 2
        seed = {"train_seed": run.k} if run.k else {}
        _fake_cell(out / run.name, evaluation, val_acc, reid, noise=noise, epsilons=eps, **extra, **seed)
        configs[run.name] = run.config(base, out)
        assert configs[run.name].training_seed == run.k and configs[run.name].seed == 0  # same shards
    points = {}
    for cell in cells:
        series = [read_point(cell.for_report(), out / r.name) for r in runs if r.cell is cell]
        points[cell.name] = summarise(series)
    plain = points["plain"]
    half = T_975_2 * 0.01 / math.sqrt(3)  # plain's val accs 0.45, 0.47, 0.46: sd 0.01
    assert plain.n_runs == 3 and plain.val_acc == pytest.approx(0.46)
    assert (plain.val_acc_lo, plain.val_acc_hi) == pytest.approx((0.46 - half, 0.46 + half))
    assert plain.reid()["reid_top1"] == pytest.approx(0.31) and plain.reid()["reid_top1_hi"] == pytest.approx(
        0.31 + half
    )
    drop = paired(points["eps8"], plain, lambda p: p.reid()["reid_top1"])  # -0.25, -0.26, -0.27
    assert drop.distinguishable and drop.mean == pytest.approx(-0.26) and drop.hi == pytest.approx(-0.26 + half)
    cost = paired(points["noisy"], plain, lambda p: p.val_acc)  # -0.01, +0.01, -0.01
    assert not cost.distinguishable and cost.lo < 0 < cost.hi
    assert paired(points["eps8"], plain, lambda p: p.val_acc).text("val acc").startswith("val acc -0.147 [")
    assert cost.text("val acc").startswith("val acc not distinguishable (-0.003 [")
    sentence = headline(list(points.values()))
    assert sentence.startswith("Over 3 training runs per cell (means with 95 % t-intervals across runs;")
    assert "(against eps inf, paired over 3 seeds: re-id -0.260 [" in sentence
    assert "at an accuracy cost of +0.003 (against no defense, paired over 3 seeds: re-id -0.270 [" in sentence
    assert "val acc not distinguishable (-0.003 [" in sentence
    control = sentence[sentence.index("Control frozen (cut 4)") :]
    assert "eps 8 from the same start (against frozen, paired over 3 seeds: re-id not distinguishable (+0.000 [" in (
        control
    )
    eps1 = dataclasses.replace(points["eps8"], cell=StudyCell("eps1", "dp", {}), epsilon_median=1.0)
    control = headline([*points.values(), eps1])
    control = control[control.index("Control frozen (cut 4)") :]
    assert control.index("; eps 8 from the same start (against frozen") < control.index("; eps 1 from the same start")
    cut2 = dataclasses.replace(points["plain"], cell=StudyCell("cut2", "dp", {"noise": 0.0, "cut": 2}), cut=2)
    moved = headline([*points.values(), cut2])
    moved = moved[moved.index("Moving the cut from block 4 to block 2") :]
    assert "with val acc 0.460 and 0.460 (against cut 4, paired over 3 seeds: re-id not distinguishable (" in moved
    saved = []
    monkeypatch.setattr(study_figures, "_save", lambda fig, path: saved.append(fig))
    plot_headline(list(points.values()), tmp_path / "headline.png")
    ax = saved[0].axes[0]
    faint = [c for c in ax.collections if c.get_alpha() == 0.25]
    assert sum(len(c.get_offsets()) for c in faint) == 3 * (2 + 2 + 1)  # dp: plain, eps8; cut-noise: plain, noisy
    assert all(bars.has_xerr and bars.has_yerr for bars in ax.containers)
    assert "t-intervals across 3 training runs" in saved[0]._suptitle.get_text()
    write_csv(list(points.values()), tmp_path / "study.csv")
    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert len(rows) == 4 * 3 * 3 + 4 * 3
    unseen = {(r["cell"], r["seed"]): r for r in rows if r["set"] == "unseen"}
    assert float(unseen[("eps8", "1")]["reid_top1"]) == 0.06 and unseen[("eps8", "1")]["runs"] == "1"
    summary = unseen[("plain", "all")]
    assert summary["runs"] == "3" and float(summary["val_acc_lo"]) == pytest.approx(0.46 - half)


def test_the_hijack_family_is_read_by_its_own_decoder_against_eps_inf_and_its_frozen_device(
    evaluation: ImageSet, tmp_path: Path
) -> None:
    """Cells under --server hijack: their sentence gives the hijack decoder's re-id (not the best attack's) beside
    its ceiling, each epsilon paired by seed against the hijack's eps inf and its frozen device; the frozen device
    under the hijack is that family's control, the honest frozen device stays DP-SGD's."""
    hijack = {"server": "hijack"}
    cells = [
        Cell("plain", "dp", {"noise": 0.0}),
        Cell("eps8", "dp", {"target_epsilon": 8.0}),
        Cell("frozen", "control", {"noise": 0.0, "freeze_blocks": 4}),
        Cell("h-plain", "hijack", {"noise": 0.0, **hijack}),
        Cell("h-eps8", "hijack", {"target_epsilon": 8.0, **hijack}),
        Cell("h-frozen", "control", {"noise": 0.0, "freeze_blocks": 4, **hijack}),
    ]
    # (val acc, best re-id, hijack re-id) per seed: under the hijack, eps 8 leaks 0.1 less than eps inf at every seed
    # and 0.2 more than the frozen device.
    numbers = {
        "plain": [(0.45, 0.30, None)] * 3,
        "eps8": [(0.30, 0.05, None)] * 3,
        "frozen": [(0.25, 0.05, None)] * 3,
        "h-plain": [(0.40, 0.9, 0.30), (0.41, 0.9, 0.32), (0.42, 0.9, 0.31)],
        "h-eps8": [(0.30, 0.9, 0.20), (0.31, 0.9, 0.22), (0.32, 0.9, 0.21)],
        "h-frozen": [(0.20, 0.9, 0.00), (0.21, 0.9, 0.02), (0.22, 0.9, 0.01)],
    }
    out, runs = tmp_path / "study", seed_runs(cells, 3)
    for run in runs:
        val_acc, reid, hijack_reid = numbers[run.cell.name][run.k]
        noise = 0.5 if "eps8" in run.cell.name else 0.0
        extra = {k: v for k, v in run.cell.settings.items() if k in ("server", "freeze_blocks")}
        eps = (7.0, 9.0) if noise else (math.inf,) * 2
        seed = {"train_seed": run.k} if run.k else {}
        _fake_cell(out / run.name, evaluation, val_acc, reid, hijack_reid, noise=noise, epsilons=eps, **extra, **seed)
    points = [summarise([read_point(c.for_report(), out / r.name) for r in runs if r.cell is c]) for c in cells]
    by_name = {p.cell.name: p for p in points}
    assert [controlled(by_name[n]) for n in ("frozen", "h-frozen")] == ["dp", "hijack"]
    assert by_name["h-eps8"].reid(attack="hijack")["reid_top1"] == pytest.approx(0.21)
    assert by_name["h-eps8"].reid()["reid_top1"] == pytest.approx(0.9) and by_name["h-plain"].ceilings == {
        "hijack": 0.45
    }
    sentence = headline(points)
    hijacked = sentence[sentence.index("Under the hijacking server") :]
    assert hijacked.startswith(
        "Under the hijacking server, its own decoder's re-id (cut 4; the hijack's own ceiling 0.450): eps inf: "
        "val acc 0.410, hijack re-id 0.310 ["
    )
    assert "eps 8: val acc 0.310, hijack re-id 0.210 [" in hijacked
    assert "(against eps inf, paired over 3 seeds: re-id -0.100 [" in hijacked
    assert "(against h-frozen, paired over 3 seeds: re-id +0.200 [" in hijacked
    assert "Control h-frozen (cut 4): hijack re-id 0.010 [" in sentence
    honest = sentence[sentence.index("Control frozen (cut 4)") :]
    assert honest.startswith("Control frozen (cut 4): re-id 0.050 [")
    assert "eps 8 from the same start (against frozen" in honest[: honest.index("Control h-frozen")]
    write_study_report(out, [(r.cell.for_report(), out / r.name) for r in runs])
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].endswith("| hijack re-id (unseen) |")
    assert table[1].endswith("| - |") and table[4].startswith("| h-plain | 3 | hijack |") and "| 0.310 [" in table[4]


def test_the_detector_family_counts_alarms_under_each_server_against_the_same_cell_without_it(
    evaluation: ImageSet, tmp_path: Path
) -> None:
    """Cells with --detect: their sentence counts the client rounds that alarmed (false alarms under the honest
    server) from each run's detector.csv, summed over seeds, with the first alarm's round, and pairs the cell with
    the one of the same settings without the detector; they are no curve of the figure, and the page gains a
    column of alarms."""
    hijack = {"server": "hijack"}
    cells = [
        Cell("plain", "dp", {"noise": 0.0}),
        Cell("h-plain", "hijack", {"noise": 0.0, **hijack}),
        Cell("probe", "detect", {"noise": 0.0, "detect": 0.2}),
        Cell("h-probe", "detect", {"noise": 0.0, "detect": 0.2, **hijack}),
    ]
    numbers = {"plain": 0.45, "h-plain": 0.40, "probe": 0.43, "h-probe": 0.40}
    out, runs = tmp_path / "study", seed_runs(cells, 3)
    for run in runs:
        extra = {k: v for k, v in run.cell.settings.items() if k in ("server", "detect")}
        seed = {"train_seed": run.k} if run.k else {}
        acc = numbers[run.cell.name] + 0.01 * run.k
        run_dir = _fake_cell(
            out / run.name, evaluation, acc, 0.3, 0.2, noise=0.0, epsilons=(math.inf,) * 2, **extra, **seed
        )
        if "detect" in extra:  # 2 clients x 2 rounds; under the hijack both alarm from round 1, honest: seed 2 once
            alarms = [(1, 0, 1), (1, 1, 1), (2, 0, 1), (2, 1, 1)] if "server" in extra else [(1, 0, 0), (1, 1, 0)]
            if "server" not in extra:
                alarms += [(2, 0, 0), (2, 1, int(run.k == 2))]
            rows = ["round,client,partition_id,probes,score,alarm"]
            rows += [f"{r},{9 + c},{c},4,{0.97 if a else 0.02},{a}" for r, c, a in alarms]
            (run_dir / "detector.csv").write_text("\n".join(rows) + "\n")
    points = [summarise([read_point(c.for_report(), out / r.name) for r in runs if r.cell is c]) for c in cells]
    by_name = {p.cell.name: p for p in points}
    assert by_name["plain"].detector is None
    assert by_name["h-probe"].detector == {
        "client_rounds": 12, "alarms": 12, "clients": 6, "clients_alarmed": 6, "first_alarm": 1
    }  # fmt: skip
    assert by_name["probe"].detector["alarms"] == 1 and by_name["probe"].detector["first_alarm"] == 2
    assert set(curves(points)) == {("dp", 4), ("hijack", 4)}
    sentence = headline(points)
    assert (
        "the client's label probe (a hijack detector) (probe 0.2, cut 4) under the hijack server: alarms in 12 of 12 "
        "client rounds, from 6 of 6 clients, the first in round 1 (median), at val acc 0.410 (h-plain without it: "
        "val acc 0.410) (against h-plain, paired over 3 seeds: re-id not distinguishable"
    ) in sentence
    assert (
        "(probe 0.2, cut 4) under the honest server: false alarms in 1 of 12 client rounds, from 1 of 6 clients, the "
        "first in round 2 (median), at val acc 0.440 (plain without it: val acc 0.460) (against plain, paired over "
        "3 seeds: re-id not distinguishable (+0.000 [+0.000, +0.000]), val acc -0.020 ["
    ) in sentence
    write_study_report(out, [(r.cell.for_report(), out / r.name) for r in runs])
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].endswith("| detector alarms (client rounds) |")
    assert table[1].startswith("| plain |") and table[1].endswith("| - |")
    assert table[3].startswith("| probe |") and table[3].endswith("| 1 of 12 |")


def test_a_study_of_client_sizes_draws_accuracy_and_leakage_against_images_per_client(
    evaluation: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same alphabets held by 2 or 20 clients (docs/study-data.toml): each run's images per client is the median
    over its clients of ledger.csv's n_train, a cell's summary its first run's; the page gains a figure against
    them, one line per DP label and one of the controls; a study of one size draws none, and a stale one goes."""
    kinds = (("eps-inf", "dp", {"noise": 0.0}), ("eps8", "dp", {"target_epsilon": 8.0}))
    kinds += (("random-frozen", "control", {"noise": 0.0, "freeze_blocks": 4}),)
    cells = [
        Cell(f"data{n}-{kind}", family, {"clients": n, **settings}) for n in (2, 20) for kind, family, settings in kinds
    ]
    # Each client's training images: 2 clients of 10 alphabets (median 6,000), 20 clients of one (median 590).
    shards = {2: (5800, 6200), 20: tuple(400 + 20 * k for k in range(20))}
    accs = {"eps-inf": (0.60, 0.45), "eps8": (0.40, 0.30), "random-frozen": (0.30, 0.25)}  # (2 clients, 20 clients)
    reids = {"eps-inf": (0.30, 0.20), "eps8": (0.05, 0.05), "random-frozen": (0.04, 0.04)}
    out, runs = tmp_path / "study", seed_runs(cells, 2)
    for run in runs:
        n, kind = run.cell.settings["clients"], run.cell.name.split("-", 1)[1]
        extra = {k: v for k, v in run.cell.settings.items() if k == "freeze_blocks"}
        noise, eps = (0.5, 8.0) if kind == "eps8" else (0.0, math.inf)
        acc, reid = accs[kind][n == 20] + 0.01 * run.k, reids[kind][n == 20]
        seed = {"train_seed": run.k} if run.k else {}
        run_dir = _fake_cell(out / run.name, evaluation, acc, reid, noise=noise, **extra, **seed)
        ledger = ["round,client,partition_id,n_train,epsilon,delta,accountant,status"]
        rows = [(r, c, images) for r in (1, 2) for c, images in enumerate(shards[n])]
        ledger += [f"{r},{100 + c},{c},{images},{eps * r / 2},1e-05,rdp,trained" for r, c, images in rows]
        (run_dir / "ledger.csv").write_text("\n".join(ledger) + "\n")
    assert read_point(cells[0].for_report(), out / "data2-eps-inf.seed1").images_per_client == 6000
    points = [summarise([read_point(c.for_report(), out / r.name) for r in runs if r.cell is c]) for c in cells]
    assert [p.images_per_client for p in points] == [6000] * 3 + [590] * 3
    assert points[1].cell.label == "eps 8" and points[1].epsilon_median == 8.0
    saved = []
    monkeypatch.setattr(study_figures, "_save", lambda fig, path: saved.append(fig))
    assert plot_data_per_client(points, tmp_path / "sizes.png")
    acc_axis, reid_axis = saved[0].axes
    assert reid_axis.get_legend_handles_labels()[1] == ["chance", "eps inf", "eps 8", "frozen control"]
    assert acc_axis.get_xscale() == "log" and [t.get_text() for t in acc_axis.get_xticklabels()] == ["590", "6,000"]
    eps_inf = acc_axis.containers[0]  # its points from fewer images to more, bars across the 2 seeds
    assert list(eps_inf.lines[0].get_xdata()) == [590, 6000] and eps_inf.has_yerr
    assert list(eps_inf.lines[0].get_ydata()) == pytest.approx([0.455, 0.605])
    assert list(reid_axis.containers[2].lines[0].get_ydata()) == pytest.approx([0.04, 0.04])  # the controls
    monkeypatch.undo()
    page = write_study_report(out, [(r.cell.for_report(), out / r.name) for r in runs]).read_text()
    figure = out / DATA_FIGURE
    with Image.open(figure) as image:
        image.load()  # decodes every pixel: a truncated or corrupt file raises
        assert image.format == "PNG" and image.size == (1300, 520)
    assert "<h2>Accuracy and leakage against images per client</h2>" in page
    assert base64.b64encode(figure.read_bytes()).decode("ascii") in page
    assert f"![{DATA_FIGURE}]({DATA_FIGURE})" in (out / "report.md").read_text()
    # One size: nothing to draw against, and the figure of the report above is removed.
    page = write_study_report(out, [(r.cell.for_report(), out / r.name) for r in runs if "data20" in r.name])
    assert not figure.exists() and "images per client" not in page.read_text()
    assert DATA_FIGURE not in (out / "report.md").read_text()


def test_report_html_renders_every_image_and_the_headline_in_chromium(study, chromium: str, tmp_path: Path) -> None:
    out, cells, _ = study
    runs = [(c.for_report(), out / c.name) for c in cells]
    report = write_study_report(out, runs, central=out / "plain")  # any run stands in for a central one
    assert central_accuracy(out / "plain") == 0.45 and central_accuracy(None) is None
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched from a network
    n_images = text.count("<img ")
    assert n_images == 3 + 4 + 2  # three figures, each cell's unseen grid, the no-defense cell's two clients
    # 4 cells x 3 leakage sets, once for each run (one seed here) and once for each cell's summary
    assert (out / "report.md").exists() and (out / "study.csv").read_text().count("\n") == 1 + 4 * 3 * 2
    # The report as written, plus a script that records, after load, whether every image decoded and the headline
    # has a rendered box.
    headline = "+' '+(document.getElementById('headline').getBoundingClientRect().height>0));"
    dom = rendered_dom(chromium, text, tmp_path, IMAGES_DECODED + headline)
    assert f'data-probe="{n_images}/{n_images} true"' in dom, dom[-500:]
    assert "At cut 4, going from epsilon inf to epsilon 8" in dom


def test_grid_files_and_shards(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nclients = 4\n\n[[cells]]\nname = "a"\nfamily = "dp"\ntarget-epsilon = 8\n')
    base, cells = read_grid(grid)
    assert base == {"clients": 4} and cells == [Cell("a", "dp", {"target_epsilon": 8.0})]
    for text, says in (
        ('[[cells]]\nname = "a"\nfamily = "dp"\nlr = "fast"\n', "lr must be a float"),
        ('[[cells]]\nname = "a"\nfamily = "other"\n', f"family must be one of {', '.join(FAMILIES)}, got 'other'"),
        ('[[cells]]\nname = "../a"\nfamily = "dp"\n', "needs a name"),
        ('[[cells]]\nname = "a"\nfamily = "dp"\nbogus = 1\n', "unknown setting 'bogus'"),
        ('[[cells]]\nname = "a"\nfamily = "dp"\n[[cells]]\nname = "a"\nfamily = "dp"\n', "more than once"),
        ("[cells\n", "not a readable TOML file"),
    ):
        grid.write_text(text)
        with pytest.raises(UserError, match=re.escape(says)):
            read_grid(grid)
    cells = default_grid()
    assert len({c.name for c in cells}) == 12
    assert {c.family for c in cells} == {"dp", "dp-public", "control", "cut-noise", "nopeek"}
    full_base, full = read_grid(Path(__file__).resolve().parents[2] / "docs" / "study-full.toml")
    assert full_base == {} and len(full) == 19 and all(c in full for c in cells)  # a default study's cells are reused
    _, recipe = read_grid(Path(__file__).resolve().parents[2] / "docs" / "study-recipe.toml")
    assert len(recipe) == 16 and all(c in recipe for c in cells if c.family != "cut-noise" and c.family != "nopeek")
    assert sum(c.family == "dp-public" and c.settings["pretrain"] == "public" for c in recipe) == 6
    controls = [c.settings for c in recipe if c.family == "control"]
    assert sorted((s["cut"], s["freeze_blocks"], s.get("pretrain", "none")) for s in controls) == [
        (2, 2, "none"), (2, 2, "public"), (4, 4, "none"), (4, 4, "public")
    ]  # fmt: skip
    # The grids of issues 34 and 36: each shares its honest and pretrained cells with the default grid's, by name and
    # settings (their study3 records are copied in), and adds cells of its own (the hijack's: cut2-random-frozen too,
    # from study-recipe; and the detector's two cells).
    for name, size, new in (("hijack", 18, 11), ("few-params", 5, 2), ("seed", 5, 5), ("data", 12, 12)):
        grid_base, grid = read_grid(ROOT / "docs" / f"study-{name}.toml")
        shared = [c for c in grid if c.name in {d.name for d in cells}]
        assert len(grid) == size and len(grid) - len(shared) == new and all(c in cells for c in shared), name
    _, hijack = read_grid(ROOT / "docs" / "study-hijack.toml")
    assert all(c.settings["server"] == "hijack" for c in hijack if "hijack" in c.name)
    # Each detector cell is another cell of the grid plus --detect (what its sentence pairs it with).
    for probe in (c for c in hijack if c.family == "detect"):
        without = {k: v for k, v in probe.settings.items() if k != "detect"}
        assert sum(c.settings == without for c in hijack) == 1, probe.name
    # The default grid's cut-4 cells in three steps (docs/results.md): together, exactly those, none of them twice.
    steps = [read_grid(ROOT / "docs" / f"study-cut4-{part}.toml") for part in ("random", "defenses", "public")]
    assert all(base == {} for base, _ in steps)
    in_steps = sorted(c.name for _, part in steps for c in part)
    assert in_steps == sorted(c.name for c in cells if c.settings.get("cut", 4) == 4) and len(in_steps) == 9
    assert all(c in cells for _, part in steps for c in part)
    assert [c.name for c in shard_of(cells, "2/3")] == [c.name for c in cells[1::3]]
    # --cells: the runs of the cells a glob matches, seed by seed as ever
    picked = matching(seed_runs(hijack, 2), "cut2-hijack-eps*, cut2-detect")
    assert [r.name for r in picked] == [
        "cut2-hijack-eps-inf", "cut2-hijack-eps1", "cut2-hijack-eps8", "cut2-detect",
        "cut2-hijack-eps-inf.seed1", "cut2-hijack-eps1.seed1", "cut2-hijack-eps8.seed1", "cut2-detect.seed1",
    ]  # fmt: skip
    with pytest.raises(UserError, match="--cells 'cut3-\\*' matches no cell of the grid"):
        matching(hijack, "cut2-*,cut3-*")
    with pytest.raises(UserError, match="--shard must be K/N"):
        shard_of(cells, "4/3")
    with pytest.raises(UserError, match="study cell 'x': --nopeek needs --noise 0"):
        Cell("x", "nopeek", {"nopeek": 1.0}).config(RunConfig(), tmp_path)


def test_a_cell_with_other_settings_is_refused_and_overwrite_only_empties_run_directories(study, tmp_path) -> None:
    out, cells, configs = study
    assert cell_state(configs["plain"], out / "plain") == "done"
    assert cell_state(configs["plain"], tmp_path / "nothing") == "todo"
    with pytest.raises(UserError, match="holds a run with other settings"):
        cell_state(configs["plain"], out / "nopeek")
    (out / "plain" / "leakage.json").unlink()
    assert cell_state(configs["plain"], out / "plain") == "trained"
    RunDir(out / "plain").clear()
    assert not any((out / "plain").iterdir())
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not a run directory"):
        RunDir(other).clear()
    assert (other / "cat.jpg").exists()


@pytest.mark.slow
def test_study_runs_each_cell_once_and_resumes(ray_cluster: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """``sim.py study`` in this process (its trainings join the session's Ray cluster; the attacks read small1 and
    small2 cut to every 20th image): a shard runs only its cell, a second call only the rest, then the report.
    A bad --shard on a real process: tests/e2e/test_cli.py."""
    monkeypatch.setattr("data.omniglot.load_set", every_20th)
    grid = tmp_path / "grid.toml"
    base = 'clients = 2\nrounds = 1\nlimit-per-client = 16\nattack-epochs = 1\nattacks = "seed"\n'
    cells = '[[cells]]\nname = "plain"\nfamily = "dp"\nnoise = 0.0\naudit = 40\n\n'
    cells += '[[cells]]\nname = "peek"\nfamily = "nopeek"\n'
    grid.write_text(f"[base]\n{base}\n{cells}noise = 0.0\nnopeek = 0.5\n")
    out = tmp_path / "study"
    cmd = ["study", "--grid", str(grid), "--out", str(out)]
    assert sim_main([*cmd, "--shard", "2/2"]) == 0
    assert "not written yet, 1 run(s) to finish: plain" in flat(capsys.readouterr().out)
    assert (out / "peek" / "leakage.json").exists() and not (out / "plain").exists()
    first = (out / "peek" / "model.pt").stat().st_mtime_ns
    assert sim_main(cmd) == 0
    assert (out / "peek" / "model.pt").stat().st_mtime_ns == first  # finished: never recomputed
    assert (out / "report.html").exists() and "report: " in capsys.readouterr().out
    assert RunDir(out / "plain").state() == "attacked"
    # The audited cell (--audit 40): its audit.json, and the study's figure and table.
    found = json.loads((out / "plain" / "audit.json").read_text())
    assert found["m"] == 40 and found["epsilon"] is None and not found["violation"]
    page = (out / "report.html").read_text()
    assert "Privacy audit" in page and (out / "audit_vs_epsilon_study.png").exists()
    assert f"{found['correct']} of {found['guesses']}" in page
    with (out / "study.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["cell"] == "plain" and r["set"] == "unseen"]
    assert [(r["seed"], r["epsilon_lower"]) for r in rows] == [("0", str(found["epsilon_lower"])), ("all", "")]


@pytest.mark.slow
def test_seeds_are_runs_of_their_own_two_processes_never_run_one_twice(ray_cluster: str, tmp_path: Path) -> None:
    """Two ``sim.py study --seeds 2`` started at once on one directory (no --shard: both want every run): the locks
    give each run to one of them, the report is written once; seeds train differently on the same shards; adding a
    third seed runs only it. (Through ``SIM_SMALL``: the attacks read every 20th image of the attacker's sets.)"""
    from runs import sim

    grid = tmp_path / "grid.toml"
    base = (
        'clients = 2\nrounds = 1\nlimit-per-client = 16\nattack-epochs = 1\nattacks = "seed"\ncpus-per-client = 0.5\n'
    )
    grid.write_text(f'[base]\n{base}\n[[cells]]\nname = "plain"\nfamily = "dp"\nnoise = 0.0\n')
    out = tmp_path / "study"
    cmd = [sys.executable, SIM_SMALL, "study", "--grid", str(grid), "--out", str(out), "--seeds", "2"]
    both = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    logs = [flat(p.communicate(timeout=1800)[0]) for p in both]
    assert [p.returncode for p in both] == [0, 0], logs
    joined = " ".join(logs)
    for name, seed in (("plain", 0), ("plain.seed1", 1)):
        assert joined.count(f"run {name} (dp, eps inf, cut 4, train seed {seed}): todo") == 1, logs
    assert sum(bool(re.search(r"report: \S+report\.html(?! \(up to date\))", log)) for log in logs) == 1, logs
    assert not list(out.glob("*.lock"))
    first, second = (torch.load(out / n / "model.pt", weights_only=False)["device"] for n in ("plain", "plain.seed1"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # other initialisation and batches
    ledgers = [(out / n / "ledger.csv").read_text().splitlines() for n in ("plain", "plain.seed1")]
    sizes = [sorted({tuple(row.split(",")[2:4]) for row in ledger[1:]}) for ledger in ledgers]
    assert sizes[0] == sizes[1]  # (partition, n_train): the same shards
    mtimes = {n: (out / n / "model.pt").stat().st_mtime_ns for n in ("plain", "plain.seed1")}
    done = sim("study", "--grid", str(grid), "--out", str(out), "--seeds", "3", script=SIM_SMALL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert flat(done.stdout).count(": todo") == 1 and "run plain.seed2 (dp, eps inf, cut 4, train seed 2)" in flat(
        done.stdout
    )
    assert {n: (out / n / "model.pt").stat().st_mtime_ns for n in mtimes} == mtimes  # never recomputed
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert sorted({r["seed"] for r in rows}) == ["0", "1", "2", "all"]


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path, monkeypatch) -> None:
    """ "incomplete" with no checkpoint.pt (killed in round 1): the run directory is emptied and trained from scratch,
    not refused as an unresumable run (found by tests/study/test_cluster.py)."""
    from study.runner import run_cell

    cell = Cell("plain", "dp", {"noise": 0.0})
    cfg = cell.config(RunConfig(clients=2, rounds=2), tmp_path)
    run = RunDir(tmp_path / "plain").create()
    run.write_config(cfg)
    run.mark_incomplete("killed")
    assert cell_state(cfg, run.path) == "incomplete" and not run.checkpoint.exists()
    calls = []
    monkeypatch.setattr("simulation.training.plan_privacy", lambda cfg: None)
    monkeypatch.setattr("simulation.training.train", lambda cfg, d, chosen, resume: calls.append(("train", resume)))
    monkeypatch.setattr("attack.run.run_attack", lambda d, data, epochs, seed: calls.append(("attack", seed)))
    run_cell(cell, cfg, run.path, "incomplete")
    assert calls == [("train", None), ("attack", 0)] and not any(run.path.iterdir())


def test_a_study_kept_as_records_resumes_elsewhere_with_its_times(study, tmp_path: Path, monkeypatch) -> None:
    """A study under results/ is committed as records: git ignores each run's weights, arrays and figures (but the
    unseen reconstructions) and the locks, not what the study's report reads.
    A copy without weights (a fresh clone) resumes: a finished run stays done, a trained but unattacked one trains
    again (it has nothing to attack); the runner's times.json says what each run took, host included."""
    from study.runner import run_study

    out, cells, configs = study
    out_of_git = [*RunDir.WEIGHTS, "reconstructions_client_3_train.npz", "reconstructions_client_3.png"]
    kept = ["config.json", "ledger.csv", "metrics.csv", "leakage.json", "attack.json", "times.json"]
    kept += ["reconstructions_unseen.png"]  # the study's page shows it for each cell
    study_files = ["results/s/plain.lock", "results/s/report.html", "results/s/report.md", "results/s/study.csv"]
    paths = [f"results/s/plain/{name}" for name in (*out_of_git, *kept)] + study_files
    check = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(check.stdout.split()) == sorted([*paths[: len(out_of_git)], *study_files[:2]])
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns(*RunDir.WEIGHTS))
    assert cell_state(configs["nopeek"], clone / "nopeek") == "done"
    leakage = (out / "plain" / "leakage.json").read_text()
    for where in (out, clone):
        (where / "plain" / "leakage.json").unlink()
    assert cell_state(configs["plain"], out / "plain") == "trained"
    assert cell_state(configs["plain"], clone / "plain") == "todo"

    worked = []

    def fake_run_cell(cell, cfg, run_dir, state):  # stands in for training and attacking the cell
        worked.append((cell.name, state))
        (run_dir / "leakage.json").write_text(leakage)

    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nclients = 2\nrounds = 2\n\n[[cells]]\nname = "plain"\nfamily = "dp"\nnoise = 0.0\n')
    monkeypatch.setattr("study.runner.run_cell", fake_run_cell)
    monkeypatch.setattr("study.runner.write_report_once", lambda *args, **kw: None)
    run_study(clone, grid=grid)
    assert worked == [("plain", "todo")]
    (span,) = RunDir(clone / "plain").read_times()
    assert span["from"] == "todo" and span["host"] == socket.gethostname() and 0 <= span["end"] - span["start"] < 60
    run_study(clone, grid=grid)
    assert worked == [("plain", "todo")] and len(RunDir(clone / "plain").read_times()) == 1  # done: not run again
