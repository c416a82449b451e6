"""Server strategies by name (``--strategy``): Flower's own, built from the RunConfig, with their state for checkpoints.

``build_strategy(cfg)`` returns the Flower strategy that aggregates the trained replies; ``LedgerStrategy``
(strategy/ledger.py) wraps it and does the sampling, the privacy ledger and the error handling itself, so the inner
strategy is built to address every node (``fraction_train=1.0``) and is only asked for its per-round config and
arrays and for the aggregation.

Server optimisers keep state between rounds (FedAvgM its momentum, FedAdam / FedYogi / FedAdagrad their moments
``m_t``, ``v_t`` and the arrays of the round in flight): a ``StateAdapter`` reads and restores it, so a resumed run
aggregates exactly as the uninterrupted one (``strategy/driver.py`` stores it in ``checkpoint.pt``).

Adding a strategy: one builder here and one ``REGISTRY`` entry under its name (with a ``StateAdapter`` if it keeps
state), or ``register_strategy("name")(Entry(builder, ...))`` from elsewhere; ``REGISTRY``'s keys are the
``--strategy`` choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from core.config import RunConfig
from core.registry import lookup, register


class StateAdapter:
    """``state_dict(strategy)`` / ``load_state_dict(strategy, state)`` for one kind of Flower strategy, read from
    and written to its attributes (Flower's strategies have no such methods). This base: a stateless strategy."""

    def state_dict(self, strategy: Strategy) -> dict[str, Any]:
        """Plain data (numpy arrays, lists, dicts, None) that ``torch.save`` can store."""
        return {}

    def load_state_dict(self, strategy: Strategy, state: dict[str, Any]) -> None:
        assert not state, f"{type(strategy).__name__} keeps no state, but a checkpoint holds {sorted(state)}"


def _copy(arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    return None if arrays is None else {key: np.array(value, copy=True) for key, value in arrays.items()}


class FedOptState(StateAdapter):
    """FedAdam, FedYogi, FedAdagrad (Flower's FedOpt): moments ``m_t``, ``v_t`` and ``current_arrays`` (the
    arrays sent out this round), each ``{key: ndarray}`` or None before the first aggregation."""

    def state_dict(self, strategy: Strategy) -> dict[str, Any]:
        assert isinstance(strategy, FedOpt)
        return {name: _copy(getattr(strategy, name)) for name in ("current_arrays", "m_t", "v_t")}

    def load_state_dict(self, strategy: Strategy, state: dict[str, Any]) -> None:
        assert isinstance(strategy, FedOpt)
        for name in ("current_arrays", "m_t", "v_t"):
            setattr(strategy, name, _copy(state[name]))


class FedAvgMState(StateAdapter):
    """FedAvgM: ``momentum_vector`` (list of ndarrays in the model's key order, or None) and ``current_arrays``
    (the last global model it produced, an ArrayRecord; stored as ``{key: ndarray}``)."""

    def state_dict(self, strategy: Strategy) -> dict[str, Any]:
        assert isinstance(strategy, FedAvgM)
        current = strategy.current_arrays
        momentum = strategy.momentum_vector
        return {
            "current_arrays": None if current is None else {key: value.numpy() for key, value in current.items()},
            "momentum_vector": None if momentum is None else [np.array(v, copy=True) for v in momentum],
        }

    def load_state_dict(self, strategy: Strategy, state: dict[str, Any]) -> None:
        assert isinstance(strategy, FedAvgM)
        current, momentum = state["current_arrays"], state["momentum_vector"]
        strategy.current_arrays = None if current is None else ArrayRecord({k: Array(v) for k, v in current.items()})
        strategy.momentum_vector = None if momentum is None else [np.array(v, copy=True) for v in momentum]


def _sampling(cfg: RunConfig) -> dict[str, Any]:
    # The ledger samples the partitions that train; the inner strategy addresses every node, and evaluates all.
    return dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.clients,
    )


def _server_lr(cfg: RunConfig, name: str) -> dict[str, float]:
    """``{name: --server-lr}``, or nothing for 0: Flower's default for that strategy."""
    return {name: cfg.server_lr} if cfg.server_lr else {}


def _fedavg(cfg: RunConfig) -> Strategy:
    return FedAvg(**_sampling(cfg))


def _fedavgm(cfg: RunConfig) -> Strategy:
    lr = _server_lr(cfg, "server_learning_rate")
    return FedAvgM(**_sampling(cfg), server_momentum=cfg.server_momentum, **lr)


def _fedadam(cfg: RunConfig) -> Strategy:
    return FedAdam(**_sampling(cfg), **_server_lr(cfg, "eta"))


def _fedyogi(cfg: RunConfig) -> Strategy:
    return FedYogi(**_sampling(cfg), **_server_lr(cfg, "eta"))


FEDPROX_MU = 0.01  # --proximal-mu 0 under fedprox


def _fedprox(cfg: RunConfig) -> Strategy:
    # FedProx puts "proximal-mu" in the train config; a client applies the term when it is > 0 (clients/train.py).
    return FedProx(**_sampling(cfg), proximal_mu=cfg.proximal_mu or FEDPROX_MU)


@dataclass(frozen=True)
class Entry:
    """How to build one strategy from the RunConfig, and how to checkpoint its state."""

    build: Callable[[RunConfig], Strategy]
    state: StateAdapter = StateAdapter()
    proximal: bool = False  # it sends clients a proximal-term weight (``--proximal-mu`` applies to it only)


REGISTRY: dict[str, Entry] = {
    "fedavg": Entry(_fedavg),
    "fedavgm": Entry(_fedavgm, FedAvgMState()),
    "fedadam": Entry(_fedadam, FedOptState()),
    "fedyogi": Entry(_fedyogi, FedOptState()),
    "fedprox": Entry(_fedprox, proximal=True),
}


def register_strategy(name: str) -> Callable[[Entry], Entry]:
    """Decorator-style: ``register_strategy(name)(entry)`` makes ``entry`` available as ``--strategy name``. A name
    can be registered once."""
    return register(REGISTRY, name)


def entry(name: str) -> Entry:
    """The registry entry of strategy ``name``; UserError naming the choices when it is not registered."""
    return lookup(REGISTRY, name, "--strategy")


def build_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, with ``--server-lr``, ``--server-momentum``,
    ``--proximal-mu`` applied where the strategy has them."""
    return entry(cfg.strategy).build(cfg)
