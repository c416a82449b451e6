"""The registries behind the settings whose choices are names (``setting(registry=...)`` in ``core.config``): each
lives in the room that owns it (``core.registry``'s idiom), and the command line and ``validate`` read the choices
from it, never a copy."""

from __future__ import annotations

from collections.abc import Mapping

from attack.registry import ATTACKS
from audit.canaries import plan_canaries
from clients.grad_samplers import SAMPLERS
from core.config import RunConfig, flag_name, settings
from core.errors import UserError
from core.privacy import ACCOUNTANTS
from core.registry import lookup
from data.base import DATASETS, SURROGATES
from split.server import SERVERS, check_server
from strategy.registry import REGISTRY as STRATEGIES


def registry(name: str) -> Mapping[str, object]:
    """The registry a ``setting``'s ``registry`` key names."""
    registries = {
        "strategy": STRATEGIES,
        "accountant": ACCOUNTANTS,
        "grad_sampler": SAMPLERS,
        "surrogate": SURROGATES,
        "dataset": DATASETS,
        "server": SERVERS,
        "attack": ATTACKS,
    }
    return registries[name]


def choices(name: str) -> tuple[str, ...]:
    """The names registered under ``name`` (a ``setting``'s ``registry`` key)."""
    return tuple(registry(name))


def check_registered(cfg: RunConfig) -> RunConfig:
    """UserError (one line) for the first setting whose value is not a name in its registry; returns ``cfg``."""
    for f in settings():
        kind = f.metadata["registry"]
        if kind and kind != "attack":  # --attacks is a comma-separated list: attack.registry.parse_attacks reads it
            lookup(registry(kind), getattr(cfg, f.name), f"--{flag_name(f.name)}")
    if cfg.proximal_mu and not STRATEGIES[cfg.strategy].proximal:
        proximal = ", ".join(name for name, e in STRATEGIES.items() if e.proximal)
        raise UserError(f"--proximal-mu is the weight of a proximal term only {proximal} sends; not {cfg.strategy}")
    check_server(cfg)  # a server behaviour that cannot honour another setting
    if cfg.audit:
        plan_canaries(cfg)  # UserError when the trainable device has fewer weights than canaries
    return cfg
