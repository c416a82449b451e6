"""The Flower ServerApp: hosts the head, runs SplitFedAvg for the configured rounds, writes the run directory.

``sim.py`` builds the app with ``build_server_app(cfg, run_dir)``; ``flwr run .`` uses the module-level ``app``,
which reads the settings from the run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``--run-config``).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients.config import RunConfig
from clients.errors import UserError
from split.model import build_split, joined_state, load_joined
from strategy.figures import plot_run
from strategy.interception import query_activations, save_intercepted
from strategy.recorder import RunRecorder
from strategy.splitfed import SplitFedAvg

PACKAGES = ("torch", "opacus", "flwr", "flwr-datasets", "numpy", "matplotlib", "pillow", "rich")


def default_run_dir(cfg: RunConfig, label: str | None = None) -> Path:
    """``runs/<timestamp>-c<clients>-s<noise>`` (or ``-<label>`` instead of ``-s<noise>``)."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-c{cfg.clients}-{label or f's{cfg.noise:g}'}"


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create the run directory; refuse a non-empty one unless ``overwrite``. Raises UserError."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"run directory {path} already exists and is not empty; pass --overwrite or another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
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
    settings = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    payload = {
        "settings": settings,
        **(extra or {}),
        "versions": versions,
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    (run_dir / "config.json").write_text(json.dumps(payload, indent=2) + "\n")


def run_server(grid: Grid, cfg: RunConfig, run_dir: Path, console: Console | None = None) -> list[dict]:
    """Train for ``cfg.rounds`` rounds; write ledger, metrics, model.pt and figures. Returns the metrics rows."""
    logging.getLogger("flwr").setLevel(logging.WARNING)  # our table reports each round; Flower's INFO would drown it
    console = console or Console()
    random.seed(cfg.seed)  # Flower samples clients with `random`
    torch.manual_seed(cfg.seed)
    device, head = build_split(cfg.dropout, cfg.norm_groups)
    strategy_kwargs = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.clients,
    )
    columns = (TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("rounds", total=cfg.rounds)
        recorder = RunRecorder(run_dir, cfg, progress.console, on_round=lambda _: progress.advance(task))
        strategy = SplitFedAvg(recorder, **strategy_kwargs)
        try:
            result = strategy.start(
                grid,
                ArrayRecord(joined_state(device, head)),
                num_rounds=cfg.rounds,
                train_config=ConfigRecord(cfg.to_flwr()),
                evaluate_config=ConfigRecord(cfg.to_flwr()),
            )
        finally:
            recorder.close()
    inference = query_activations(grid, result.arrays, ConfigRecord(cfg.to_flwr()))
    save_intercepted(run_dir, inference, strategy.intercepted_training)
    load_joined(device, head, result.arrays.to_torch_state_dict())
    torch.save(
        {"device": device.state_dict(), "head": head.state_dict(), "config": cfg.to_flwr()}, run_dir / "model.pt"
    )
    plot_run(run_dir)
    return recorder.rounds


def build_server_app(
    cfg: RunConfig | None = None, run_dir: Path | None = None, outcome: dict | None = None
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
            rounds = run_server(grid, run_cfg, out)
            if outcome is not None:
                outcome["rounds"] = rounds
        except Exception as exc:
            if outcome is not None:
                outcome["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc)
            raise

    return server_app


app = build_server_app()
