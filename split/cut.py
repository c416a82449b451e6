"""The cut: what the device sends across the network, and the one place where it may be changed.

Every path that produces what the server receives goes through a ``Cut``: the training step
(``clients.train.split_step``), the inference query (``device_activations`` with the run's cut), the attacker's
own queries of the device model, and the benchmarks. A defense at the cut (noise on clipped activations, ...) is
one new ``Cut`` subclass, which says which settings turn it on (``options_for``), plus one entry in ``DEFENSES`` (or
``@register_defense("name")``); ``cut_for`` builds every run's cut from them, so nothing else changes.

``Cut.forward(activations) -> sent``: device activations float32 [B,C,H,W] -> what crosses the network (same
shape). In training the device back-propagates the server's gradient through it (``device_gradient``), where a
training-time defense on the device's side adds its own term: NoPeek (``nopeek`` > 0, Vepakomma et al. 2020)
adds the gradient of ``nopeek`` x the distance correlation between the batch's images and their activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.config import RunConfig
from core.errors import UserError
from core.registry import lookup, register


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The sample distance correlation (Szekely et al. 2007) between the rows of x [B,...] and z [B,...]: a scalar
    in [0,1], 0 for independent samples (in the limit), 1 when one is a similarity transform of the other.
    Differentiable; B >= 2 (a batch of one has no spread: returns 0)."""
    if len(x) < 2:
        return z.sum() * 0.0

    def centred(v: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(v.flatten(1).double().unsqueeze(0), v.flatten(1).double().unsqueeze(0))[0]
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x), centred(z)
    dcov_xz, dvar_x, dvar_z = (a * b).mean(), (a * a).mean(), (b * b).mean()
    denominator = (dvar_x * dvar_z).sqrt()
    if denominator <= 0:
        return z.sum() * 0.0
    return (dcov_xz.clamp_min(0) / denominator).sqrt().float()


class Cut(nn.Module):
    """The identity cut: the device sends its activations unchanged (the original experiment).

    nopeek: NoPeek's weight (0 = off). The device's loss becomes the task loss + nopeek x dCor(images,
    activations) over each batch; the server sees no difference in what it receives, only in how the device learns.
    """

    name = "identity"
    deterministic = True  # the same images always send the same activations (a noisy cut sets False)

    def __init__(self, nopeek: float = 0.0) -> None:
        super().__init__()
        if nopeek < 0:
            raise ValueError(f"NoPeek's weight must be >= 0, got {nopeek}")
        self.nopeek = float(nopeek)

    @classmethod
    def options_for(cls, cfg: RunConfig) -> dict | None:
        """This defense's constructor keywords (NoPeek's aside) from the run's settings; None when the run does not
        use it. The identity is what a run uses when no other defense is on (``cut_for``)."""
        return None

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return activations

    def device_gradient(
        self, images: torch.Tensor, activations: torch.Tensor, sent: torch.Tensor, grad_sent: torch.Tensor
    ) -> torch.Tensor:
        """The gradient at the device's output, given the server's gradient at what was sent.

        images: the batch's input [B,1,105,105]; activations: the device output the cut was applied to; sent:
        ``self(activations)``; grad_sent: d loss / d sent, as the server returns it (mean loss over the batch).
        The identity passes it through; a cut that transforms the activations differentiates through itself (on
        the device: the server never sees ``activations``); NoPeek adds d (nopeek x dCor) / d activations.
        """
        if sent is activations:
            grad = grad_sent
        else:
            (grad,) = torch.autograd.grad(sent, activations, grad_sent)
        if self.nopeek > 0:
            with torch.enable_grad():
                z = activations.detach().requires_grad_(True)
                (extra,) = torch.autograd.grad(self.nopeek * distance_correlation(images.detach(), z), z)
            grad = grad + extra
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

    def __init__(self, clip: float, sigma: float, nopeek: float = 0.0) -> None:
        super().__init__(nopeek)
        if clip <= 0 or sigma < 0:
            raise ValueError(f"a noisy cut needs clip > 0 and sigma >= 0, got clip={clip}, sigma={sigma}")
        self.clip, self.sigma = float(clip), float(sigma)

    @classmethod
    def options_for(cls, cfg: RunConfig) -> dict | None:
        return {"clip": cfg.cut_clip, "sigma": cfg.cut_noise} if cfg.cut_clip > 0 else None  # --cut-clip turns it on

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        norms = activations.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (self.clip / norms).clamp(max=1.0).view(-1, *([1] * (activations.dim() - 1)))
        clipped = activations * scale
        if self.sigma == 0:
            return clipped
        return clipped + torch.randn_like(clipped) * (self.sigma * self.clip)


DEFENSES: dict[str, type[Cut]] = {"identity": Cut, "noise": NoisyCut}


def register_defense(name: str) -> Callable[[type[Cut]], type[Cut]]:
    """Class decorator: make a ``Cut`` subclass available as ``build_cut(name)``. A name can be registered once."""
    return register(DEFENSES, name)


def build_cut(name: str = "identity", **options) -> Cut:
    """A cut by registry name; ``options`` are its constructor's keywords. UserError naming the choices when
    ``name`` is not registered."""
    return lookup(DEFENSES, name, "defense")(**options)


def cut_for(cfg: RunConfig) -> Cut:
    """The run's cut, built from its settings: the registered defense they turn on (``Cut.options_for``; the
    identity when none does), with NoPeek's weight (``--nopeek``), which any cut carries."""
    chosen = [(cls, options) for cls in DEFENSES.values() if (options := cls.options_for(cfg)) is not None]
    if len(chosen) > 1:
        raise UserError(
            f"the settings turn on {len(chosen)} defenses at the cut ({', '.join(c.name for c, _ in chosen)}): one "
            "at a time"
        )
    cls, options = chosen[0] if chosen else (Cut, {})
    return cls(**options, nopeek=cfg.nopeek)
