"""The attack interface and the threat model it works under (docs/experiment.md, "The attack in the original").

The curious server is honest but curious: it runs the protocol and keeps everything the protocol hands it.
``AttackerKnowledge`` is what it holds before it looks at a client's activations: the final global device model
(query access through the run's cut), the server head it hosts (so it can label any activation), and public
images of its own (the surrogate) — never a client's images. ``Payload`` is one set of activations it received,
with what came with them: the sender, the labels training sends beside every activation, and the device model that
produced them (a client's own updated model, which it sent back at the end of the round).

An attack is fitted once on the knowledge, then reconstructs any number of intercepted sets. Register a new one in
``attack.registry``; ``attack.run`` then trains, scores and writes it like the built-in ones. An attack that
refines another's output (``refines = True``, e.g. the white-box optimisation) receives the best fitted decoder's
reconstructions as its start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

Query = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the threat model gives the server before it sees a client's activations.

    device: the final global device model (eval mode); an attack may run it, never change it.
    query: ``query(images, device=None)``: images float32 [N,1,105,105] in [0,1] -> what ``device`` (default the
        final global model) sends for them through the run's cut, float32 [N,C,H,W] on the CPU.
    classify: activations [N,C,H,W] -> int64 [N], the label the server's head predicts (the server hosts it).
    n_classes: how many labels the task has (the head's outputs).
    surrogate: the attacker's own public images, float32 [M,1,105,105] in [0,1] (``attack.surrogate``).
    surrogate_activations: ``query(surrogate)``, float32 [M,C,H,W], computed once: the device is frozen, so every
        attack and every epoch reuses it.
    seed: seed for the attack's weights and batch order.
    epochs: the most training epochs over the surrogate, for attacks that train (they may stop early).
    progress: ``progress(epoch, loss)`` after each epoch (epoch counted from 1), or None.
    cut: the run's cut (``split.cut.Cut``), for attacks that run a device model themselves; None: identity.
    hijack: the hijacking server's own models from training (``split.hijack.HijackModels``, ``--server hijack``),
        else None.
    """

    device: nn.Module
    query: Query
    classify: Callable[[torch.Tensor], np.ndarray]
    n_classes: int
    surrogate: np.ndarray
    surrogate_activations: torch.Tensor
    seed: int = 0
    epochs: int = 100
    progress: Callable[[int, float], None] | None = None
    cut: nn.Module | None = None
    hijack: nn.Module | None = None


@dataclass(frozen=True)
class Payload:
    """What an attack inverts (its payload): activations float32 [n,C,H,W] as they crossed the cut, and what came
    with them. (``core.protocol.Intercepted`` is the wire record a client sends; this is the attack's view of it.)

    partition: the client that sent them (None for the attacker's own test queries of small2);
    labels: int64 [n] labels the server saw beside them (training sends them; inference does not), else None;
    device: the device model that produced them when it is not the final global model (a client's updated model
        at the end of its last round, for training-time activations), else None.
    """

    activations: torch.Tensor
    partition: int | None = None
    labels: np.ndarray | None = None
    device: nn.Module | None = None

    def __len__(self) -> int:
        return len(self.activations)

    def rows(self, index: np.ndarray) -> Payload:
        """The same set restricted to ``index`` (int array of rows)."""
        labels = None if self.labels is None else self.labels[index]
        return Payload(self.activations[torch.as_tensor(index)], self.partition, labels, self.device)


class Attack(ABC):
    """A reconstruction attack: ``fit`` once on the attacker's knowledge, then ``reconstruct`` intercepted sets.

    refines: True for an attack that starts from another attack's reconstruction (``reconstruct(..., start=)``).
    caps: the most images it reconstructs of a set, by set kind ("unseen", "seen", "client"); a kind not listed:
        every scored row; 0: the attack skips that kind (an expensive attack scores a seeded subsample).
    """

    refines: ClassVar[bool] = False
    caps: ClassVar[dict[str, int]] = {}

    @abstractmethod
    def fit(self, knowledge: AttackerKnowledge) -> None:
        """Prepare the attack (e.g. train a decoder on the surrogate set); called once, before ``reconstruct``."""

    @abstractmethod
    def reconstruct(self, intercepted: Payload, start: np.ndarray | None = None) -> np.ndarray:
        """The attacker's guess of the images behind ``intercepted``: float32 [n,1,105,105] in [0,1], row-aligned.
        ``start``: for a refining attack, another attack's guess of the same rows."""

    def starts_from(self, attack: Attack) -> None:
        """For a refining attack: called by ``attack.run`` with the fitted attack whose reconstructions will be its
        ``start``, kept as ``start_attack`` (the latent white-box search reads that decoder itself)."""
        self.start_attack = attack

    def fit_summary(self) -> dict[str, float]:
        """Numbers about the fit for attack.json (e.g. the held-out loss); none by default."""
        return {}

    def holdout_mse(self) -> float | None:
        """Pixel MSE on the surrogate's held-out slice, for attacks that measure it: how the run picks the best
        decoder to start a refining attack from. None by default."""
        return None
