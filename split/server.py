"""What the server does with what crosses the cut in training (``--server``), behind a registry like the attacks'.

- ``honest``: the server returns the task's gradient at the cut (SplitFed v1 as the protocol describes it).
- ``hijack``: the Feature-Space Hijacking Attack (``split.hijack``): the server returns its critic's adversarial
  gradient instead, from models of its own that travel with the global model as ``server.*`` arrays.

A behaviour says which arrays it adds to the initial global model, what it does in each client's round (``round``:
None for the task's gradient, else an object whose ``gradient(received)`` replaces it and whose ``returned()``
arrays go back with the reply), and which attacks of its own the run's attack adds (``attacks``). The client's
DP-SGD never sees which one runs: it clips and noises whatever gradient comes down the cut.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from rich.console import Console

from core.config import RunConfig
from core.errors import UserError
from core.registry import lookup, register
from split.hijack import HijackModels, HijackRound, initial_models, pilot_features, public_images


class ServerBehaviour:
    """The honest server: the task's gradient, no arrays and no attacks of its own."""

    attacks: ClassVar[tuple[str, ...]] = ()  # attacks (``attack.registry`` names) the run's attack adds
    refuses: ClassVar[dict[str, str]] = {}  # RunConfig fields that must stay at their default, and why

    def initial_arrays(self, cfg: RunConfig, console: Console) -> dict[str, torch.Tensor]:
        """Arrays the server adds to the global model before round 1 (keys ``server.*``)."""
        return {}

    def round(self, cfg: RunConfig, arrays: Mapping, seed: int) -> HijackRound | None:
        """The server's side of one client's local round from the global ``arrays`` (the train message's, read only
        where needed: ``split.hijack.server_state``); None: the task's gradient."""
        return None


class HijackServer(ServerBehaviour):
    """FSHA (``split.hijack``): pilot, decoder and critic; the critic's gradient goes down the cut."""

    attacks = ("hijack",)
    refuses = {
        "nopeek": "NoPeek adds its own term to the device's gradient, which the hijack replaces",
        "strategy": "its fixed pilot and decoder are kept out of aggregation, which only FedAvg leaves alone",
    }

    def initial_arrays(self, cfg: RunConfig, console: Console) -> dict[str, torch.Tensor]:
        return initial_models(cfg, console).arrays()

    def round(self, cfg: RunConfig, arrays: Mapping, seed: int) -> HijackRound:
        public = _public(cfg.dataset, cfg.data_dir, cfg.surrogate)
        models = HijackModels.for_run(cfg, public.shape[-1]).load_arrays(arrays)
        return HijackRound(models, _real(cfg.dataset, cfg.data_dir, cfg.surrogate, _Pilot(models)), seed)


@lru_cache(maxsize=2)  # a simulation worker serves many clients and rounds: load the public images once
def _public(dataset: str, data_dir: str, surrogate: str) -> np.ndarray:
    cfg = RunConfig(dataset=dataset, data_dir=data_dir, surrogate=surrogate)
    return np.asarray(public_images(cfg).images)


class _Pilot:
    """A cache key for a pilot: equal when the weights are (their SHA-256), holding the models to compute from."""

    def __init__(self, models: HijackModels) -> None:
        self.models = models
        state = sorted(models.pilot.state_dict().items())
        self.digest = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in state)).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Pilot) and other.digest == self.digest


@lru_cache(maxsize=2)  # ... and the fixed pilot's activations of them once per pilot
def _real(dataset: str, data_dir: str, surrogate: str, pilot: _Pilot) -> torch.Tensor:
    return pilot_features(pilot.models, _public(dataset, data_dir, surrogate))


# Insertion order is the order of the choices in --help.
SERVERS: dict[str, type[ServerBehaviour]] = {"honest": ServerBehaviour, "hijack": HijackServer}


def register_server(name: str) -> Callable[[type[ServerBehaviour]], type[ServerBehaviour]]:
    """Class decorator: make ``cls`` available as ``--server name``. A name can be registered once."""
    return register(SERVERS, name)


def build_server(name: str) -> ServerBehaviour:
    """The server behaviour ``name``; UserError naming the choices when it is unknown."""
    return lookup(SERVERS, name, "--server")()


def check_server(cfg: RunConfig) -> None:
    """UserError (one line) when ``cfg``'s server behaviour cannot honour one of its other settings."""
    behaviour = build_server(cfg.server)
    defaults = RunConfig()
    for name, why in behaviour.refuses.items():
        if getattr(cfg, name) != getattr(defaults, name):
            raise UserError(f"--server {cfg.server} cannot run with --{name.replace('_', '-')}: {why}")
