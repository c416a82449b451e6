"""The cut: what the device sends across the network, and the one place where it may be changed.

Every path that produces what the server receives goes through a ``Cut``: the training step
(``clients.train.split_step``), the inference query (``device_activations`` with the run's cut), the attacker's
own queries of the device model, and the benchmarks. A defense at the cut (noise on clipped activations, ...) is
one new ``Cut`` subclass plus one entry in ``CUTS``; nothing else changes.

``Cut.forward(activations) -> sent``: device activations float32 [B,C,H,W] -> what crosses the network (same
shape). In training the device back-propagates the server's gradient through it (``backward_to_device``).
"""

from __future__ import annotations

import torch
from torch import nn


class Cut(nn.Module):
    """The identity cut: the device sends its activations unchanged (the original experiment)."""

    name = "identity"
    deterministic = True  # the same images always send the same activations (a noisy cut sets False)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return activations

    def device_gradient(self, activations: torch.Tensor, sent: torch.Tensor, grad_sent: torch.Tensor) -> torch.Tensor:
        """The gradient at the device's output, given the server's gradient at what was sent.

        activations: the device output the cut was applied to; sent: ``self(activations)``; grad_sent: d loss /
        d sent, as the server returns it. The identity passes it through; a cut that transforms the activations
        differentiates through itself (on the device: the server never sees ``activations``).
        """
        if sent is activations:
            return grad_sent
        (grad,) = torch.autograd.grad(sent, activations, grad_sent)
        return grad


CUTS: dict[str, type[Cut]] = {"identity": Cut}


def build_cut(name: str = "identity", **options) -> Cut:
    """A cut by registry name; ``options`` are its constructor's keywords."""
    if name not in CUTS:
        raise ValueError(f"unknown cut {name!r}; choose from {', '.join(CUTS)}")
    return CUTS[name](**options)
