"""Figures of a run, drawn from its CSV files: ``epsilon_per_round.png`` and ``accuracy_per_round.png``."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core import files
from core.privacy import EPSILON_COVERS
from core.rundir import RunDir


def plot_run(run_dir: Path) -> list[Path]:
    """Draw both figures into ``run_dir``; returns their paths."""
    run = RunDir(run_dir)
    ledger, metrics = run.read_csv("ledger.csv"), run.read_csv("metrics.csv")
    clients = run.read_csv("client_metrics.csv")
    return [_plot_epsilon(run_dir, ledger), _plot_accuracy(run_dir, metrics, clients)]


def _plot_epsilon(run_dir: Path, ledger: list[dict]) -> Path:
    by_client: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in ledger:
        by_client[int(row["partition_id"])].append((int(row["round"]), float(row["epsilon"])))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [e for series in by_client.values() for _, e in series if math.isfinite(e)]
    if finite:
        for pid, series in sorted(by_client.items()):
            rounds, eps = zip(*sorted(series), strict=True)
            ax.plot(rounds, eps, marker="o", markersize=3, linewidth=1, label=f"client {pid}")
        if len(by_client) <= 10:
            ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no DP (noise 0): epsilon = infinity", ha="center", va="center", transform=ax.transAxes)
    accountant = ledger[0]["accountant"] if ledger else "?"
    delta = ledger[0]["delta"] if ledger else "?"
    ax.set(xlabel="round", ylabel=f"epsilon (delta={delta}, {accountant})", title="Privacy spent per client")
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.005, textwrap.fill(EPSILON_COVERS, 110), fontsize=6, va="bottom")
    return _save(fig, run_dir / "epsilon_per_round.png", bottom=0.07)


def _plot_accuracy(run_dir: Path, metrics: list[dict], clients: list[dict]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_client: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in clients:
        by_client[int(row["partition_id"])].append((int(row["round"]), float(row["val_acc"])))
    for i, series in enumerate(by_client.values()):
        rounds, acc = zip(*sorted(series), strict=True)
        ax.plot(rounds, acc, color="grey", alpha=0.3, linewidth=0.8, label="val acc, one client" if i == 0 else None)
    rounds = [int(r["round"]) for r in metrics]
    ax.plot(rounds, [float(r["val_acc"]) for r in metrics], marker="o", linewidth=2, label="val acc (weighted)")
    ax.plot(
        rounds,
        [float(r["train_acc"]) for r in metrics],
        marker="s",
        linewidth=1.5,
        label="train acc (local models, during training)",
    )
    ax.axhline(1 / 20, color="black", linestyle=":", linewidth=1, label="chance (1/20)")
    ax.set(xlabel="round", ylabel="accuracy (20 alphabets)", ylim=(0, 1), title="Task accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, run_dir / "accuracy_per_round.png")


def _save(fig: plt.Figure, path: Path, bottom: float = 0.0) -> Path:
    """``bottom``: share of the figure's height kept free below the axes (for a footnote)."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return path
