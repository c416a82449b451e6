"""``python sim.py study``: every cell of a grid trained and attacked once per training seed, each run resumed where
it stopped, never recomputed; the report once every run is done. ``--shard K/N`` spreads the runs over processes or
machines sharing ``--out``; a lock per run (study/locks.py) keeps two of them from ever running the same one.

Seeds: run k of a cell trains with ``--train-seed`` = the base's training seed + k on the same shards (``--seed``
stays), in ``<out>/<cell>`` for k = 0 (so a one-seed study is the first seed of a three-seed one) and
``<out>/<cell>.seed<k>`` for the others. Runs are ordered seed by seed: the first seed of every cell comes first."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

from core import files
from core.config import RunConfig
from core.errors import UserError
from core.rundir import ATTACKED, EMPTY, INCOMPLETE, TRAINED, RunDir
from simulation.training import RESUME_MAY_CHANGE
from study.grid import (
    DEFAULT_SEEDS,
    Cell,
    SeedRun,
    check_seeds,
    default_grid,
    matching,
    parse_shard,
    read_grid,
    seed_runs,
    shard_of,
)
from study.locks import held, holder_of

# A cell's state, as the study's table shows it: the run directory's, with "todo" for nothing worth keeping.
TODO, DONE = "todo", "done"
_STATES = {EMPTY: TODO, INCOMPLETE: "incomplete", TRAINED: "trained", ATTACKED: DONE}


def cell_state(cfg: RunConfig, run_dir: Path) -> str:
    """ "todo", "incomplete" (resume it), "trained" (attack it) or "done"; UserError when ``run_dir`` holds a run of
    other settings (a cell is never recomputed, nor silently replaced)."""
    run = RunDir(run_dir)
    state = run.state()
    if state == EMPTY:
        return TODO  # nothing there, or killed before config.json was written: nothing worth keeping
    saved = run.read_config().settings_dict()
    resolved = {"noise"} if cfg.target_epsilon else set()  # sigma comes from the cell's target epsilon
    ignore = {"out", "data_dir", *RESUME_MAY_CHANGE, *resolved}
    wanted = cfg.settings_dict()
    differ = sorted(k for k in wanted if k not in ignore and saved[k] != wanted[k])
    if differ:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); use another --out")
    if state == TRAINED and not run.has_weights():
        return TODO  # a record without its weights (results/ keeps none): nothing to attack, so it trains again
    return _STATES[state]


def run_cell(cell: Cell, cfg: RunConfig, run_dir: Path, state: str) -> None:
    """Bring one cell to "done" from ``state``: train it (from scratch or from its checkpoint), then attack it."""
    from attack.run import run_attack
    from simulation.training import check_resume, plan_privacy, train

    if state in (TODO, "incomplete"):
        chosen = plan_privacy(cfg)  # sigma from the cell's target epsilon, before the checkpoint is checked
        # Killed before its first round's checkpoint: nothing to continue from, so it starts again.
        resumable = state == "incomplete" and RunDir(run_dir).checkpoint.is_file()
        resume = check_resume(cfg, run_dir) if resumable else None
        if resume is None and run_dir.exists():
            RunDir(run_dir).clear()
        train(cfg, run_dir, chosen, resume)
    run_attack(run_dir, cfg.data_dir or None, epochs=cfg.attack_epochs, seed=cfg.training_seed)


def run_study(
    out: Path,
    grid: Path | None = None,
    data_dir: str = "",
    shard: str | None = None,
    list_only: bool = False,
    report_only: bool = False,
    central: Path | None = None,
    seeds: int | None = None,
    cells_glob: str | None = None,
) -> None:
    """Print the runs and their state, then run this shard's unfinished runs (each under its lock, skipping one
    that another live shard holds), then (once every run is done) write the study's report into ``out``, once.
    ``seeds``: training runs per cell (default: ``DEFAULT_SEEDS`` for the built-in grid, 1 for a --grid file).
    ``cells_glob`` (``--cells``): run only the cells it matches (``study.grid.matching``); the report still waits
    for every cell."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from data.base import get_dataset

    if shard is not None:
        parse_shard(shard)  # before anything else, --list included
    if seeds is None:
        seeds = 1 if grid else DEFAULT_SEEDS
    check_seeds(seeds)
    if central is not None and not RunDir(central).metrics.is_file():
        raise UserError(f"--central {central}: not a finished run (no metrics.csv)")
    base_settings, cells = read_grid(grid) if grid else ({}, default_grid())  # read_grid checks its cells
    runs = seed_runs(cells, seeds)
    mine = shard_of(runs, shard) if shard else runs
    mine = matching(mine, cells_glob) if cells_glob else mine
    mine = [] if report_only else mine
    dataset = base_settings.get("dataset", RunConfig.dataset)
    base = RunConfig(**{**base_settings, "data_dir": get_dataset(dataset, data_dir or None).root()})
    configs = {run.name: run.config(base, out) for run in runs}
    states = {run.name: cell_state(configs[run.name], out / run.name) for run in runs}
    console = Console()
    table = Table(title=f"study {out}: {len(cells)} cells x {seeds} training seed(s)")
    for column in ("run", "family", "point", "cut", "train seed", "state"):
        table.add_column(column)
    for run in runs:
        cfg = configs[run.name]
        table.add_row(run.name, run.cell.family, run.cell.label, str(cfg.cut), str(cfg.training_seed), states[run.name])
    console.print(table)
    if list_only:
        return
    todo = [run for run in mine if states[run.name] != DONE]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        described = {"base": base_settings, "seeds": seeds, "cells": [dataclasses.asdict(c) for c in cells]}
        files.write_text(out / "study.json", json.dumps(described, indent=2) + "\n")
    columns = (TextColumn("[bold]study"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("runs", total=len(mine), completed=len(mine) - len(todo))
        for run in todo:
            cfg, run_dir = configs[run.name], out / run.name
            lock = out / f"{run.name}.lock"
            with held(lock) as mine_now:
                if not mine_now:
                    progress.console.print(f"run {run.name}: held by {holder_of(lock)}, left to it")
                    continue
                state = cell_state(cfg, run_dir)  # again, under the lock: another shard may have finished it
                if state == DONE:
                    progress.console.print(f"run {run.name}: finished by another shard")
                else:
                    what = f"{run.cell.family}, {run.cell.label}, cut {cfg.cut}, train seed {cfg.training_seed}"
                    progress.console.rule(f"run {run.name} ({what}): {state}")
                    start = time.time()
                    run_cell(run.cell, cfg, run_dir, state)
                    RunDir(run_dir).add_time(start, time.time(), state, socket.gethostname())
            states[run.name] = DONE
            progress.advance(task)
    states |= {run.name: cell_state(configs[run.name], out / run.name) for run in runs if states[run.name] != DONE}
    missing = [run.name for run in runs if states[run.name] != DONE]
    if missing:
        console.print(f"report: not written yet, {len(missing)} run(s) to finish: {', '.join(missing)}")
        return
    write_report_once(out, runs, central, console, force=report_only)


def write_report_once(out: Path, runs: list[SeedRun], central, console, force: bool = False) -> None:
    """The study's report, written by one process: under ``report.lock``, and (unless ``force``: --report-only)
    only when report.html is older than some run's leakage.json, so two shards finishing together, or a rerun of a
    finished study, write it once."""
    from report.study_page import write_study_report

    report = out / "report.html"
    with held(out / "report.lock") as mine:
        if not mine:
            console.print(f"report: being written by {holder_of(out / 'report.lock')}")
            return
        newest = max((out / run.name / "leakage.json").stat().st_mtime_ns for run in runs)
        if not force and central is None and report.exists() and report.stat().st_mtime_ns > newest:
            console.print(f"report: {report} (up to date)")
            return
        cells = [(run.cell.for_report(), out / run.name) for run in runs]
        print(f"report: {write_study_report(out, cells, central=central)}")
