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


class NoisyCut(Cut):
    """Clip each sample's activations to L2 norm ``clip``, then add Gaussian noise of standard deviation
    ``sigma * clip`` to every value: the Gaussian mechanism on what crosses the network.

    What it guarantees, and only that: each time the device sends one image's activations, the release is
    (epsilon, delta)-DP with respect to that image's activations under the L2 sensitivity 2 * clip (any two clipped
    vectors differ by at most that), for the epsilon of the Gaussian mechanism with noise multiplier sigma / 2.
    It composes over every time an image is sent (each training step that samples it, each inference query); it
    says nothing about the device weights (that is DP-SGD's epsilon) nor about the labels sent beside it.
    Noise comes from torch's global generator, which training seeds per client and round and the attack seeds
    before its queries, so runs and resumed runs draw the same noise.
    """

    name = "noise"
    deterministic = False

    def __init__(self, clip: float, sigma: float) -> None:
        super().__init__()
        if clip <= 0 or sigma < 0:
            raise ValueError(f"a noisy cut needs clip > 0 and sigma >= 0, got clip={clip}, sigma={sigma}")
        self.clip, self.sigma = float(clip), float(sigma)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        norms = activations.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (self.clip / norms).clamp(max=1.0).view(-1, *([1] * (activations.dim() - 1)))
        clipped = activations * scale
        if self.sigma == 0:
            return clipped
        return clipped + torch.randn_like(clipped) * (self.sigma * self.clip)


CUTS: dict[str, type[Cut]] = {"identity": Cut, "noise": NoisyCut}


def build_cut(name: str = "identity", **options) -> Cut:
    """A cut by registry name; ``options`` are its constructor's keywords."""
    if name not in CUTS:
        raise ValueError(f"unknown cut {name!r}; choose from {', '.join(CUTS)}")
    return CUTS[name](**options)
