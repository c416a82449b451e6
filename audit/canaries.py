"""Gradient-space (Dirac) canaries: which canary is where, and how a client's DP-SGD step takes one in.

A canary is a record whose per-sample gradient is ``clip`` times one coordinate of the device's trainable weights
(each canary its own coordinate) and zero elsewhere: a record with exactly the clipping norm, independent of the
weights and of the data (Nasr et al. 2023, "Tight auditing of differentially private
machine learning"; Steinke et al. 2023 use the same white-box canaries). It is fair for this product because it is
what the clipped-and-noised channel promises to protect, one record's worth of gradient, and it reaches the server
only through the device weights a client returns: it never crosses the cut, so the activations (which DP does not
cover, the attack's channel) cannot give it away.

Canaries are split over the clients; each is in its client's data with probability 1/2, drawn once per run from
(training seed, ``AUDIT_STREAM``). An included canary is one more record of its client: every step draws it with the
client's own Poisson rate q, as it draws each image, and adds its gradient to the clipped per-sample gradients before
the noise. The ledger's epsilon, a per-record bound computed from (sigma, q, steps), therefore covers it unchanged;
only the batch's expected size moves (q(N + 1) instead of qN), and dividing the noisy sum by the fixed qN is
post-processing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.config import RunConfig
from core.errors import UserError
from data.base import geometry
from split.model import build_split

AUDIT_STREAM = 24_000_001  # the SeedSequence word that keeps the canaries' draws apart from training's


@dataclass(frozen=True)
class CanaryPlan:
    """Where the m canaries are. ``names``: the device's trainable parameters (state-dict names), in order;
    ``param`` int [m]: which of them each canary sits in, ``offset`` int [m]: its
    element there (flat); ``client`` int [m]: whose canary it is; ``included`` bool [m]: whether it is in that
    client's data."""

    names: tuple[str, ...]
    param: np.ndarray
    offset: np.ndarray
    client: np.ndarray
    included: np.ndarray

    @property
    def m(self) -> int:
        return len(self.client)

    def values_at(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """float64 [m]: each canary's coordinate in a device state dict (numpy arrays by parameter name)."""
        out = np.empty(self.m)
        for p, name in enumerate(self.names):
            at = self.param == p
            out[at] = np.asarray(state[name], dtype=np.float64).reshape(-1)[self.offset[at]]
        return out


def trainable_sizes(model: dict, dataset: str, frozen: int, only_norm: bool = False) -> dict[str, int]:
    """The trainable parameters of the device ``build_split(**model)`` builds for ``dataset`` with ``frozen`` blocks
    frozen (and, ``only_norm``, only its GroupNorm parameters trained: ``--train-params norm``), and their element
    counts."""
    device, _ = build_split(**model, **geometry(dataset))
    device.freeze(frozen)
    if only_norm:
        device.train_only_norm()
    return {name: p.numel() for name, p in device.named_parameters() if p.requires_grad}


def plan_canaries(cfg: RunConfig) -> CanaryPlan:
    """The run's ``cfg.audit`` canaries: distinct coordinates of the trainable device weights, dealt round-robin
    over the clients in a shuffled order, each included with probability 1/2. The server and every client draw the
    same plan from the settings."""
    model = tuple(sorted(cfg.model_options().items()))
    norm = cfg.train_params == "norm"
    return _plan(cfg.audit, cfg.clients, cfg.training_seed, cfg.dataset, model, cfg.freeze_blocks, norm)


@functools.lru_cache(maxsize=4)  # a simulation worker serves many clients and rounds of one run
def _plan(m: int, clients: int, seed: int, dataset: str, model: tuple, frozen: int, norm: bool) -> CanaryPlan:
    sizes = trainable_sizes(dict(model), dataset, frozen, norm)
    total = sum(sizes.values())
    if m > total:
        raise UserError(f"--audit {m}: the trainable device has only {total} weights, one per canary")
    rng = np.random.default_rng([seed, AUDIT_STREAM])
    flat = rng.choice(total, size=m, replace=False)
    client = rng.permutation(np.arange(m) % clients)
    included = rng.random(m) < 0.5
    starts = np.cumsum([0, *sizes.values()])
    param = np.searchsorted(starts, flat, side="right") - 1
    return CanaryPlan(tuple(sizes), param, flat - starts[param], client, included)


class CanaryInjector:
    """One client's included canaries in one local round: each step draws each of them with probability ``q``
    (numpy generator seeded by ``seed``) and adds the drawn ones' gradients, ``clip`` at their coordinates.

    ``params``: the device's trainable parameters by state-dict name. Under DP-SGD, ``into_grad_samples`` appends one
    per-sample gradient row per drawn canary before Opacus clips and noises; without DP, ``into_grads`` adds
    clip / ``batch`` at each drawn coordinate of the mean gradient (the weight a record has in a batch of that size).
    ``drawn`` counts the canary draws of the round.
    """

    def __init__(
        self, plan: CanaryPlan, partition: int, params: dict[str, nn.Parameter], q: float, clip: float, seed: int
    ) -> None:
        mine = np.flatnonzero((plan.client == partition) & plan.included)
        self.params = [params[plan.names[p]] for p in plan.param[mine]]
        self.offsets = [int(o) for o in plan.offset[mine]]
        self.q, self.clip = q, clip
        self.rng = np.random.default_rng(seed)
        self.drawn = 0

    def _draw(self) -> list[int]:
        chosen = np.flatnonzero(self.rng.random(len(self.offsets)) < self.q).tolist()
        self.drawn += len(chosen)
        return chosen

    @torch.no_grad()
    def into_grad_samples(self, trainable: list[nn.Parameter]) -> None:
        """Append a row to every trainable parameter's ``grad_sample`` [B, ...] per drawn canary."""
        chosen = self._draw()
        if not chosen:
            return
        for p in trainable:
            rows = torch.zeros(len(chosen), *p.shape, dtype=p.dtype, device=p.device)
            for row, c in enumerate(chosen):
                if self.params[c] is p:
                    rows[row].view(-1)[self.offsets[c]] = self.clip
            sample = getattr(p, "grad_sample", None)
            if isinstance(sample, list):  # Opacus keeps a list when a parameter's hook fired more than once
                sample = torch.cat(sample)
            p.grad_sample = torch.cat([rows[:0] if sample is None else sample, rows])

    @torch.no_grad()
    def into_grads(self, batch: float) -> None:
        """Add clip / ``batch`` to the mean gradient at each drawn canary's coordinate."""
        for c in self._draw():
            p = self.params[c]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.view(-1)[self.offsets[c]] += self.clip / batch
