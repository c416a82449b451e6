"""The white-box optimisation attack (rMLE, He, Zhang & Lee, ACSAC 2019): the server holds the device model that
produced an activation, so it can search for an image that the model maps to that activation.

Each image is x = sigmoid(z), started from the best decoder's reconstruction; Adam moves z to lower
    ||f(x) - a||^2 / ||a||^2  +  tv_weight * TV(x)
where f is the device model (the client's own for training-time activations, else the final global one) followed
by the run's cut, a the intercepted activation, and TV the mean absolute difference between neighbouring pixels
(the prior that keeps strokes solid). The device's weights never change.

Expensive (every step runs the device model forward and back on full-size images), so it reconstructs a seeded
subsample of at most ``max_images`` images of each set (``attack.run`` scores exactly those).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from attack.base import Attack, AttackerKnowledge, Intercepted


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """[B]: mean absolute difference between horizontally and vertically neighbouring pixels of each image."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    return dx + dy


def activation_distance(sender: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: ||sender(images) - target||^2 / ||target||^2 per image (what the optimisation lowers)."""
    diff = (sender(images) - target).flatten(1)
    return diff.pow(2).sum(dim=1) / target.flatten(1).pow(2).sum(dim=1).clamp_min(1e-12)


class WhiteBoxAttack(Attack):
    """rMLE started from another attack's reconstruction (``refines``)."""

    refines = True
    max_images: ClassVar[int | None] = 64
    steps: ClassVar[int] = 30
    lr: ClassVar[float] = 0.1
    tv_weight: ClassVar[float] = 0.05

    def __init__(self) -> None:
        self.knowledge: AttackerKnowledge | None = None
        self.final_distance: list[float] = []

    def fit(self, knowledge: AttackerKnowledge) -> None:
        self.knowledge = knowledge  # nothing to train: the device model is the attack

    def sender(self, intercepted: Intercepted) -> nn.Module:
        """The differentiable path image -> activation for this set: its device model, then the run's cut."""
        assert self.knowledge is not None, "fit the attack before reconstructing"
        device = intercepted.device if intercepted.device is not None else self.knowledge.device
        cut = self.knowledge.cut
        return device if cut is None else nn.Sequential(device, cut)

    def reconstruct(self, intercepted: Intercepted, start: np.ndarray | None = None) -> np.ndarray:
        if start is None:
            raise ValueError("the white-box attack refines another attack's reconstruction: give start")
        sender = self.sender(intercepted).eval()
        for p in sender.parameters():
            p.requires_grad_(False)
        try:
            z = torch.logit(torch.as_tensor(start, dtype=torch.float32).clamp(0.02, 0.98)).requires_grad_(True)
            target = intercepted.activations.float()
            optimizer = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.steps):
                images = torch.sigmoid(z)
                per_image = activation_distance(sender, images, target) + self.tv_weight * total_variation(images)
                optimizer.zero_grad(set_to_none=True)
                per_image.sum().backward()
                optimizer.step()
            with torch.no_grad():
                images = torch.sigmoid(z)
                self.final_distance.append(float(activation_distance(sender, images, target).mean()))
        finally:
            for p in sender.parameters():
                p.requires_grad_(True)
        return images.detach().numpy()

    def fit_summary(self) -> dict[str, float]:
        return {"steps": self.steps, "mean_final_activation_distance": float(np.mean(self.final_distance or [np.nan]))}
