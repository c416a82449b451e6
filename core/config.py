"""The run configuration: one dataclass shared by `sim.py` flags, Flower's run config and the ClientApp.

Field ``local_epochs`` is flag ``--local-epochs`` and Flower run-config key ``local-epochs``: the names only differ
in ``_`` vs ``-``. Flower config values cannot be None, so "off" is 0 (``target_epsilon``, ``limit_per_client``)
or "" (``data_dir``, ``out``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from core.errors import UserError

PARTITIONS = ("shards", "alphabet", "dirichlet", "iid")
OPTIMIZERS = ("adam", "sgd")
ACCOUNTANTS = ("rdp", "prv", "rdp-classic")
DEVICES = ("auto", "cpu", "cuda")
GRAD_SAMPLERS = ("fused", "fast", "opacus")  # how DP-SGD gets per-sample gradients: clients/grad_samplers.py
N_ALPHABETS = 20


@dataclass
class RunConfig:
    """Every setting of a run. Defaults follow the original DP run (EXPERIMENT.md) where it had one."""

    clients: int = 20
    noise: float = 0.5
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.005
    clip: float = 1.0
    delta: float = 1e-5
    optimizer: str = "adam"
    accountant: str = "rdp"
    target_epsilon: float = 0.0
    fraction_train: float = 1.0
    partition: str = "shards"
    alphabets_per_client: int = 2
    alpha: float = 0.5
    limit_per_client: int = 0
    val_fraction: float = 0.1
    dropout: float = 0.0
    norm_groups: int = 1
    grad_sampler: str = "fused"
    seed: int = 0
    data_dir: str = ""
    out: str = ""
    device: str = "cpu"
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    max_epsilon: float = 0.0
    fail_rate: float = 0.0
    extra: dict = field(default_factory=dict, repr=False)

    def validate(self) -> RunConfig:
        """Raise UserError with one line for the first invalid setting; return self."""
        _positive_int(self, "clients", "rounds", "local_epochs", "batch_size", "alphabets_per_client")
        _finite(self, "noise", "lr", "clip", "delta", "alpha", "target_epsilon", "fraction_train", "val_fraction")
        _finite(self, "dropout", "cpus_per_client", "gpus_per_client", "max_epsilon", "fail_rate")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be an integer >= 0, got {self.seed}")
        if self.noise < 0:
            raise UserError(f"--noise must be >= 0 (0 = no DP), got {self.noise}")
        for name in ("lr", "clip", "alpha", "cpus_per_client"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon < 0:
            raise UserError(f"--target-epsilon must be > 0, got {self.target_epsilon}")
        if self.max_epsilon < 0:
            raise UserError(f"--max-epsilon must be > 0 (0 = no cap), got {self.max_epsilon}")
        if self.max_epsilon and self.noise == 0 and not self.target_epsilon:
            raise UserError(
                "--max-epsilon needs --noise > 0: without noise epsilon is infinite, so no client could train"
            )
        if not 0 <= self.fail_rate < 1:
            raise UserError(f"--fail-rate must be in [0, 1), got {self.fail_rate}")
        if not 0 < self.fraction_train <= 1:
            raise UserError(f"--fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.limit_per_client < 0 or self.limit_per_client == 1:
            raise UserError(f"--limit-per-client must be 0 (no cap) or >= 2, got {self.limit_per_client}")
        if self.gpus_per_client < 0:
            raise UserError(f"--gpus-per-client must be >= 0, got {self.gpus_per_client}")
        if self.norm_groups < 1 or 32 % self.norm_groups:
            raise UserError(f"--norm-groups must divide 32 (1, 2, 4, 8, 16, 32), got {self.norm_groups}")
        _choice(self, "partition", PARTITIONS)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "accountant", ACCOUNTANTS)
        _choice(self, "device", DEVICES)
        _choice(self, "grad_sampler", GRAD_SAMPLERS)
        if self.partition == "alphabet" and self.clients > N_ALPHABETS:
            raise UserError(
                f"--partition alphabet gives each client whole alphabets, so --clients must be <= {N_ALPHABETS}, "
                f"got {self.clients}; use --partition shards, dirichlet or iid for more clients"
            )
        return self

    def to_flwr(self) -> dict[str, int | float | str | bool]:
        """Flower run-config / ConfigRecord form: kebab-case keys, scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}

    @classmethod
    def from_flwr(cls, values: dict) -> RunConfig:
        """Inverse of ``to_flwr``; unknown keys are kept in ``extra``, missing keys take the defaults.

        Flower's own name for the round count, ``num-server-rounds``, is accepted as ``rounds``.
        """
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict = {}
        extra: dict = {}
        for key, value in values.items():
            name = "rounds" if key == "num-server-rounds" else key.replace("-", "_")
            if name in names:
                default = names[name].default
                kwargs[name] = type(default)(value) if default is not None else value
            else:
                extra[key] = value
        return cls(**kwargs, extra=extra)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _positive_int(cfg: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{_flag(name)} must be a positive integer, got {value}")


def _finite(cfg: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise UserError(f"--{_flag(name)} must be a finite number, got {value}")


def _choice(cfg: RunConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        raise UserError(f"--{_flag(name)} must be one of {', '.join(allowed)}, got {value!r}")
