"""Which planted DP bugs one run can show at all: for a client of the default run (594 training images, batch 32,
10 rounds of one local epoch: q = 1/19, 190 steps), the true epsilon of three bugs that leave the ledger's claim
unchanged, and the ideal one-run bound (``audit.bound.ideal_bound``) at that true epsilon with M canaries. A bug is
within one run's reach only if the ideal bound at its true epsilon passes the claimed one; the product's audit
reaches a fraction of the ideal (``fraction_of_ideal`` in audit.json), so this is an upper limit on what it can catch.

    python benchmarks/audit_planted.py [--epsilons 1 8] [--m 1000 5000]

The bugs (issue 37): the noise divided by 2 behind the ledger's back; the accountant given half the loader's sample
rate (so sigma is calibrated too small); the noise switched off. The ideal mechanism is a Gaussian of exactly the
true (epsilon, delta): a stand-in for the composed subsampled Gaussian, the same one ``benchmarks/audit_ideal.py``
uses. Beside it, the server's seat (``audit.bound.server_view_bound``): the bug's own mechanism (its true sigma, q and
steps) as a server reading one summed SGD update per client and round sees it, with no data drift; the product's
auditor sits there, so that is the most it could catch.
"""

from __future__ import annotations

import argparse

from audit.bound import EPS_MAX, bound_ceiling, ideal_bound, server_view_bound
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
        bugs = {  # the mechanism each bug really runs: (sigma, q, steps), while the ledger claims ``claimed``
            "none (honest)": (sigma, q, steps),
            "noise / 2": (sigma / 2, q, steps),
            "accountant at q / 2": (noise_for_target(claimed, DELTA, q / 2, steps), q, steps),
            "noise off": (0.0, q, steps),
        }
        print(f"claimed epsilon {claimed:g} (sigma {sigma:.3f}):")
        for bug, mechanism in bugs.items():
            true = epsilon([mechanism], DELTA)
            reach = []
            for m in args.m:
                # No noise: every canary is guessed right from either seat, so both reach the bound's ceiling at M.
                ideal = ideal_bound(true, DELTA, m) if true <= EPS_MAX else bound_ceiling(m, DELTA)
                seat = server_view_bound([mechanism], DELTA, m) if mechanism[0] > 0 else bound_ceiling(m, DELTA)
                reach.append(f"M {m}: ideal {ideal:.3f} ({_verdict(ideal, claimed)}), "
                             f"server's seat {seat:.3f} ({_verdict(seat, claimed)})")  # fmt: skip
            print(f"  {bug:<20} true epsilon {true:8.3f}; " + "; ".join(reach))


def _verdict(bound: float, claimed: float) -> str:
    return "caught" if bound > claimed else "not caught"


if __name__ == "__main__":
    main()
