"""Privacy calculator: epsilon of DP-SGD from (N, batch size, noise, epochs, delta), like Opacus's script.

    python -m strategy.privacy --n 594 --batch-size 32 --noise 0.5 --epochs 10 --delta 1e-5 [--accountant rdp]

Uses the same rules as training (q = 1 / ceil(N / batch), ceil(N / batch) steps per epoch) and the same
accountants, so its epsilon equals the ledger's for a client of N training images that trained every round.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.config import ACCOUNTANTS
from core.privacy import epsilon, sample_rate, steps_per_epoch


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m strategy.privacy", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="training examples of the client")
    p.add_argument("--batch-size", type=int, default=32, help="expected (Poisson) batch size")
    p.add_argument("--noise", type=float, required=True, help="noise multiplier sigma")
    p.add_argument("--epochs", type=int, required=True, help="epochs in total (rounds x local epochs)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp", help="privacy accountant")
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.epochs < 1 or args.noise < 0 or not 0 < args.delta < 1:
        print("error: need --n, --batch-size, --epochs >= 1, --noise >= 0 and 0 < --delta < 1", file=sys.stderr)
        return 2
    q, steps = sample_rate(args.n, args.batch_size), args.epochs * steps_per_epoch(args.n, args.batch_size)
    eps = epsilon([(args.noise, q, steps)], args.delta, args.accountant)
    print(
        f"DP-SGD with sampling rate q = {q:.4g} and noise multiplier {args.noise:g} for {steps} steps "
        f"({args.epochs} epochs of {args.n} examples): epsilon = {eps:.3f} at delta = {args.delta:g} "
        f"({args.accountant} accountant)"
    )
    if args.delta >= 1 / args.n:
        print(f"warning: delta >= 1/n = {1 / args.n:.3g}: the guarantee allows leaking a whole record", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
