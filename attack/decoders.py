"""Training the decoders that invert the device model (architectures: ``split.decoders``).

The attacker queries the (aggregated) device model with its own surrogate images, trains a decoder on the
(activation, image) pairs, then applies it to intercepted activations (docs/experiment.md, "The attack in the
original").

The decoders by name: ``seed`` (``SeedDecoder``) and ``up`` (``UpDecoder``); ``cond`` is an UpDecoder whose input
is the activations and a one-hot label (``attack.decoder_attack``).

Activations are computed once (``split.model.device_activations``) and reused every epoch: the device model is
frozen during the attack, so an epoch of decoder training costs only the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attack.metrics import ssim_torch
from split.decoders import IMAGE_SIDE
from split.model import as_float_tensor, batched_eval


@dataclass
class TrainLog:
    """What ``train_decoder`` measured: the mean training loss of each epoch, the held-out pixel MSE after each
    epoch (empty without a held-out slice), and the epoch whose weights were kept (the last without one)."""

    train: list[float] = field(default_factory=list)
    holdout: list[float] = field(default_factory=list)
    best_epoch: int = 0
    last_gain: int = 0  # the last epoch that beat every earlier one by more than min_delta

    @property
    def best_holdout(self) -> float | None:
        return self.holdout[self.best_epoch - 1] if self.holdout else None


def train_decoder(
    decoder: nn.Module,
    activations: np.ndarray | torch.Tensor,
    images: np.ndarray | torch.Tensor,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    holdout: int = 0,
    patience: int = 4,
    ssim_weight: float = 0.0,
    min_delta: float = 0.0,
    ssim_rows: int = 16,
) -> TrainLog:
    """Fit ``decoder`` in place to map ``activations`` back to ``images`` (Adam; loss: pixel MSE, plus
    ``ssim_weight`` x (1 - SSIM) when given, which rewards stroke structure over a blurred average; the SSIM term is
    taken on the first ``ssim_rows`` images of each batch, as its filters cost more than the decoder itself).

    activations: float32 [N,...] (from ``split.model.device_activations``, or any per-image feature vector);
    images: float32 [N,1,105,105] in [0,1]. holdout: that many rows, drawn by ``seed``, are kept out of training;
    after each epoch their pixel MSE is measured, the best epoch's weights are kept, and training stops once
    ``patience`` epochs pass without one better by more than ``min_delta`` (at most ``epochs``). Batches are
    reshuffled each epoch by a ``torch.Generator`` seeded with ``seed`` (initial weights come from the caller's
    torch seed).
    ``progress(epoch, loss)`` is called after each epoch, epoch counted from 1. Runs on the decoder's device.
    """
    x, y = as_float_tensor(activations), as_float_tensor(images)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} activations but {len(y)} images")
    if not 0 <= holdout < len(x):
        raise ValueError(f"holdout must leave training rows: {holdout} of {len(x)}")
    device = next(decoder.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    held, train = order[:holdout], order[holdout:]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    log = TrainLog()
    best_state = None
    for epoch in range(1, epochs + 1):
        decoder.train()
        total = 0.0
        for batch in train[torch.randperm(len(train), generator=generator)].split(batch_size):
            xb, yb = x[batch].to(device), y[batch].to(device)
            out = decoder(xb)
            loss = nn.functional.mse_loss(out, yb)
            if ssim_weight:
                loss = loss + ssim_weight * (1.0 - ssim_torch(out[:ssim_rows], yb[:ssim_rows]).mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        log.train.append(total / len(train))
        if progress is not None:
            progress(epoch, log.train[-1])
        if not holdout:
            log.best_epoch = epoch
            continue
        held_mse = float(((reconstruct(decoder, x[held]) - y[held].numpy()) ** 2).mean())
        log.holdout.append(held_mse)
        if held_mse < min(log.holdout[:-1], default=np.inf):
            log.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
        if held_mse > min(log.holdout[: log.last_gain], default=np.inf) - min_delta:
            if epoch - log.last_gain >= patience:
                break
        else:
            log.last_gain = epoch
    if best_state is not None:
        decoder.load_state_dict(best_state)
    decoder.eval()
    return log


def reconstruct(decoder: nn.Module, activations: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """activations float32 [N,C,H,W] -> reconstructions float32 [N,1,105,105] clipped to [0,1] (eval, no grad)."""
    return batched_eval(decoder, activations, batch_size, (1, IMAGE_SIDE, IMAGE_SIDE)).clamp_(0.0, 1.0).numpy()
