"""What the one-run audit can reach at best: an ideal Gaussian mechanism of exactly the ledger's (epsilon, delta),
scored by its own likelihood ratio, audited with M canaries as the product audits a run.

    python benchmarks/audit_ideal.py [--m 1000] [--epsilons 1 8 30] [--draws 20]

For each epsilon: the Gaussian mechanism's mu with delta(epsilon) = 1e-5 (the mechanism is mu-GDP: each canary's
score is N(mu, 1) when included, N(0, 1) when not), then the product's bound (audit.bound.audit) on ``--draws``
seeded draws; prints the median and range, and the bound's ceiling at M (every guess right).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import optimize, stats

from audit.bound import GUESS_FRACTIONS, audit, epsilon_lower

DELTA = 1e-5


def gaussian_mu(eps: float, delta: float = DELTA) -> float:
    """The mu of the Gaussian mechanism whose privacy curve has delta(eps) = delta."""

    def curve(mu: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return float(optimize.brentq(curve, 1e-3, 100.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0, 30.0])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    ceiling = epsilon_lower(args.m, args.m, args.m, DELTA, 1 - 0.05 / len(GUESS_FRACTIONS))
    print(f"M {args.m}: the bound's ceiling (every guess right) {ceiling:.3f}")
    for eps in args.epsilons:
        mu = gaussian_mu(eps)
        found = []
        for seed in range(args.draws):
            rng = np.random.default_rng(seed)
            included = rng.random(args.m) < 0.5
            found.append(audit(rng.normal(size=args.m) + mu * included, included, DELTA).epsilon_lower)
        print(f"epsilon {eps:g}: mu {mu:.3f}, ideal audit median {np.median(found):.3f} "
              f"(range {min(found):.3f}-{max(found):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
