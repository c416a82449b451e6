"""Decoders that invert a device model: activations [B,C,H,W] (any cut's shape, ``in_shape``) -> images
[B,1,105,105]. Architectures only (pure torch): the curious server trains them in ``attack.decoders`` on its own
queries of the device, and the hijacking server (``split.hijack``) trains one as the inverse of its pilot encoder.

- ``SeedDecoder`` ("seed"): the 2020 experiment's decoder, four valid transposed convolutions, all ReLU.
- ``UpDecoder`` ("up"): a linear map to a 64x7x7 feature grid, transposed-convolution upsampling blocks with
  GroupNorm (7 -> 14 -> 27 -> 53), bilinear to 105, and a sigmoid, so its output is already in [0,1].

Both take any activation shape. A 1x1 map (cut 4) is a vector and goes through a dense first layer as above. A
spatial map (cuts 1-3: 33x33, 13x13, 4x4) keeps its layout: ``SeedDecoder`` reads it flattened through the dense
equivalent of its first transposed convolution (what that layer is on a 1x1 input), ``UpDecoder`` starts with a
3x3 convolution at the map's own side and doubles it until the next doubling would pass 105 / 1.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from core.registry import lookup, register
from split.model import CUT_CHANNELS

# The decoders draw images of the original experiment's side: ``seed``'s transposed convolutions end at 105 by
# construction (1 -> 9 -> 23 -> 51 -> 105); ``attack.run`` refuses a dataset of another side with one line.
IMAGE_SIDE = 105
VECTOR_SHAPE = (CUT_CHANNELS, 1, 1)  # the original cut

# About 92 % of Omniglot pixels are white: starting the sigmoid there skips the epochs spent learning the background.
_BACKGROUND_START = 0.9


class SeedDecoder(nn.Sequential):
    """The original decoder. activations float32 [B,*in_shape] -> images float32 [B,1,105,105], >= 0, not clipped.

    Valid transposed convolutions, each followed by ReLU: 1 -> 9 (k9 s1) -> 23 (k7 s2) -> 51 (k7 s2) -> 105 (k5 s2).
    For a spatial ``in_shape`` the first one is its dense equivalent: flattened map -> 32x9x9.
    Its output can exceed 1; ``reconstruct`` clips to [0,1].
    Initialised as Keras did in the original (Glorot-uniform kernels, zero biases). With PyTorch's default init
    (uniform biases) the two 1-channel layers start dead behind their ReLU for 6 of 10 seeds: output 0 everywhere,
    zero gradient, and the decoder never trains.
    """

    def __init__(self, in_shape: tuple[int, int, int] = VECTOR_SHAPE) -> None:
        channels, height, width = in_shape
        if height * width == 1:
            first: nn.Module = nn.ConvTranspose2d(channels, 32, kernel_size=9, stride=1)
        else:
            first = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * height * width, 32 * 81), nn.Unflatten(1, (32, 9, 9))
            )
        super().__init__(
            first,
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, kernel_size=7, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, kernel_size=7, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(1, 1, kernel_size=5, stride=2),
            nn.ReLU(),
        )
        for layer in self.modules():
            if isinstance(layer, (nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)


def _up_block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Transposed conv (stride 2, padding 1), GroupNorm, ReLU. Side n -> 2n + kernel - 4 (k4: 2n, k3: 2n - 1)."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=kernel, stride=2, padding=1),
        # Groups of 8 channels (at least one group): per-sample normalisation that trains fast at batch 32.
        nn.GroupNorm(max(1, c_out // 8), c_out),
        nn.ReLU(),
    )


class UpDecoder(nn.Module):
    """A stronger decoder. activations float32 [B,*in_shape] -> images float32 [B,1,105,105] in [0,1].

    1x1 input (cut 4): Linear C -> 64x7x7 (dropout 0.7 while training), upsampling blocks 7 -> 14 (k4) -> 27 -> 53
    (k3) with 64 -> 32 -> 16 -> 8 channels, a 3x3 conv to one channel of logits, bilinear upsampling 53 -> 105, and
    a sigmoid (started at the white background).
    Spatial input of side s (cuts 1-3): a 3x3 conv C -> 64 at side s (GroupNorm, ReLU), then doubling blocks (k4)
    halving the channels (at least 8) while 2 x side <= 70 (33 -> 66; 13 -> 26 -> 52; 4 -> 8 -> ... -> 64), the same
    logits conv, bilinear to 105, sigmoid. No dropout: a map keeps the image's layout, and the held-out early stop
    guards against memorising.
    Why it is shaped so: 32 numbers carry no 105x105 detail, so full-resolution layers cost most of the time and
    add nothing measurable (see the report of the decoder comparison); the last doubling is a fixed interpolation.
    Upsampling logits rather than intensities keeps stroke edges sharp after the sigmoid.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 32, 16, 8),
        base: int = 7,
        dropout: float = 0.7,
        in_shape: tuple[int, int, int] = VECTOR_SHAPE,
    ) -> None:
        super().__init__()
        channels, side = in_shape[0], in_shape[1]
        if in_shape[1] * in_shape[2] > 1:
            self.stem, self.base, self.width0 = _map_stem(channels, widths[0]), None, widths[0]
            doublings = 0
            while side * 2 ** (doublings + 1) <= 70:
                doublings += 1
            sizes = [max(8, widths[0] >> i) for i in range(doublings + 1)]
            self.blocks = nn.Sequential(*(_up_block(a, b, 4) for a, b in zip(sizes[:-1], sizes[1:], strict=True)))
            self._head(sizes[-1])
            return
        if not 2 <= len(widths) <= 5:
            # 2 widths: one block (output 14x14) ... 5 widths: four blocks (output 105x105, no interpolation).
            raise ValueError(f"UpDecoder needs 2 to 5 widths (the grid, then 1 to 4 upsampling blocks), got {widths}")
        self.base, self.width0 = base, widths[0]
        # Dropout on the grid: without it the decoder memorises small1 (measured on unseen small2: MSE 0.065 after 5
        # epochs, 0.082 after 40); with p=0.7 it reached 0.064 after 100 epochs and kept improving.
        self.stem = nn.Sequential(nn.Linear(channels, widths[0] * base * base), nn.ReLU(), nn.Dropout(dropout))
        # First block doubles exactly (7 -> 14); the others give odd sides 27, 53 whose double minus one is 105.
        kernels = [4] + [3] * (len(widths) - 2)
        self.blocks = nn.Sequential(
            *(_up_block(a, b, k) for a, b, k in zip(widths[:-1], widths[1:], kernels, strict=True))
        )
        self._head(widths[-1])

    def _head(self, channels: int) -> None:
        self.head = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        nn.init.constant_(self.head.bias, math.log(_BACKGROUND_START / (1 - _BACKGROUND_START)))

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        if self.base is None:  # a spatial map
            grid = self.stem(activations)
        else:
            grid = self.stem(activations.flatten(1)).view(-1, self.width0, self.base, self.base)
        logits = self.head(self.blocks(grid))
        logits = nn.functional.interpolate(logits, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)


def _map_stem(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv keeping the side, GroupNorm, ReLU: the first layer of an UpDecoder on a spatial map."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.GroupNorm(max(1, c_out // 8), c_out), nn.ReLU()
    )


DECODERS: dict[str, type[nn.Module]] = {"seed": SeedDecoder, "up": UpDecoder}


def register_decoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a decoder available as ``build_decoder(name)``. A name can be registered once."""
    return register(DECODERS, name)


def build_decoder(name: str, **options) -> nn.Module:
    """A fresh decoder by registry name ("seed" or "up"; ``options`` go to its constructor, e.g. ``in_shape``);
    seed torch beforehand for reproducible weights. UserError naming the choices when ``name`` is not registered."""
    return lookup(DECODERS, name, "decoder")(**options)
