"""``python sim.py study``: every cell of a grid trained and attacked once, resumed where it stopped, never
recomputed; the report once every cell is done. ``--shard K/N`` spreads the cells over machines sharing ``--out``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from core import files
from core.config import RunConfig
from core.errors import UserError
from core.rundir import ATTACKED, EMPTY, INCOMPLETE, TRAINED, RunDir
from simulation.training import RESUME_MAY_CHANGE
from study.grid import Cell, default_grid, read_grid, shard_of

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
    return _STATES[state]


def run_cell(cell: Cell, cfg: RunConfig, run_dir: Path, state: str) -> None:
    """Bring one cell to "done" from ``state``: train it (from scratch or from its checkpoint), then attack it."""
    from attack.run import run_attack
    from simulation.training import check_resume, plan_privacy, train

    if state in (TODO, "incomplete"):
        chosen = plan_privacy(cfg)  # sigma from the cell's target epsilon, before the checkpoint is checked
        resume = check_resume(cfg, run_dir) if state == "incomplete" else None
        if resume is None and run_dir.exists():
            RunDir(run_dir).clear()
        train(cfg, run_dir, chosen, resume)
    run_attack(run_dir, cfg.data_dir or None, epochs=cfg.attack_epochs, seed=cfg.seed)


def run_study(
    out: Path,
    grid: Path | None = None,
    data_dir: str = "",
    shard: str | None = None,
    list_only: bool = False,
    report_only: bool = False,
    central: Path | None = None,
) -> None:
    """Print the cells and their state, then run this shard's unfinished cells, then (once the whole grid is done)
    write the study's report into ``out``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from data.omniglot import resolve_root

    if central is not None and not RunDir(central).metrics.is_file():
        raise UserError(f"--central {central}: not a finished run (no metrics.csv)")
    base_settings, cells = read_grid(grid) if grid else ({}, default_grid())  # read_grid checks its cells
    mine = shard_of(cells, shard) if shard else cells  # --shard is checked before anything, --list included
    mine = [] if report_only else mine
    base = RunConfig(**{**base_settings, "data_dir": str(resolve_root(data_dir or None).resolve())})
    configs = {cell.name: cell.config(base, out) for cell in cells}
    states = {cell.name: cell_state(configs[cell.name], out / cell.name) for cell in cells}
    console = Console()
    table = Table(title=f"study {out}: {len(cells)} cells")
    for column in ("cell", "family", "point", "cut", "state"):
        table.add_column(column)
    for cell in cells:
        table.add_row(cell.name, cell.family, cell.label, str(configs[cell.name].cut), states[cell.name])
    console.print(table)
    if list_only:
        return
    todo = [cell for cell in mine if states[cell.name] != DONE]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        described = {"base": base_settings, "cells": [dataclasses.asdict(c) for c in cells]}
        files.write_text(out / "study.json", json.dumps(described, indent=2) + "\n")
    columns = (TextColumn("[bold]study"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("cells", total=len(mine), completed=len(mine) - len(todo))
        for cell in todo:
            cfg = configs[cell.name]
            progress.console.rule(f"cell {cell.name} ({cell.family}, {cell.label}, cut {cfg.cut}): {states[cell.name]}")
            run_cell(cell, cfg, out / cell.name, states[cell.name])
            states[cell.name] = DONE
            progress.advance(task)
    missing = [cell.name for cell in cells if states[cell.name] != DONE]
    if missing:
        console.print(f"report: not written yet, {len(missing)} cell(s) to finish: {', '.join(missing)}")
        return
    from report.study_page import write_study_report

    print(f"report: {write_study_report(out, cells, configs, central=central)}")
