"""The Flower ServerApp: builds the strategy (registry + ledger) and the driver, runs the rounds, writes the run
directory.

``simulation.wiring`` builds the app with ``build_server_app(cfg, run_dir)``; ``flwr run .`` uses
``simulation.apps.server_app``, which reads the settings from the run config (``[tool.flwr.app.config]`` in
pyproject.toml, or ``--run-config``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from audit.auditor import Auditor, AuditViolation
from audit.canaries import plan_canaries
from core import files
from core.config import RunConfig
from core.errors import UserError
from core.rundir import RunDir
from data.base import geometry
from split.hijack import has_hijack, server_state
from split.model import build_split, joined_state, load_joined
from split.pretrain import pretrain_device
from split.server import build_server
from strategy.averaging import DeviceEMA
from strategy.checkpoint import Checkpoint
from strategy.driver import Driver
from strategy.head_fit import HeadFitter
from strategy.interception import query_activations
from strategy.ledger import ClientFailed, LedgerStrategy
from strategy.recorder import RunRecorder
from strategy.registry import entry


def run_server(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    console: Console | None = None,
    resume: Checkpoint | None = None,
    on_complete: Callable[[Path], object] | None = None,
) -> list[dict]:
    """Train for ``cfg.rounds`` rounds (from ``resume``'s next round if given); write ledger, metrics, a checkpoint
    per round, then model.pt and intercepted.npz, call ``on_complete(run_dir)`` (the figures), and remove the
    INCOMPLETE marker. Returns every round's metrics row.

    On any failure the marker says what happened, and the run can be resumed from its last checkpoint.
    """
    run = RunDir(run_dir)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # our table reports each round; Flower's INFO would drown it
    console = console or Console()
    torch.manual_seed(cfg.training_seed)
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    if cfg.pretrain == "public" and resume is None:  # the clients start from the public-data device (split.pretrain)
        device.load_state_dict(pretrain_device(cfg, console))
    behaviour = build_server(cfg.server)
    own_arrays = behaviour.initial_arrays(cfg, console) if resume is None else {}  # --server hijack: its models
    arrays, first_round = ArrayRecord({**joined_state(device, head), **own_arrays}), 1
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
            ledger = LedgerStrategy(chosen.build(cfg), recorder, cfg.training_seed, cfg.clients, cfg.fraction_train)
            fitter = HeadFitter(cfg) if cfg.head_mode == "refit" else None
            ema = DeviceEMA(cfg.ema, copy.deepcopy(device)) if cfg.ema else None
            auditor = Auditor(plan_canaries(cfg)) if cfg.audit else None
            driver = Driver(
                ledger,
                chosen.state,
                run_dir,
                cfg.settings_dict(),
                recorder.elapsed,
                head_fitter=fitter,
                ema=ema,
                auditor=auditor,
            )
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
        if auditor is not None:
            write_audit(run, auditor, ledger, cfg, console)
        inference = query_activations(grid, arrays, config)
        run.save_intercepted(inference, ledger.intercepted_training, device.out_shape)
        final = arrays.to_torch_state_dict()
        load_joined(device, head, final)
        # Only the weights: the settings are in config.json, their one copy. A hijacking server's models too.
        model = {"device": device.state_dict(), "head": head.state_dict()}
        if has_hijack(final):
            model["server"] = server_state(final)
        torch.save(model, run.model)
        if on_complete is not None:
            on_complete(run_dir)
    except BaseException as exc:
        details = f"\n\n{exc.details}" if isinstance(exc, ClientFailed) else ""
        run.mark_incomplete(f"training stopped: {type(exc).__name__}: {exc}\n{run.resume_hint()}{details}")
        raise
    run.mark_complete()
    return recorder.rounds


def write_audit(run: RunDir, auditor: Auditor, ledger: LedgerStrategy, cfg: RunConfig, console: Console) -> dict:
    """``audit.json`` from the auditor's scores and the ledger's histories, a line on the console; raises
    AuditViolation (after writing the file) when the lower bound passes the ledger's epsilon."""
    found = auditor.result(ledger.histories, cfg.delta, cfg.accountant)
    files.write_text(run.audit, json.dumps(found, indent=2) + "\n")
    claimed = "inf" if found["epsilon"] is None else f"{found['epsilon']:.3g}"
    console.print(
        f"audit: {found['correct']} of {found['guesses']} guesses right over {found['m']} canaries: "
        f"epsilon >= {found['epsilon_lower']:.3g} at 95 % (the ledger's epsilon {claimed}, delta {cfg.delta:g})"
    )
    if found["violation"]:
        raise AuditViolation(
            f"the audit's lower bound {found['epsilon_lower']:.3g} exceeds the ledger's epsilon {claimed}: the DP "
            f"training does not deliver the epsilon it records (see {run.audit})"
        )
    return found


def build_server_app(
    cfg: RunConfig | None = None,
    run_dir: Path | None = None,
    outcome: dict | None = None,
    resume: Checkpoint | None = None,
    on_complete: Callable[[Path], object] | None = None,
) -> ServerApp:
    """A ServerApp for ``cfg`` writing to ``run_dir``; with no cfg, the settings come from the Flower run config
    (``flwr run .``: ``simulation.apps.server_app``). ``on_complete``: see ``run_server``.

    ``outcome`` (optional) receives ``rounds`` (the metrics rows) on success or ``error`` (a message) on failure, so
    the caller can exit non-zero: the simulation engine itself only logs a ServerApp exception.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_cfg = cfg or RunConfig.from_flwr(dict(context.run_config)).validate()
            out = run_dir or (RunDir(run_cfg.out) if run_cfg.out else RunDir.default(run_cfg)).create().path
            if cfg is None:
                RunDir(out).write_config(run_cfg)
            rounds = run_server(grid, run_cfg, out, resume=resume, on_complete=on_complete)
            if outcome is not None:
                outcome["rounds"] = rounds
        except Exception as exc:
            if outcome is not None:
                outcome["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc)
            raise

    return server_app
