"""What the one-run audit can reach at best: an ideal Gaussian mechanism of exactly the ledger's (epsilon, delta),
scored by its own likelihood ratio, audited with M canaries as the product audits a run; and, for audited runs,
how close their bound comes to it.

    python benchmarks/audit_ideal.py [--m 1000] [--epsilons 1 8 30] [--draws 20]
    python benchmarks/audit_ideal.py --runs RUN_OR_STUDY_DIR ...

For each epsilon: the Gaussian mechanism's mu with delta(epsilon) = 1e-5 (the mechanism is mu-GDP: each canary's
score is N(mu, 1) when included, N(0, 1) when not), then the product's bound (audit.bound.audit) on ``--draws``
seeded draws; prints the median and range, and the bound's ceiling at M (every guess right). Beside it, the server's
seat (``audit.bound.server_view_bound``): a client of the default run (594 images, batch 32, 10 rounds of one local
epoch) at the sigma that gives that epsilon, as a server reading one summed SGD update per client and round sees it,
with no data drift: the most the product's auditor could reach, whatever its score. And, for comparison, an auditor
that sees each DP-SGD step's noisy sum at the coordinate (not this product's server), scoring a canary by its exact
likelihood ratio over the steps. With ``--runs``: every
audit.json at or below each directory, its epsilon_lower, the ideal bound at its own (epsilon, delta, m)
(``audit.bound.ideal_fields``, what the run's audit.json stores) and the fraction of it the audit reached, as the
run page says them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audit.bound import audit, bound_ceiling, gaussian_mu, ideal_bounds, server_view_bounds
from core.privacy import noise_for_target, sample_rate, steps_per_epoch
from report.study_audit import ideal_text, read_audit

DELTA = 1e-5
N_TRAIN, BATCH, ROUNDS = 594, 32, 10  # a client of the default run (results/study3's ledgers)


def step_view_bounds(sigma: float, q: float, steps: int, m: int, draws: int) -> list[float]:
    """The bound when every step is seen: per step an included canary adds Bernoulli(q) (in units of the clip
    norm) to N(0, sigma^2); each canary scored by its log likelihood ratio, summed over the steps."""
    found = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        seen = (rng.random((m, steps)) < q) * included[:, None] + sigma * rng.normal(size=(m, steps))
        scores = np.log1p(q * np.expm1((seen - 0.5) / sigma**2)).sum(axis=1)
        found.append(audit(scores, included, DELTA).epsilon_lower)
    return found


def ideal_table(m: int, epsilons: list[float], draws: int) -> None:
    ceiling = bound_ceiling(m, DELTA)
    print(f"M {m}: the bound's ceiling (every guess right) {ceiling:.3f}")
    q, steps = sample_rate(N_TRAIN, BATCH), ROUNDS * steps_per_epoch(N_TRAIN, BATCH)
    print(f"a client of the default run: n {N_TRAIN}, q {q:.4f}, {steps} steps")
    for eps in epsilons:
        found = ideal_bounds(eps, DELTA, m, draws)
        sigma = noise_for_target(eps, DELTA, q, steps)
        seat = server_view_bounds([(sigma, q, steps)], DELTA, m, draws)
        step = step_view_bounds(sigma, q, steps, m, draws)
        print(f"epsilon {eps:g}: mu {gaussian_mu(eps, DELTA):.3f}, ideal audit median {np.median(found):.3f} "
              f"(range {min(found):.3f}-{max(found):.3f}); server's seat (sigma {sigma:.3f}) median "
              f"{np.median(seat):.3f} (range {min(seat):.3f}-{max(seat):.3f}), "
              f"{np.median(seat) / np.median(found):.2f} of the ideal; every step seen {np.median(step):.3f}, "
              f"{np.median(step) / np.median(found):.2f} of the ideal")  # fmt: skip


def run_fractions(dirs: list[Path]) -> None:
    for path in sorted(p for d in dirs for p in d.rglob("audit.json")):
        found = read_audit(path.parent)  # with the ideal bound, computed for an audit.json written before it held one
        claimed = "inf (no DP)" if found["epsilon"] is None else f"{found['epsilon']:.3g}"
        print(f"{path.parent}: epsilon {claimed}, m {found['m']}: epsilon_lower {found['epsilon_lower']:.3f}"
              f"{ideal_text(found)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0, 30.0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--runs", type=Path, nargs="+", help="audited run or study directories")
    args = parser.parse_args()
    if args.runs:
        run_fractions(args.runs)
    else:
        ideal_table(args.m, args.epsilons, args.draws)


if __name__ == "__main__":
    main()
