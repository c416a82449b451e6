"""The Flower ServerApp: builds the strategy (registry + ledger) and the driver, runs the rounds, writes the run
directory.

``sim.py`` builds the app with ``build_server_app(cfg, run_dir)``; ``flwr run .`` uses the module-level ``app``,
which reads the settings from the run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``--run-config``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core import files
from core.config import RunConfig
from core.errors import UserError
from split.model import build_split, joined_state, load_joined
from strategy.checkpoint import Checkpoint, mark_complete, mark_incomplete
from strategy.driver import Driver
from strategy.figures import plot_run
from strategy.head_fit import HeadFitter
from strategy.interception import query_activations, save_intercepted
from strategy.ledger import ClientFailed, LedgerStrategy
from strategy.recorder import RunRecorder
from strategy.registry import entry

PACKAGES = ("torch", "opacus", "flwr", "flwr-datasets", "numpy", "matplotlib", "pillow", "rich")


def default_run_dir(cfg: RunConfig, label: str | None = None) -> Path:
    """``runs/<timestamp>-c<clients>-s<noise>`` (or ``-<label>`` instead of ``-s<noise>``)."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-c{cfg.clients}-{label or f's{cfg.noise:g}'}"


def check_run_dir(path: Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that is a file, a non-empty directory (unless ``overwrite``), or not creatable/writable.

    Creates nothing: the nearest existing ancestor must be a writable directory. Raises UserError.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(
            f"run directory {path} already exists and is not empty; pass --resume {path} to continue it, "
            "--overwrite to replace it, or another --out"
        )
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create --out {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {path}: {existing} is not writable")


RUN_MARKERS = ("config.json", "INCOMPLETE", "report.md", "study.json")  # what only a run (or sweep) directory holds


def clear_run_dir(path: Path) -> None:
    """Empty a run directory before it is reused (``--overwrite``, a study cell started over), so that no file of an
    earlier run is left beside the new one's. UserError for a non-empty directory holding none of ``RUN_MARKERS``:
    ``--overwrite`` never empties a folder that is not a run's."""
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not any((path / name).exists() for name in RUN_MARKERS):
        raise UserError(f"--overwrite {path}: not a run directory (no {' / '.join(RUN_MARKERS)}); not emptying it")
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create the run directory with its INCOMPLETE marker; refuse a non-empty one unless ``overwrite``.

    Raises UserError. ``overwrite`` reuses the directory (its files are replaced as this run writes them).
    """
    check_run_dir(path, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark_incomplete(path, f"training has not finished\n{_resume_hint(path)}")
    except OSError as exc:
        raise UserError(f"cannot write to --out {path} ({exc.strerror or exc})") from None
    return path


def write_config(run_dir: Path, cfg: RunConfig, extra: dict | None = None) -> None:
    """``config.json``: every resolved setting, package versions, and the machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    settings = cfg.settings_dict()
    payload = {
        "settings": settings,
        **(extra or {}),
        "versions": versions,
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    files.write_text(run_dir / "config.json", json.dumps(payload, indent=2) + "\n")


def run_server(
    grid: Grid, cfg: RunConfig, run_dir: Path, console: Console | None = None, resume: Checkpoint | None = None
) -> list[dict]:
    """Train for ``cfg.rounds`` rounds (from ``resume``'s next round if given); write ledger, metrics, a checkpoint
    per round, then model.pt and figures, and remove the INCOMPLETE marker. Returns every round's metrics row.

    On any failure the marker says what happened, and the run can be resumed from its last checkpoint.
    """
    logging.getLogger("flwr").setLevel(logging.WARNING)  # our table reports each round; Flower's INFO would drown it
    console = console or Console()
    torch.manual_seed(cfg.seed)
    device, head = build_split(**cfg.model_options())
    arrays, first_round = ArrayRecord(joined_state(device, head)), 1
    config = ConfigRecord(cfg.to_flwr())
    chosen = entry(cfg.strategy)
    try:
        columns = (TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"))
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task("rounds", total=cfg.rounds, completed=resume.round if resume else 0)
            recorder = RunRecorder(
                run_dir,
                cfg,
                progress.console,
                on_round=lambda _: progress.advance(task),
                resume_after=resume.round if resume else None,
                elapsed_before=resume.elapsed_seconds if resume else 0.0,
            )
            ledger = LedgerStrategy(chosen.build(cfg), recorder, cfg.seed, cfg.clients, cfg.fraction_train)
            fitter = HeadFitter(cfg) if cfg.head_mode == "refit" else None
            driver = Driver(ledger, chosen.state, run_dir, cfg.settings_dict(), recorder.elapsed, head_fitter=fitter)
            if resume:
                arrays, first_round = driver.restore(resume)
            try:
                ledger.identify(grid, config)
                arrays, last = driver.run(grid, arrays, first_round, cfg.rounds, config)
            finally:
                recorder.close()
        if last < cfg.rounds:
            console.print(
                f"[bold yellow]stopped after round {last} of {cfg.rounds}: no client can train another round "
                f"without passing --max-epsilon {cfg.max_epsilon:g}"
            )
        inference = query_activations(grid, arrays, config)
        save_intercepted(run_dir, inference, ledger.intercepted_training, device.out_shape)
        load_joined(device, head, arrays.to_torch_state_dict())
        # Only the weights: the settings are in config.json, their one copy.
        torch.save({"device": device.state_dict(), "head": head.state_dict()}, run_dir / "model.pt")
        plot_run(run_dir)
    except BaseException as exc:
        details = f"\n\n{exc.details}" if isinstance(exc, ClientFailed) else ""
        mark_incomplete(run_dir, f"training stopped: {type(exc).__name__}: {exc}\n{_resume_hint(run_dir)}{details}")
        raise
    mark_complete(run_dir)
    return recorder.rounds


def _resume_hint(run_dir: Path) -> str:
    return f"continue it from its last checkpoint with: python sim.py --resume {run_dir}"


def build_server_app(
    cfg: RunConfig | None = None,
    run_dir: Path | None = None,
    outcome: dict | None = None,
    resume: Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp for ``cfg`` writing to ``run_dir``; with no cfg, the settings come from the Flower run config.

    ``outcome`` (optional) receives ``rounds`` (the metrics rows) on success or ``error`` (a message) on failure, so
    the caller can exit non-zero: the simulation engine itself only logs a ServerApp exception.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_cfg = cfg or RunConfig.from_flwr(dict(context.run_config)).validate()
            out = run_dir or prepare_run_dir(Path(run_cfg.out) if run_cfg.out else default_run_dir(run_cfg))
            if cfg is None:
                write_config(out, run_cfg)
            rounds = run_server(grid, run_cfg, out, resume=resume)
            if outcome is not None:
                outcome["rounds"] = rounds
        except Exception as exc:
            if outcome is not None:
                outcome["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc)
            raise

    return server_app


app = build_server_app()
