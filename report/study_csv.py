"""``study.csv``: every number of the study's page, one row per training run and leakage set, then one per cell's
summary across its runs (the columns: ``CSV_COLUMNS``; docs/usage.md describes them)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from core import files
from report.study_stats import SETS, Point

CSV_COLUMNS = (
    "cell", "seed", "runs", "family", "point", "cut", "noise", "epsilon_median", "epsilon_max", "val_acc",
    "val_acc_lo", "val_acc_hi", "set", "best_attack",
    "reid_top1", "reid_top1_lo", "reid_top1_hi", "reid_chance", "ssim_attack", "ssim", "ssim_lo", "ssim_hi",
    "mse", "baseline_ssim", "baseline_mse", "activation_nn_reid", "run_dir", "audit_m", "epsilon_lower",
)  # fmt: skip


def write_csv(points: Sequence[Point], path: Path) -> None:
    """Every training run's rows (``seed`` = its training seed, ``runs`` 1), then each cell's summary across its
    runs (``seed`` "all", ``runs`` N, intervals across runs when N > 1); one row per leakage set."""
    with files.atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        rows = [(run, str(run.train_seed), 1) for p in points for run in p.runs]
        rows += [(p, "all", p.n_runs) for p in points]
        for p, seed, n in rows:
            for set_name in SETS:
                best, (ssim_attack, top), base = (p.sets[set_name][k] for k in ("best", "ssim", "baseline"))
                writer.writerow(
                    {
                        "cell": p.title,
                        "seed": seed,
                        "runs": n,
                        "family": p.cell.family,
                        "point": p.cell.label,
                        "cut": p.cut,
                        "noise": p.noise,
                        "epsilon_median": p.epsilon_median,
                        "epsilon_max": p.epsilon_max,
                        "val_acc": p.val_acc,
                        "val_acc_lo": "" if p.val_acc_lo is None else p.val_acc_lo,
                        "val_acc_hi": "" if p.val_acc_hi is None else p.val_acc_hi,
                        "set": set_name,
                        "best_attack": best["attack"],
                        **{k: best[k] for k in ("reid_top1", "reid_top1_lo", "reid_top1_hi", "reid_chance", "mse")},
                        "ssim_attack": ssim_attack,
                        **{k: top[k] for k in ("ssim", "ssim_lo", "ssim_hi")},
                        "baseline_ssim": base["ssim"],
                        "baseline_mse": base["mse"],
                        "activation_nn_reid": p.activation_nn_reid,
                        "run_dir": str(p.run_dir),
                        # a run's own bound; a cell's summary row has none (bounds are not averaged)
                        **_audit_columns(p.audit if n == 1 and seed != "all" else None),
                    }
                )


def _audit_columns(found: dict | None) -> dict:
    return {"audit_m": found["m"], "epsilon_lower": found["epsilon_lower"]} if found else {}
