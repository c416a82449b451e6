"""Split federated learning on Omniglot with DP-SGD: train, then measure what the server can reconstruct.

Wiring only: parse flags -> RunConfig -> data + shards -> Flower simulation (strategy/) -> report.
Run ``python sim.py --help`` for every flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ATTACK, DP_TRAINING, FEDERATION, RUN, SPLIT, RunConfig, flag_name, settings
from core.errors import UserError
from core.privacy import EPSILON_COVERS

if TYPE_CHECKING:
    from strategy.checkpoint import Checkpoint

D = RunConfig()


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Every RunConfig setting as a flag (help, choices and group from the field), plus the action flags.

    ``suppress_defaults``: flags not given are left out of the namespace (``explicit_flags``).
    """
    p = _OneLineParser(
        prog="sim.py",
        description="Split federated learning on Omniglot with per-client DP-SGD (Opacus) in a Flower simulation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    groups = {name: p.add_argument_group(name) for name in (FEDERATION, DP_TRAINING, SPLIT, RUN, ATTACK)}
    for f in settings():
        meta = f.metadata
        help_text = meta["help"] + (f" ({', '.join(meta['choices'])})" if meta["choices"] else "")
        kwargs = {"help": help_text, **meta["cli"]}
        if not suppress_defaults:
            kwargs["default"] = [f.default] if meta["cli"].get("nargs") else f.default
        if not isinstance(f.default, str):  # choices are checked by RunConfig.validate, with one clear line
            kwargs["type"] = type(f.default)
        groups[meta["group"]].add_argument(f"--{flag_name(f.name)}", **kwargs)
    run, atk = groups[RUN], groups[ATTACK]
    flag = {"action": "store_true"} if not suppress_defaults else {"action": "store_true", "default": argparse.SUPPRESS}
    run.add_argument("--download", help="download missing official zips (needs internet)", **flag)
    run.add_argument("--overwrite", help="reuse a non-empty --out directory", **flag)
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an unfinished run from its last checkpoint, with its saved settings (flags given must agree)",
        **({} if suppress_defaults else {"default": None}),
    )
    run.add_argument("--dry-run", help="load data, build shards, print them; no training", **flag)
    atk.add_argument("--skip-attack", help="train only; attack later with python -m attack", **flag)
    return p


# Settings a resumed run may change: where the data is, what hardware runs it, and the attack that follows
# training; not what training computes.
RESUME_MAY_CHANGE = (
    "data_dir",
    "device",
    "cpus_per_client",
    "gpus_per_client",
    "attack_epochs",
    "attacks",
    "surrogate",
    "whitebox_images",
)


def explicit_flags(argv: Sequence[str] | None) -> set[str]:
    """The RunConfig / flag names (``local_epochs``) given on the command line, as opposed to defaulted."""
    return set(vars(build_parser(suppress_defaults=True).parse_args(argv)))


def resume_config(args: argparse.Namespace, argv: Sequence[str] | None) -> RunConfig:
    """The saved settings of ``--resume RUN_DIR``, with the flags that may change applied; UserError if a flag given
    on the command line disagrees with the run's config.json."""
    run_dir = Path(args.resume)
    if args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces one; pass only one of them")
    if len(args.noise) > 1:
        raise UserError("--resume continues one training; do not give several --noise values")
    try:
        saved = json.loads((run_dir / "config.json").read_text())["settings"]
    except FileNotFoundError:
        raise UserError(f"--resume {run_dir}: no config.json there; is it a run directory?") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--resume {run_dir}: config.json is unreadable ({type(exc).__name__})") from None
    given = explicit_flags(argv)
    if "out" in given and Path(args.out).resolve() != run_dir.resolve():
        raise UserError(f"--resume {run_dir} writes into that run directory; --out {args.out} differs")
    names = {f.name for f in settings()}
    values = {k: v for k, v in saved.items() if k in names}
    for name in sorted(given & names - {"out"}):
        value = args.noise[0] if name == "noise" else getattr(args, name)
        if name in RESUME_MAY_CHANGE:
            values[name] = value
        elif value != values.get(name, getattr(D, name)):
            raise UserError(
                f"--resume {run_dir}: --{name.replace('_', '-')} {value} differs from the run's "
                f"{values.get(name, getattr(D, name))} (config.json); a resumed run keeps its settings"
            )
    values["out"] = str(run_dir)
    try:
        return RunConfig(**values).validate()
    except TypeError as exc:
        raise UserError(f"--resume {run_dir}: config.json has unexpected settings ({exc})") from None


def parse_config(argv: Sequence[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Flags -> validated RunConfig for the first --noise value (raises UserError on the first bad value)."""
    args = build_parser().parse_args(argv)
    if args.resume:
        return resume_config(args, argv), args
    names = {f.name for f in settings()}
    values = {k: v for k, v in vars(args).items() if k in names and k != "noise"}
    for sigma in args.noise:  # each value must be valid on its own
        RunConfig(**values, noise=sigma).validate()
    if len(args.noise) != len(set(args.noise)):
        raise UserError(f"--noise has repeated values: {args.noise}")
    if len(args.noise) > 1 and args.target_epsilon:
        raise UserError("--target-epsilon picks one noise value; do not combine it with several --noise values")
    cfg = RunConfig(**values, noise=args.noise[0]).validate()
    # Checked even with --skip-attack: a later `python -m attack` reads them from config.json.
    from attack.registry import parse_attacks

    parse_attacks(cfg.attacks)
    return cfg, args


def dry_run(cfg: RunConfig, download: bool) -> None:
    """Load the evaluation set, build the shards and print one row per client."""
    from rich.console import Console
    from rich.table import Table

    from clients.data import EVALUATION, load_set
    from clients.shards import build_shards

    data = load_set(EVALUATION, cfg.data_dir, download=download)
    shards = build_shards(data.alphabet, cfg)
    table = Table(title=f"{cfg.clients} clients, --partition {cfg.partition} (seed {cfg.seed})")
    for column in ("client", "alphabets", "train", "val", "images"):
        table.add_column(column, justify="left" if column == "alphabets" else "right")
    for shard in shards:
        names = sorted({data.alphabet_names[a] for a in data.alphabet[shard.indices]})
        shown = ", ".join(names) if len(names) <= 3 else f"{len(names)}: {', '.join(names[:2])}, ..."
        table.add_row(
            str(shard.partition_id), shown, str(len(shard.train)), str(len(shard.val)), str(len(shard.indices))
        )
    n_train, n_val = sum(len(s.train) for s in shards), sum(len(s.val) for s in shards)
    table.add_section()
    table.add_row(
        "total", f"{len(data.alphabet_names)} alphabets", f"{n_train:,}", f"{n_val:,}", f"{n_train + n_val:,}"
    )
    Console().print(table)


def plan_privacy(cfg: RunConfig) -> dict:
    """Check delta against each client's training-set size and resolve --target-epsilon into --noise.

    Returns what was chosen (for config.json). Warns when delta >= 1/n for some client: such a delta allows the
    mechanism to reveal a whole record outright.
    """
    from clients.data import EVALUATION, load_set
    from clients.shards import build_shards
    from core.privacy import noise_for_clients

    n_trains = [len(s.train) for s in build_shards(load_set(EVALUATION, cfg.data_dir).alphabet, cfg)]
    if cfg.delta >= 1 / min(n_trains):
        print(
            f"warning: --delta {cfg.delta:g} >= 1/n for the smallest client (n = {min(n_trains)}); "
            f"use delta < {1 / max(n_trains):.2g}",
            file=sys.stderr,
        )
    if not cfg.target_epsilon:
        return {}
    epochs = cfg.rounds * cfg.local_epochs
    try:
        cfg.noise = noise_for_clients(cfg.target_epsilon, cfg.delta, n_trains, cfg.batch_size, epochs, cfg.accountant)
    except ValueError as exc:
        raise UserError(f"--target-epsilon: {exc}") from None
    print(f"--target-epsilon {cfg.target_epsilon:g}: noise multiplier {cfg.noise:.4f} ({cfg.accountant})")
    return {"noise_from_target_epsilon": cfg.noise}


def train(cfg: RunConfig, run_dir: Path, chosen: dict, resume: Checkpoint | None = None) -> Path:
    """Train with Flower into ``run_dir`` (created here, or continued from ``resume``); print a one-line result.

    ``chosen``: what ``plan_privacy`` resolved, for config.json.
    """
    from strategy.server_app import prepare_run_dir, write_config
    from strategy.simulation import run_training

    if resume is None:
        prepare_run_dir(run_dir, overwrite=True)  # checked free (or --overwrite) before anything was created
        cfg.out = str(run_dir)
        write_config(run_dir, cfg, chosen)
    rows = run_training(cfg, run_dir, resume)
    last = rows[-1]
    print(
        f"trained: {len(rows)} rounds, val acc {last['val_acc']:.3f}, epsilon {last['epsilon_min']:.3g}..."
        f"{last['epsilon_max']:.3g} ({cfg.accountant}, delta={cfg.delta:g}); run directory {run_dir}\n"
        f"  note: {EPSILON_COVERS}"
    )
    return run_dir


def check_resume(cfg: RunConfig, run_dir: Path) -> Checkpoint:
    """The checkpoint to continue from; UserError if the run has finished or the checkpoint disagrees with ``cfg``."""
    from strategy.checkpoint import is_incomplete, load_checkpoint

    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    if not is_incomplete(run_dir):
        raise UserError(f"--resume {run_dir}: that run has finished; nothing to resume")
    ckpt = load_checkpoint(run_dir)
    differ = [k for k in ckpt.mismatches(cfg.settings_dict()) if k not in RESUME_MAY_CHANGE + ("out",)]
    if differ:
        raise UserError(f"--resume {run_dir}: checkpoint.pt was written with other settings ({', '.join(differ)})")
    return ckpt


def run_all(cfg: RunConfig, args: argparse.Namespace) -> None:
    """One training (and attack) per --noise value with the same seed and shards, then the report.

    Everything a user can get wrong (data, shards, the output directories) is checked before anything is created,
    so a bad input leaves no run directory behind.
    """
    from clients.data import resolve_root
    from strategy.server_app import check_run_dir, clear_run_dir, default_run_dir

    noises = list(args.noise)
    resume = None
    if args.resume:
        run_dirs, report_dir = [Path(args.resume)], Path(args.resume)
        resume = check_resume(cfg, report_dir)
        plan_privacy(dataclasses.replace(cfg, target_epsilon=0.0))  # the data is still there and still shards
        configs, chosen = [cfg], [{}]
    else:
        if len(noises) == 1:
            out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
            run_dirs, report_dir = [out], out
        else:
            report_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg, label="sweep")
            run_dirs = [report_dir / f"s{sigma:g}" for sigma in noises]
        for run_dir in {report_dir, *run_dirs}:
            check_run_dir(run_dir, args.overwrite)
        if args.overwrite:
            clear_run_dir(report_dir)  # a sweep's report directory holds its runs: no stale file of an earlier one
        configs = [dataclasses.replace(cfg, noise=sigma) for sigma in noises]
        chosen = [plan_privacy(c) for c in configs]  # also fails fast on missing data and builds the cache
        if len(noises) > 1:
            report_dir.mkdir(parents=True, exist_ok=True)  # holds the report; each s<sigma>/ run has its marker
    for run_cfg in configs:
        run_cfg.data_dir = str(resolve_root(run_cfg.data_dir).resolve())  # workers may start elsewhere
    for run_cfg, run_dir, plan in zip(configs, run_dirs, chosen, strict=True):
        train(run_cfg, run_dir, plan, resume)
        if not args.skip_attack:
            from attack.run import run_attack

            run_attack(run_dir, cfg.data_dir or None, epochs=run_cfg.attack_epochs, seed=cfg.seed)
    if not args.skip_attack:
        from attack.report import write_report
        from attack.study_report import write_study_report
        from core.study import Cell

        print(f"report: {write_report(report_dir, run_dirs)}")
        # The same page as the study's, for these runs: each one a point of the DP-SGD curve.
        pairs = zip(configs, run_dirs, strict=True)
        cells = [Cell(os.path.relpath(d, report_dir), "dp", {"noise": c.noise}) for c, d in pairs]
        named = {cell.name: c for cell, c in zip(cells, configs, strict=True)}
        print(f"report: {write_study_report(report_dir, cells, named, markdown=False)} (open it in a browser)")


STUDY_OUT = Path("runs/study")


def build_study_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="sim.py study",
        description="Run a grid of trainings + attacks (the study, core/study.py) and write report.html / report.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--grid", type=Path, help="TOML grid file ([base] settings, [[cells]]); default: the built-in grid")
    p.add_argument("--out", type=Path, default=STUDY_OUT, help="study directory: one run directory per cell")
    p.add_argument("--data-dir", default="", help="Omniglot zips/folders; else $OMNIGLOT_ROOT, ./data/omniglot")
    p.add_argument("--shard", help="K/N: run every N-th cell from the K-th (N machines sharing --out)")
    p.add_argument("--list", action="store_true", help="print the cells and their state; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished cells; run nothing")
    p.add_argument(
        "--central",
        type=Path,
        help="a finished centralised run (sim.py --clients 1 --partition iid --noise 0): its val acc is drawn as the "
        "accuracy ceiling",
    )
    return p


def cell_state(cfg: RunConfig, run_dir: Path) -> str:
    """ "todo", "incomplete" (resume it), "trained" (attack it) or "done"; UserError when ``run_dir`` holds a run of
    other settings (a cell is never recomputed, nor silently replaced)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "todo"
    try:
        saved = json.loads((run_dir / "config.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return "todo"  # killed before config.json was written: nothing worth keeping
    resolved = {"noise"} if cfg.target_epsilon else set()  # sigma comes from the cell's target epsilon
    ignore = {"out", "data_dir", *RESUME_MAY_CHANGE, *resolved}
    wanted = cfg.settings_dict()
    differ = sorted(k for k in wanted if k not in ignore and saved.get(k, getattr(D, k)) != wanted[k])
    if differ:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); use another --out")
    if (run_dir / "INCOMPLETE").exists():
        return "incomplete"
    if not (run_dir / "leakage.json").exists() or not (run_dir / "attack.json").exists():
        return "trained"
    return "done"


def run_study(argv: Sequence[str]) -> None:
    """``python sim.py study``: every cell of the grid (or of ``--shard``) trained and attacked once, resumed where
    it stopped, never recomputed; then the report, once every cell of the grid is done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from attack.run import run_attack
    from clients.data import resolve_root
    from core import files
    from core.study import default_grid, read_grid, shard_of
    from strategy.server_app import clear_run_dir

    args = build_study_parser().parse_args(argv)
    if args.central is not None and not (args.central / "metrics.csv").is_file():
        raise UserError(f"--central {args.central}: not a finished run (no metrics.csv)")
    base_settings, cells = read_grid(args.grid) if args.grid else ({}, default_grid())  # read_grid checks its cells
    data_dir = str(resolve_root(args.data_dir or None).resolve())
    base = RunConfig(**{**base_settings, "data_dir": data_dir})
    configs = {cell.name: cell.config(base, args.out) for cell in cells}
    states = {cell.name: cell_state(configs[cell.name], args.out / cell.name) for cell in cells}
    console = Console()
    table = Table(title=f"study {args.out}: {len(cells)} cells")
    for column in ("cell", "family", "point", "cut", "state"):
        table.add_column(column)
    for cell in cells:
        table.add_row(cell.name, cell.family, cell.label, str(configs[cell.name].cut), states[cell.name])
    console.print(table)
    if args.list:
        return
    mine = [] if args.report_only else shard_of(cells, args.shard) if args.shard else cells
    todo = [cell for cell in mine if states[cell.name] != "done"]
    if todo:
        args.out.mkdir(parents=True, exist_ok=True)
        grid = {"base": base_settings, "cells": [dataclasses.asdict(c) for c in cells]}
        files.write_text(args.out / "study.json", json.dumps(grid, indent=2) + "\n")
    columns = (TextColumn("[bold]study"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("cells", total=len(mine), completed=len(mine) - len(todo))
        for cell in todo:
            cfg, run_dir = configs[cell.name], args.out / cell.name
            progress.console.rule(f"cell {cell.name} ({cell.family}, {cell.label}, cut {cfg.cut}): {states[cell.name]}")
            if states[cell.name] in ("todo", "incomplete"):
                chosen = plan_privacy(cfg)  # sigma from the cell's target epsilon, before the checkpoint is checked
                resume = check_resume(cfg, run_dir) if states[cell.name] == "incomplete" else None
                if resume is None and run_dir.exists():
                    clear_run_dir(run_dir)
                train(cfg, run_dir, chosen, resume)
            run_attack(run_dir, cfg.data_dir or None, epochs=cfg.attack_epochs, seed=cfg.seed)
            states[cell.name] = "done"
            progress.advance(task)
    missing = [cell.name for cell in cells if states[cell.name] != "done"]
    if missing:
        console.print(f"report: not written yet, {len(missing)} cell(s) to finish: {', '.join(missing)}")
        return
    from attack.study_report import write_study_report

    print(f"report: {write_study_report(args.out, cells, configs, central=args.central)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["study"]:
            run_study(argv[1:])
            return 0
        cfg, args = parse_config(argv)
        if args.dry_run:
            dry_run(cfg, args.download)
        else:
            run_all(cfg, args)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
