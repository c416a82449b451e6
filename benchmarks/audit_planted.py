"""Which planted DP bugs one run can show at all: for a client of the default run (594 training images, batch 32,
10 rounds of one local epoch: q = 1/19, 190 steps), the true epsilon of three bugs that leave the ledger's claim
unchanged, and the ideal one-run bound (``audit.bound.ideal_bound``) at that true epsilon with M canaries. A bug is
within one run's reach only if the ideal bound at its true epsilon passes the claimed one; the product's audit
reaches a fraction of the ideal (``fraction_of_ideal`` in audit.json), so this is an upper limit on what it can catch.

    python benchmarks/audit_planted.py [--epsilons 1 8] [--m 1000 5000]

The bugs (issue 37): the noise divided by 2 behind the ledger's back; the accountant given half the loader's sample
rate (so sigma is calibrated too small); the noise switched off. The ideal mechanism is a Gaussian of exactly the
true (epsilon, delta): a stand-in for the composed subsampled Gaussian, the same one ``benchmarks/audit_ideal.py``
uses.
"""

from __future__ import annotations

import argparse
import math

from audit.bound import EPS_MAX, bound_ceiling, ideal_bound
from core.privacy import epsilon, noise_for_target, sample_rate, steps_per_epoch

DELTA = 1e-5
N_TRAIN, BATCH, ROUNDS = 594, 32, 10  # a client of the default run (results/study3's ledgers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--m", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    q, steps = sample_rate(N_TRAIN, BATCH), ROUNDS * steps_per_epoch(N_TRAIN, BATCH)
    print(f"a client: n {N_TRAIN}, q {q:.4f}, {steps} steps, delta {DELTA:g}")
    for claimed in args.epsilons:
        sigma = noise_for_target(claimed, DELTA, q, steps)
        bugs = {
            "none (honest)": epsilon([(sigma, q, steps)], DELTA),
            "noise / 2": epsilon([(sigma / 2, q, steps)], DELTA),
            "accountant at q / 2": epsilon([(noise_for_target(claimed, DELTA, q / 2, steps), q, steps)], DELTA),
            "noise off": math.inf,
        }
        print(f"claimed epsilon {claimed:g} (sigma {sigma:.3f}):")
        for bug, true in bugs.items():
            # No noise: the ideal audit guesses every canary right, so it reaches the bound's ceiling at M.
            ideals = [ideal_bound(true, DELTA, m) if true <= EPS_MAX else bound_ceiling(m, DELTA) for m in args.m]
            reach = ", ".join(
                f"M {m}: ideal bound {b:.3f} ({'caught' if b > claimed else 'not caught'})"
                for m, b in zip(args.m, ideals, strict=True)
            )
            print(f"  {bug:<20} true epsilon {true:8.3f}; {reach}")


if __name__ == "__main__":
    main()
