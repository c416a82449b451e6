"""Re-run the attack alone on finished run directories: ``python -m attack RUN_DIR [RUN_DIR ...]``.

Writes each run's leakage files; with several run directories, also the leakage-per-epsilon report (``--report``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attack.registry import attack_names, parse_attacks
from core.config import SURROGATES
from core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attack", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories (with model.pt, intercepted.npz)")
    p.add_argument(
        "--attack-epochs",
        type=int,
        default=None,
        help="most decoder epochs over the surrogate, each stops early (default: the run's)",
    )
    p.add_argument(
        "--attacks",
        "--decoders",
        dest="attacks",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"attacks, space- or comma-separated, the first is drawn beside the best; choices: "
        f"{', '.join(attack_names())} (default: the run's)",
    )
    p.add_argument(
        "--surrogate", choices=SURROGATES, default=None, help="the attacker's public images (default: the run's)"
    )
    p.add_argument(
        "--whitebox-images",
        type=int,
        default=None,
        help="unseen images a white-box attack reconstructs (default: the run's)",
    )
    p.add_argument("--data-dir", default=None, help="Omniglot root (default: the run's, else $OMNIGLOT_ROOT)")
    p.add_argument("--report", type=Path, default=None, help="write leakage_vs_epsilon + report.md here")
    p.add_argument("--seed", type=int, default=0, help="seed for attack weights, batches, shown images")
    args = p.parse_args(argv)
    from attack.report import write_report
    from attack.run import run_attack

    try:
        if args.attack_epochs is not None and args.attack_epochs < 1:
            raise UserError(f"--attack-epochs must be a positive integer, got {args.attack_epochs}")
        if args.whitebox_images is not None and args.whitebox_images < 1:
            raise UserError(f"--whitebox-images must be a positive integer, got {args.whitebox_images}")
        attacks = parse_attacks(args.attacks) if args.attacks is not None else None
        for run_dir in args.run_dirs:
            run_attack(
                run_dir,
                args.data_dir,
                args.attack_epochs,
                seed=args.seed,
                attacks=attacks,
                surrogate=args.surrogate,
                whitebox_images=args.whitebox_images,
            )
        report_dir = args.report or (args.run_dirs[0] if len(args.run_dirs) == 1 else None)
        if report_dir:
            print(f"report: {write_report(report_dir, args.run_dirs)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
