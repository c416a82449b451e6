"""The attack interface and the threat model it works under (EXPERIMENT.md, "The attack in the original").

What the curious server holds is ``AttackerKnowledge``: query access to the final global device model through the
run's cut, and its own surrogate images (small1) — never a client's images. What it inverts is ``Intercepted``:
activations that crossed the cut, with the partition they came from where the server knows it.

An attack is fitted once on its knowledge, then reconstructs any number of intercepted sets. Register a new one
in ``attack.registry``; ``attack.run`` then trains, scores and writes it like the built-in decoders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the threat model gives the server before it sees a client's activations.

    device: the final global device model (eval mode); an attack may run it, never change it.
    query: images float32 [N,1,105,105] in [0,1] -> what the device sends for them, float32 [N,32,1,1] on the CPU
        (the device model through the run's cut, ``split.model.device_activations``).
    surrogate: the attacker's own images (small1), float32 [M,1,105,105] in [0,1].
    surrogate_activations: ``query(surrogate)``, float32 [M,32,1,1], computed once per run: the device is frozen, so
        every attack and every epoch can reuse it.
    seed: seed for the attack's weights and batch order.
    epochs: training epochs over the surrogate set, for attacks that train.
    progress: ``progress(epoch, loss)`` after each epoch (epoch counted from 1), or None.
    """

    device: nn.Module
    query: Callable[[np.ndarray | torch.Tensor], torch.Tensor]
    surrogate: np.ndarray
    surrogate_activations: torch.Tensor
    seed: int = 0
    epochs: int = 100
    progress: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class Intercepted:
    """Activations the server received: float32 [n,32,1,1] as they crossed the cut.

    partition: the client that sent them (None for the attacker's own test queries of small2);
    labels: int64 [n] alphabet labels when the server saw them (training sends them; inference does not), else None.
    """

    activations: torch.Tensor
    partition: int | None = None
    labels: np.ndarray | None = None


class Attack(ABC):
    """A reconstruction attack: ``fit`` once on the attacker's knowledge, then ``reconstruct`` intercepted sets."""

    @abstractmethod
    def fit(self, knowledge: AttackerKnowledge) -> None:
        """Prepare the attack (e.g. train a decoder on the surrogate set); called once, before ``reconstruct``."""

    @abstractmethod
    def reconstruct(self, intercepted: Intercepted) -> np.ndarray:
        """The attacker's guess of the images behind ``intercepted``: float32 [n,1,105,105] in [0,1], row-aligned."""

    def fit_summary(self) -> dict[str, float]:
        """Numbers about the fit for attack.json (e.g. the final training loss); none by default."""
        return {}
