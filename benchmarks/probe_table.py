"""A lever table from finished (or unfinished) run directories: one markdown row per run.

    python benchmarks/probe_table.py runs/probe-a runs/probe-b ...

Each row: the run's name, the flags that differ from the defaults, sigma, epsilon after the last round, val acc per
round, the final val acc and the training's wall time (the sum of its rounds, so a resumed run is counted once).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from core.config import RunConfig, flag_name
from core.errors import UserError
from core.rundir import RunDir

IGNORED = {"out", "data_dir", "noise", "target_epsilon", "skip_attack"}


def row(path: Path) -> str:
    run = RunDir(path)
    cfg = run.read_config()
    defaults = RunConfig()
    changed = [
        f"--{flag_name(name)} {value}"
        for name, value in cfg.settings_dict().items()
        if name not in IGNORED and value != getattr(defaults, name)
    ]
    metrics = _rows(run.metrics)
    if not metrics:
        return f"| {path.name} | {' '.join(changed)} | not started | | | | |"
    accs = [float(r["val_acc"]) for r in metrics]
    seconds = sum(float(r["round_seconds"]) for r in metrics)
    ledger = _rows(run.ledger)
    sigma = float(ledger[-1]["noise_multiplier"]) if ledger else cfg.noise
    eps = metrics[-1]["epsilon_max"]
    per_round = ", ".join(f"{a:.2f}" for a in accs)
    state = "" if len(accs) == cfg.rounds else f" ({len(accs)}/{cfg.rounds} rounds)"
    eps_text = "∞" if float(eps) == float("inf") else f"{float(eps):.2f}"
    return (
        f"| {path.name} | {' '.join(changed) or 'defaults'} | {sigma:.3f} | {eps_text} | {per_round} "
        f"| **{accs[-1]:.3f}**{state} | {seconds:.0f} |"
    )


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    args = parser.parse_args(argv)
    print("| run | flags | σ | ε | val acc per round | final | train s |")
    print("|---|---|---|---|---|---|---|")
    try:
        for path in args.runs:
            print(row(path))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
