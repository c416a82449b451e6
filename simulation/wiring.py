"""Run the ClientApp and ServerApp in Flower's Simulation Engine (Ray), one virtual SuperNode per client."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from clients import fault_injection
from clients.client_app import build_client_app
from core.config import RunConfig
from report.run_figures import plot_run
from strategy.checkpoint import Checkpoint
from strategy.server_app import build_server_app


def run_training(cfg: RunConfig, run_dir: Path, resume: Checkpoint | None = None) -> list[dict]:
    """Train ``cfg.clients`` simulated clients for ``cfg.rounds`` rounds into ``run_dir``; returns metrics rows.

    Each client gets ``cfg.cpus_per_client`` cores (and ``cfg.gpus_per_client`` GPUs), so on 2 cores with the
    default 1 core per client, two clients train at a time. ``resume`` continues from a checkpoint of ``run_dir``.
    Raises RuntimeError if the server or a client failed. The test seam ``clients/fault_injection.py`` adds its mods
    to the ClientApp only when its environment variables are set.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Workers inherit this: silences a pyarrow deprecation raised inside flwr-datasets' partitioners.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    from flwr.simulation import run_simulation

    outcome: dict = {}
    backend_config = {
        "client_resources": {"num_cpus": cfg.cpus_per_client, "num_gpus": cfg.gpus_per_client},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": True},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        logging.getLogger("flwr").setLevel(logging.ERROR)  # hides run_simulation's deprecation banner
        run_simulation(
            server_app=build_server_app(cfg, run_dir, outcome, resume, on_complete=plot_run),
            client_app=build_client_app(mods=fault_injection.mods()),
            num_supernodes=cfg.clients,
            backend_config=backend_config,
        )
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    if "rounds" not in outcome:
        raise RuntimeError("the simulation ended without finishing its rounds (see the log above)")
    return outcome["rounds"]
