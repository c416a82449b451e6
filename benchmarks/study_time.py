"""How long a study's runs took, seed by seed, from the files its run directories hold.

    python benchmarks/study_time.py runs/study

A study resumed over several sessions has no single end-to-end wall time, so this adds up what each run took: the
stretches the study runner recorded in its ``times.json`` (``RunDir.add_time``; they survive a copy or a git
checkout, e.g. of a study committed under ``results/``), or, for a run without one, from its ``config.json``'s file
time (written when the run starts) to its ``leakage.json``'s (written when its attack ends). Between runs it adds the
runner's own time (one run's end to the next one's start, counted only when under ``--gap`` seconds, so a pause
between sessions is not counted). It prints one line per run, each seed's total, and the ratio of all
seeds' time to the first seed's: the issue's target is at most the number of seeds (no overhead beyond the
trainings). A resumed run is flagged: with ``times.json``, its stretches are counted and a stretch that was killed
is missing (the runner records a stretch when it ends); with file times, it counts from its first start, pause
included (its ``metrics.csv`` elapsed time is then far below its wall time). Not a test: nothing here asserts a
time.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.rundir import RunDir  # noqa: E402
from study.grid import Cell, seed_runs  # noqa: E402


def run_times(study: Path) -> list[dict]:
    """One row per finished run of the study (its grid and seeds as ``study.json`` says), in the order they
    started."""
    described = json.loads((study / "study.json").read_text())
    cells = [Cell(**cell) for cell in described["cells"]]
    rows = []
    for seed_run in seed_runs(cells, described["seeds"]):
        run = study / seed_run.name
        if not (run / "leakage.json").exists():
            continue
        spans = RunDir(run).read_times()
        if spans:
            start, end = spans[0]["start"], spans[-1]["end"]
            wall = sum(span["end"] - span["start"] for span in spans)
        else:
            start, end = (run / "config.json").stat().st_mtime, (run / "leakage.json").stat().st_mtime
            wall = end - start
        with open(run / "metrics.csv", newline="") as f:
            rounds = list(csv.DictReader(f))
        attack = json.loads((run / "attack.json").read_text()).get("seconds", {})
        rows.append(
            {
                "run": seed_run.name,
                "seed": seed_run.k,
                "start": start,
                "end": end,
                "wall": wall,
                "spans": len(spans),
                "hosts": sorted({span["host"] for span in spans}),
                "whole": bool(spans) and spans[0]["from"] == "todo",  # recorded from the run's start
                "train": float(rounds[-1]["elapsed_seconds"]) if rounds else 0.0,
                "attack": sum(v for k, v in attack.items() if k != "sets_total"),
            }
        )
    return sorted(rows, key=lambda r: r["start"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study directory (sim.py study --out)")
    parser.add_argument("--gap", type=float, default=120.0, help="longest pause between runs counted as the runner's")
    args = parser.parse_args(argv)
    if not (args.study / "study.json").exists():
        print(f"error: {args.study} is not a study directory (no study.json)", file=sys.stderr)
        return 2
    rows = run_times(args.study)
    if not rows:
        print(f"error: {args.study} holds no finished run yet", file=sys.stderr)
        return 2
    per_seed: dict[int, float] = {}
    previous_end = None
    for row in rows:
        gap = row["start"] - previous_end if previous_end is not None else 0.0
        counted = gap if 0 <= gap <= args.gap else 0.0
        previous_end = row["end"]
        per_seed[row["seed"]] = per_seed.get(row["seed"], 0.0) + row["wall"] + counted
        if row["spans"]:  # recorded stretches: a pause is not in them; a killed stretch is, if it was recorded
            note = ""
            if row["spans"] > 1 or not row["whole"]:  # resumed
                note = f"  (resumed: {row['spans']} stretches{'' if row['whole'] else ', the first not recorded'})"
            note += f"  on {', '.join(row['hosts'])}"
        else:  # file times: a pause is in them
            note = "  (resumed: pause counted)" if row["wall"] > 1.5 * (row["train"] + row["attack"]) + 120 else ""
        print(
            f"{row['run']:28s} seed {row['seed']}  wall {row['wall']:7.0f} s  train {row['train']:6.0f} s  "
            f"attack {row['attack']:5.0f} s  runner gap {counted:4.0f} s{note}"
        )
    for seed, seconds in sorted(per_seed.items()):
        print(f"seed {seed}: {sum(r['seed'] == seed for r in rows)} runs, {seconds:.0f} s ({seconds / 60:.1f} min)")
    total = sum(per_seed.values())
    ratio = total / per_seed[min(per_seed)]
    print(f"all seeds: {total:.0f} s ({total / 3600:.2f} h); ratio to the first seed: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
