"""How the one-run bound tightens with the number of canaries M, from audited runs' own scores.

    python benchmarks/audit_by_m.py RUN_DIR ... [--sizes 100 250 500 1000] [--draws 20]

For each run (trained with ``--audit M``), the bound is recomputed on random subsets of its canaries of each size:
a subset drawn without looking at the scores or the truth is itself a valid one-run audit with that many canaries,
on the same training. Prints, per run and size, the median bound over ``--draws`` subsets (and its range), beside
the run's own bound with all M and the ledger's epsilon. Sizes above the run's M are skipped: they need a run with
more canaries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audit.auditor import load_auditor
from audit.bound import audit
from core.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    for run_dir in args.runs:
        run = RunDir(run_dir)
        found = run.read_json(run.audit.name)
        auditor = load_auditor(run)
        scores, included = auditor.scores, auditor.plan.included
        claimed = "inf" if found["epsilon"] is None else f"{found['epsilon']:.3g}"
        print(f"{run.path.name}: M {len(scores)}, all canaries {found['epsilon_lower']:.3f}, ledger {claimed}")
        rng = np.random.default_rng(0)
        for size in args.sizes:
            if size > len(scores):
                continue
            bounds = []
            for _ in range(args.draws if size < len(scores) else 1):
                pick = rng.choice(len(scores), size=size, replace=False)
                bounds.append(audit(scores[pick], included[pick], found["delta"]).epsilon_lower)
            print(f"  M {size:5d}: median {np.median(bounds):.3f} (range {min(bounds):.3f}-{max(bounds):.3f})")


if __name__ == "__main__":
    main()
