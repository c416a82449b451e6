"""Which canary score sees the most, from an audited run's own per-round pushes (its checkpoint's audit state).

    python benchmarks/audit_scores.py RUN_DIR ...

For each run trained with ``--audit M``, prints each score's separation ((mean in - mean out) / pooled standard
deviation) and its one-run bound, each bound at the run's own split over guess counts (as ``audit.json``):

- ``sum``: the product's score, the sum over rounds of the canary's own push less the other clients' mean;
- ``z``: the same per round, divided by the other clients' spread at that coordinate in that round (the round's
  noise scale after the optimiser's per-coordinate scaling), then summed.

Beside them, the server's-seat ceiling of audit.json (``server_view_epsilon_lower``). Choose a score on a
calibration run (a training seed no audited number uses), never on the runs it will audit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audit.auditor import Auditor, load_auditor
from audit.bound import audit
from core.rundir import RunDir


def z_scores(auditor: Auditor) -> np.ndarray:
    """Each round's own push less the others' mean over the others' spread, summed over rounds (rounds without a
    spread, or where the canary's client did not train, add nothing)."""
    own, others, spread = (np.asarray(a) for a in (auditor.own, auditor.others, auditor.spread))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_round = (own - others) / spread
    return np.where(np.isfinite(per_round), per_round, 0.0).sum(axis=0)


def separation(scores: np.ndarray, included: np.ndarray) -> float:
    inside, outside = scores[included], scores[~included]
    pooled = np.sqrt((inside.var(ddof=1) + outside.var(ddof=1)) / 2)
    return float((inside.mean() - outside.mean()) / pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    for run_dir in args.runs:
        run = RunDir(run_dir)
        found = run.read_json(run.audit.name)
        auditor = load_auditor(run)
        included = auditor.plan.included
        claimed = "inf" if found["epsilon"] is None else f"{found['epsilon']:.3g}"
        seat = found.get("server_view_epsilon_lower")
        print(f"{run.path.name}: M {auditor.plan.m}, {auditor.rounds} rounds, ledger epsilon {claimed}, "
              f"server's-seat ceiling {'-' if seat is None else f'{seat:.3f}'}")  # fmt: skip
        for name, scores in {"sum": auditor.scores, "z": z_scores(auditor)}.items():
            best = audit(scores, included, found["delta"])
            print(f"  {name:>4}: separation {separation(scores, included):.3f}, epsilon_lower {best.epsilon_lower:.3f} "
                  f"({best.correct} of {best.guesses} right)")  # fmt: skip


if __name__ == "__main__":
    main()
