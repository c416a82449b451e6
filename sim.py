"""Split federated learning on Omniglot with DP-SGD: train, then measure what the server can reconstruct.

A thin command line: it parses flags and dispatches; the work lives in the rooms below it.

    python sim.py [flags]            train + attack (simulation.training)
    python sim.py study [flags]      a grid of trainings + attacks, then the study's report (study.runner)
    python sim.py attack RUN_DIR...  attack finished runs again (attack.run)
    python sim.py epsilon [flags]    epsilon of DP-SGD from (N, batch, sigma, epochs, delta) (core.privacy)

Installed as the console script ``splitfed`` too. ``python sim.py <command> --help`` for each command's flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.config import ATTACK, AUDIT, DP_TRAINING, FEDERATION, RUN, SPLIT, RunConfig, flag_name, settings
from core.errors import UserError


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _OneLineParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """``sim.py``'s training flags: every RunConfig setting (help, choices and group from the field; registry-backed
    choices from the registry itself), plus the action flags.

    ``suppress_defaults``: flags not given are left out of the namespace (``explicit_flags``).
    """
    from simulation.registries import choices

    p = _parser("sim.py", "Split federated learning with per-client DP-SGD (Opacus) in a Flower simulation.")
    if suppress_defaults:
        p.argument_default = argparse.SUPPRESS
    groups = {name: p.add_argument_group(name) for name in (FEDERATION, DP_TRAINING, SPLIT, RUN, ATTACK, AUDIT)}
    for f in settings():
        meta = f.metadata
        allowed = choices(meta["registry"]) if meta["registry"] else meta["choices"]
        kwargs = {"help": meta["help"] + (f" ({', '.join(allowed)})" if allowed else ""), **meta["cli"]}
        if not suppress_defaults:
            kwargs["default"] = [f.default] if meta["cli"].get("nargs") else f.default
        if not isinstance(f.default, str):  # choices are checked by validate / check_registered, with one line
            kwargs["type"] = type(f.default)
        groups[meta["group"]].add_argument(f"--{flag_name(f.name)}", **kwargs)
    run, atk = groups[RUN], groups[ATTACK]
    flag = {"action": "store_true"} if not suppress_defaults else {"action": "store_true", "default": argparse.SUPPRESS}
    run.add_argument("--download", help="download missing official zips (needs internet)", **flag)
    run.add_argument("--overwrite", help="reuse a non-empty --out directory", **flag)
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        type=Path,
        help="continue an unfinished run from its last checkpoint, with its saved settings (flags given must agree)",
        **({} if suppress_defaults else {"default": None}),
    )
    run.add_argument("--dry-run", help="load data, build shards, print them; no training", **flag)
    atk.add_argument("--skip-attack", help="train only; attack later with python sim.py attack RUN_DIR", **flag)
    return p


def parse_config(argv: Sequence[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Training flags -> validated RunConfig for the first --noise value (UserError on the first bad value)."""
    from attack.registry import parse_attacks
    from simulation.registries import check_registered
    from simulation.training import configs_for, given_settings, resume_config

    args = build_parser().parse_args(argv)
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces one; pass only one of them")
        if len(args.noise) > 1:
            raise UserError("--resume continues one training; do not give several --noise values")
        given = given_settings(vars(build_parser(suppress_defaults=True).parse_args(argv)))
        if "noise" in given:
            given["noise"] = given["noise"][0]
        return check_registered(resume_config(args.resume, given)), args
    values = {k: v for k, v in given_settings(vars(args)).items() if k != "noise"}
    cfg = configs_for(RunConfig(**values, noise=args.noise[0]), args.noise)[0]
    check_registered(cfg)
    parse_attacks(cfg.attacks)  # checked even with --skip-attack: a later attack reads them from config.json
    return cfg, args


def train_command(argv: Sequence[str]) -> None:
    from simulation.training import dry_run, run

    cfg, args = parse_config(argv)
    if args.dry_run:
        dry_run(cfg, args.download)
        return
    run(cfg, args.noise, resume=args.resume, overwrite=args.overwrite, skip_attack=args.skip_attack)


def study_command(argv: Sequence[str]) -> None:
    from study.runner import run_study

    p = _parser("sim.py study", "Run a grid of trainings + attacks (study/grid.py) and write report.html / report.md.")
    p.add_argument("--grid", type=Path, help="TOML grid file ([base] settings, [[cells]]); default: the built-in grid")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="study directory: one run directory per cell")
    p.add_argument("--data-dir", default="", help="Omniglot zips/folders; else $OMNIGLOT_ROOT, ./data/omniglot")
    p.add_argument("--shard", help="K/N: every N-th run from the K-th (N processes or machines sharing --out)")
    p.add_argument(
        "--seeds",
        type=int,
        help="training runs per cell (other --train-seed, same shards): default 3 for the built-in grid, 1 with --grid",
    )
    p.add_argument(
        "--cells", help="comma-separated globs: run only the cells they match, e.g. 'cut2-*' (the report waits for all)"
    )
    p.add_argument("--list", action="store_true", help="print the runs and their state; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished cells; run nothing")
    p.add_argument(
        "--central",
        type=Path,
        help="a finished centralised run (sim.py --clients 1 --partition iid --noise 0): its val acc is drawn as the "
        "accuracy ceiling",
    )
    a = p.parse_args(argv)
    run_study(a.out, a.grid, a.data_dir, a.shard, a.list, a.report_only, a.central, seeds=a.seeds, cells_glob=a.cells)


def attack_command(argv: Sequence[str]) -> None:
    from attack.registry import attack_names, parse_attacks
    from attack.run import run_attack
    from data.base import SURROGATES
    from report.sweep import write_report

    p = _parser("sim.py attack", "Attack finished run directories again; writes each run's leakage files.")
    p.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories (with model.pt, intercepted.npz)")
    p.add_argument("--attack-epochs", type=int, help="most decoder epochs, each stops early (default: the run's)")
    p.add_argument(
        "--attacks",
        nargs="+",
        metavar="NAME",
        help=f"attacks, space- or comma-separated, the first drawn beside the best: {', '.join(attack_names())} "
        "(default: the run's)",
    )
    p.add_argument("--surrogate", choices=tuple(SURROGATES), help="the attacker's public images (default: the run's)")
    p.add_argument("--whitebox-images", type=int, help="unseen images a white-box attack reconstructs (default: run's)")
    p.add_argument("--data-dir", help="data root (default: the run's, else $OMNIGLOT_ROOT)")
    p.add_argument("--report", type=Path, help="write leakage_vs_epsilon + report.md here (several runs)")
    p.add_argument("--seed", type=int, default=0, help="seed for attack weights, batches, shown images")
    a = p.parse_args(argv)
    for name in ("attack_epochs", "whitebox_images"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise UserError(f"--{flag_name(name)} must be a positive integer, got {getattr(a, name)}")
    attacks = parse_attacks(a.attacks) if a.attacks is not None else None
    for run_dir in a.run_dirs:
        run_attack(
            run_dir,
            a.data_dir,
            a.attack_epochs,
            seed=a.seed,
            attacks=attacks,
            surrogate=a.surrogate,
            whitebox_images=a.whitebox_images,
        )
    report_dir = a.report or (a.run_dirs[0] if len(a.run_dirs) == 1 else None)
    if report_dir:
        print(f"report: {write_report(report_dir, a.run_dirs)}")


def epsilon_command(argv: Sequence[str]) -> None:
    from core.privacy import ACCOUNTANTS, describe_dp_sgd

    p = _parser("sim.py epsilon", "epsilon of DP-SGD from (N, batch, noise, epochs, delta), as training counts it.")
    p.add_argument("--n", type=int, required=True, help="training examples of the client")
    p.add_argument("--batch-size", type=int, default=32, help="expected (Poisson) batch size")
    p.add_argument("--noise", type=float, required=True, help="noise multiplier sigma")
    p.add_argument("--epochs", type=int, required=True, help="epochs in total (rounds x local epochs)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta")
    p.add_argument("--accountant", choices=tuple(ACCOUNTANTS), default="rdp", help="privacy accountant")
    a = p.parse_args(argv)
    if a.n < 1 or a.batch_size < 1 or a.epochs < 1 or a.noise < 0 or not 0 < a.delta < 1:
        raise UserError("need --n, --batch-size, --epochs >= 1, --noise >= 0 and 0 < --delta < 1")
    print(describe_dp_sgd(a.n, a.batch_size, a.noise, a.epochs, a.delta, a.accountant))
    if a.delta >= 1 / a.n:
        print(f"warning: delta >= 1/n = {1 / a.n:.3g}: the guarantee allows leaking a whole record", file=sys.stderr)


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "study": study_command,
    "attack": attack_command,
    "epsilon": epsilon_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command (train when the first word is not one); 2 for a user's error, 1 for a failed run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        if command is not None:
            command(argv[1:])
        else:
            train_command(argv)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
