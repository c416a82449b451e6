"""The registries behind the settings whose choices are names (``setting(registry=...)`` in ``core.config``): each
lives in the room that owns it, and the command line and ``validate`` read the choices from it, never a copy."""

from __future__ import annotations

from audit.canaries import plan_canaries
from clients.grad_samplers import SAMPLERS
from core.config import RunConfig, flag_name, settings
from core.errors import UserError
from core.privacy import ACCOUNTANTS
from data.base import DATASETS, SURROGATES
from split.server import SERVERS, check_server
from strategy.registry import REGISTRY as STRATEGIES


def choices(registry: str) -> tuple[str, ...]:
    """The names registered under ``registry`` (a ``setting``'s ``registry`` key)."""
    registries = {
        "strategy": STRATEGIES,
        "accountant": ACCOUNTANTS,
        "grad_sampler": SAMPLERS,
        "surrogate": SURROGATES,
        "dataset": DATASETS,
        "server": SERVERS,
    }
    return tuple(registries[registry])


def check_registered(cfg: RunConfig) -> RunConfig:
    """UserError (one line) for the first setting whose value is not a name in its registry; returns ``cfg``."""
    for f in settings():
        registry = f.metadata["registry"]
        if registry and getattr(cfg, f.name) not in choices(registry):
            allowed = ", ".join(choices(registry))
            raise UserError(f"--{flag_name(f.name)} must be one of {allowed}, got {getattr(cfg, f.name)!r}")
    if cfg.proximal_mu and not STRATEGIES[cfg.strategy].proximal:
        proximal = ", ".join(name for name, e in STRATEGIES.items() if e.proximal)
        raise UserError(f"--proximal-mu is the weight of a proximal term only {proximal} sends; not {cfg.strategy}")
    check_server(cfg)  # a server behaviour that cannot honour another setting
    if cfg.audit:
        plan_canaries(cfg)  # UserError when the trainable device has fewer weights than canaries
    return cfg
