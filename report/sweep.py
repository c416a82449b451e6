"""Leakage per privacy budget: one row per (run, attack, set) in ``leakage_vs_epsilon.csv``, a figure, ``report.md``.

Reads only what training and the attack wrote (metrics.csv, ledger.csv, config.json, leakage.json, attack.json).
epsilon on the x axis is the median client's final epsilon (inf for noise 0), with its accountant and delta.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core import files
from core.privacy import EPSILON_COVERS
from core.rundir import RunDir

SETS = ("unseen", "clients_inference", "clients_train")
# Each set's bootstrap intervals in leakage.json (and the top-5 re-id).
INTERVALS = ("reid_top5", "mse_lo", "mse_hi", "ssim_lo", "ssim_hi", "reid_top1_lo", "reid_top1_hi")
COLUMNS = (
    "noise",
    "epsilon_median",
    "epsilon_min",
    "epsilon_max",
    "accountant",
    "delta",
    "val_acc",
    "attack",
    "set",
    "mse",
    "psnr",
    "ssim",
    "reid_top1",
    "reid_chance",
    *INTERVALS,
    "baseline_mse",
    "baseline_ssim",
    "baseline_reid_top1",
    "run_dir",
)


def ledger_spend(run_dir: Path) -> tuple[list[float], list[float]]:
    """From a run's ``ledger.csv``: every client's final epsilon, sorted ([nan] for an empty ledger), and the
    median client's spend after each round (clients a round skipped count with their earlier spend)."""
    last: dict[str, float] = {}
    by_round: dict[int, float] = {}
    # Rows are in round order: the last one per client is its final spend.
    for row in RunDir(run_dir).read_csv("ledger.csv"):
        last[row["partition_id"]] = float(row["epsilon"])
        by_round[int(row["round"])] = statistics.median(last.values())
    return sorted(last.values()) or [math.nan], [by_round[r] for r in sorted(by_round)]


def final_val_acc(run_dir: Path) -> float:
    """The global model's validation accuracy after a run's last round (``metrics.csv``; nan before round 1)."""
    metrics = RunDir(run_dir).read_csv("metrics.csv")
    return float(metrics[-1]["val_acc"]) if metrics else math.nan


def run_summary(run_dir: Path) -> dict:
    """Final-round privacy and accuracy of one run: noise, epsilon median/min/max, accountant, delta, val_acc."""
    cfg = RunDir(run_dir).read_config()
    eps = ledger_spend(run_dir)[0]
    return {
        "noise": float(cfg.noise),
        "epsilon_median": statistics.median(eps),
        "epsilon_min": eps[0],
        "epsilon_max": eps[-1],
        "accountant": cfg.accountant,
        "delta": float(cfg.delta),
        "val_acc": final_val_acc(run_dir),
    }


def leakage_rows(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for run_dir in run_dirs:
        summary = run_summary(run_dir)
        run = RunDir(run_dir)
        leakage, meta = run.read_json("leakage.json"), run.read_json("attack.json")
        for attack in (*meta["attacks"], "best"):  # "best": the worst case per set
            for set_name in SETS:
                m, base = leakage[set_name][attack], leakage[set_name]["baseline"]
                rows.append(
                    {
                        **summary,
                        "attack": attack,
                        "set": set_name,
                        **{k: m[k] for k in ("mse", "psnr", "ssim", "reid_top1", "reid_chance")},
                        **{k: m[k] for k in INTERVALS},
                        "baseline_mse": base["mse"],
                        "baseline_ssim": base["ssim"],
                        "baseline_reid_top1": base["reid_top1"],
                        "run_dir": str(run_dir),
                    }
                )
    return sorted(rows, key=lambda r: (r["attack"], r["set"], -r["noise"] if r["noise"] else -math.inf))


def _x(eps: float, finite_max: float) -> float:
    """Where to draw an epsilon on a log axis: inf goes one decade right of the largest finite value."""
    return eps if math.isfinite(eps) else finite_max * 10


def plot_leakage(rows: list[dict], path: Path) -> None:
    finite = [r["epsilon_median"] for r in rows if math.isfinite(r["epsilon_median"])]
    finite_max = max(finite) if finite else 1.0
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (("ssim", "SSIM (higher = more leakage)"), ("reid_top1", "re-identification top-1"), ("mse", "MSE"))
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for (attack, set_name), series in _group(rows).items():
            xs = [_x(r["epsilon_median"], finite_max) for r in series]
            ys = [r[key] for r in series]
            lo = [r.get(f"{key}_lo", math.nan) for r in series]
            hi = [r.get(f"{key}_hi", math.nan) for r in series]
            if all(math.isfinite(v) for v in lo + hi):  # the bootstrap 95 % interval, where the run has one
                yerr = [[y - a for y, a in zip(ys, lo, strict=True)], [b - y for y, b in zip(ys, hi, strict=True)]]
                ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=f"{attack} / {set_name}")
            else:
                ax.plot(xs, ys, marker="o", label=f"{attack} / {set_name}")
        base_key = {"ssim": "baseline_ssim", "reid_top1": "baseline_reid_top1", "mse": "baseline_mse"}[key]
        for set_name in SETS:
            values = [r[base_key] for r in rows if r["set"] == set_name]
            if values:
                ax.axhline(statistics.mean(values), color="grey", linestyle=":", linewidth=1)
        ax.set(ylabel=label)
    acc_ax = axes.flat[3]
    runs = sorted({(r["epsilon_median"], r["val_acc"]) for r in rows}, key=lambda t: _x(t[0], finite_max))
    acc_ax.plot([_x(e, finite_max) for e, _ in runs], [a for _, a in runs], marker="s", color="black")
    acc_ax.set(ylabel="validation accuracy (20 alphabets)", ylim=(0, 1))
    accountant = rows[0]["accountant"] if rows else "?"
    # One tick per run, labelled with its epsilon ("inf" for no DP): log-axis minor labels would overlap.
    ticks = sorted({_x(r["epsilon_median"], finite_max) for r in rows})
    labels = [f"{t:.3g}" if t in finite else "inf" for t in ticks]
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.set_xlabel(f"median client epsilon ({accountant}, delta {rows[0]['delta'] if rows else '?':g})")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Leakage vs privacy budget (bars: bootstrap 95 % intervals; dotted: mean-image baseline)")
    fig.tight_layout()
    files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def _group(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["attack"], row["set"]), []).append(row)
    return groups


def write_report(out_dir: Path, run_dirs: list[Path]) -> Path:
    """Write leakage_vs_epsilon.csv / .png and report.md into ``out_dir``; returns the report's path."""
    rows = leakage_rows(run_dirs)
    with files.atomic_open(out_dir / "leakage_vs_epsilon.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_leakage(rows, out_dir / "leakage_vs_epsilon.png")
    return files.write_text(out_dir / "report.md", _markdown(out_dir, run_dirs, rows))


def _fmt(value: float, digits: int = 3) -> str:
    return "inf" if isinstance(value, float) and math.isinf(value) else f"{value:.{digits}f}"


def _markdown(out_dir: Path, run_dirs: list[Path], rows: list[dict]) -> str:
    def rel(path: Path) -> str:
        return os.path.relpath(path, out_dir)

    lines = [
        "# Leakage per privacy budget",
        "",
        "How well a curious server reconstructs clients' images from the activations it receives, per epsilon.",
        "`unseen`: small2 images the attacker never saw; `clients_inference` / `clients_train`: clients' private",
        "images from intercepted activations (mean over clients). Baseline: small1's mean image.",
        "",
        f"What epsilon covers: {EPSILON_COVERS}.",
        "",
        "![leakage vs epsilon](leakage_vs_epsilon.png)",
        "",
        "Table: [leakage_vs_epsilon.csv](leakage_vs_epsilon.csv)",
        "",
        "| noise | epsilon (median) | val acc | attack | set | MSE | PSNR | SSIM | re-id "
        "| baseline MSE | baseline SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['noise']:g} | {_fmt(r['epsilon_median'], 2)} | {r['val_acc']:.3f} | {r['attack']} | {r['set']} | "
            f"{r['mse']:.4f} | {_fmt(r['psnr'], 2)} | {r['ssim']:.3f} | {r['reid_top1']:.3f} | "
            f"{r['baseline_mse']:.4f} | {r['baseline_ssim']:.3f} |"
        )
    for run_dir in run_dirs:
        lines += ["", f"## Run `{rel(run_dir) if rel(run_dir) != '.' else run_dir.resolve().name}`", ""]
        for name in ("epsilon_per_round.png", "accuracy_per_round.png", "reconstructions_unseen.png"):
            if (run_dir / name).exists():
                lines.append(f"![{name}]({rel(run_dir / name)})")
        tables = ("ledger.csv", "metrics.csv", "client_metrics.csv", "leakage.csv", "leakage.json", "config.json")
        lines += ["", "Tables: " + ", ".join(f"[{t}]({rel(run_dir / t)})" for t in tables if (run_dir / t).exists())]
        clients = sorted(run_dir.glob("reconstructions_client_*.png"), key=lambda p: int(p.stem.split("_")[-1]))
        if clients:
            links = ", ".join(f"[{p.stem[16:]}]({rel(p)})" for p in clients)
            lines += ["", f"Reconstructions per client: {links}"]
    return "\n".join(lines) + "\n"
