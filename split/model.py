"""The split model: device convnet (runs on the client) | cut | server head (hosted by the server).

Architecture from the 2020 experiment (docs/experiment.md), made DP-SGD compatible:
BatchNorm -> GroupNorm with ``norm_groups`` groups (1 by default: close to BatchNorm, while the 32 groups that
Opacus's ``ModuleValidator.fix`` would pick stop the model learning), and non-inplace ReLU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.config import CUT_DEPTHS

CUT_CHANNELS = 32

# (kernel, pool kernel, pool stride) per block; on Omniglot's 105: 105 -> 99 -> 33 -> 27 -> 13 -> 9 -> 4 -> 2 -> 1
_BLOCKS = ((7, 3, 3), (7, 3, 2), (5, 2, 2), (3, 2, 2))
assert len(_BLOCKS) == max(CUT_DEPTHS)


def cut_shape(cut: int, image_side: int) -> tuple[int, int, int]:
    """The shape of one image's activations after block ``cut`` for images of ``image_side`` (the dataset's): on
    Omniglot's 105, (32,33,33), (32,13,13), (32,4,4) or (32,1,1). ValueError when the images are too small."""
    if cut not in CUT_DEPTHS:
        raise ValueError(f"cut must be one of {CUT_DEPTHS}, got {cut}")
    side = image_side
    for kernel, pool, stride in _BLOCKS[:cut]:
        side = (side - kernel + 1 - pool) // stride + 1  # valid conv, then max-pool without padding
        if side < 1:
            raise ValueError(f"images of side {image_side} are too small for {cut} conv blocks")
    return (CUT_CHANNELS, side, side)


def _conv_blocks(first: int, last: int, dropout: float, norm_groups: int) -> list[nn.Module]:
    """The layers of blocks ``first``..``last`` (1-based): conv, ReLU, GroupNorm, max-pool, dropout each."""
    if CUT_CHANNELS % norm_groups:
        raise ValueError(f"norm_groups must divide {CUT_CHANNELS}, got {norm_groups}")
    layers: list[nn.Module] = []
    for block in range(first, last + 1):
        kernel, pool, stride = _BLOCKS[block - 1]
        layers += [
            nn.Conv2d(1 if block == 1 else CUT_CHANNELS, CUT_CHANNELS, kernel_size=kernel),
            nn.ReLU(inplace=False),
            nn.GroupNorm(norm_groups, CUT_CHANNELS),
            nn.MaxPool2d(pool, stride=stride),
            nn.Dropout(dropout),
        ]
    return layers


class Invert(nn.Module):
    """images in [0,1] with white background -> 1 - images: strokes 1, background 0. No parameters.

    Why: Omniglot is about 92 % white, so on raw pixels the first convolution's output is dominated by the
    constant background and the model sits at chance-level loss for its first epochs. Measured centrally (Adam
    1e-3, batch 32, 11,000 images): after 200 steps val acc 0.077 on raw pixels, 0.414 inverted.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 - images


class DeviceNet(nn.Sequential):
    """Client-side convnet: the first ``cut`` blocks. images float32 [B,1,S,S] in [0,1] (S = ``image_side``, the
    dataset's) -> activations float32 [B, *cut_shape(cut, S)] ([B,32,1,1] on Omniglot at the default cut 4).

    The output is what crosses the network to the server: the "activations" the attack inverts.
    ``invert_input`` puts a fixed ``Invert`` before the first block (then the blocks are layers 1..).
    """

    def __init__(
        self, image_side: int, dropout: float = 0.0, norm_groups: int = 1, invert_input: bool = False, cut: int = 4
    ) -> None:
        self.image_side, self.out_shape = image_side, cut_shape(cut, image_side)
        super().__init__(*([Invert()] if invert_input else []), *_conv_blocks(1, cut, dropout, norm_groups))

    def freeze(self, blocks: int) -> DeviceNet:
        """Stop training the first ``blocks`` blocks (their conv and GroupNorm parameters); returns self."""
        block = 0
        for layer in self:
            block += isinstance(layer, nn.Conv2d)
            if block <= blocks:
                layer.requires_grad_(False)
        return self

    def train_only_norm(self) -> DeviceNet:
        """Stop training every parameter but the GroupNorm scales and shifts (``--train-params norm``: 2 x 32 a
        block, 256 of the device's 86,944 at cut 4); returns self."""
        for layer in self:
            if not isinstance(layer, nn.GroupNorm):
                layer.requires_grad_(False)
        return self


class ServerHead(nn.Sequential):
    """Server-side part: blocks ``cut+1``..4 (none at the default cut 4), then the dense head.
    activations float32 [B, *in_shape] -> logits float32 [B,n_classes] (softmax in the loss).

    At cut 4 its layers and state-dict keys are those of the original head (Flatten first).
    """

    def __init__(
        self,
        image_side: int,
        n_classes: int,
        dropout: float = 0.0,
        hidden: int = 256,
        cut: int = 4,
        norm_groups: int = 1,
    ) -> None:
        self.in_shape = cut_shape(cut, image_side)
        flat = CUT_CHANNELS * cut_shape(len(_BLOCKS), image_side)[1] ** 2
        super().__init__(
            *_conv_blocks(cut + 1, len(_BLOCKS), dropout, norm_groups),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )


def build_split(
    *,
    image_side: int,
    n_classes: int,
    dropout: float = 0.0,
    norm_groups: int = 1,
    invert_input: bool = False,
    cut: int = 4,
) -> tuple[DeviceNet, ServerHead]:
    """A fresh (device, head) pair split after block ``cut``; seed torch beforehand for reproducible initial weights.

    The geometry (``image_side``, ``n_classes``) is the dataset's (``data.base.geometry``); callers with a
    RunConfig pass ``**cfg.model_options(), **geometry(cfg.dataset)``.
    """
    device = DeviceNet(image_side, dropout, norm_groups, invert_input, cut)
    return device, ServerHead(image_side, n_classes, dropout, cut=cut, norm_groups=norm_groups)


def joined_state(device: nn.Module, head: nn.Module) -> dict[str, torch.Tensor]:
    """One state dict for both halves, keys ``device.<name>`` and ``head.<name>`` (what the server aggregates)."""
    state = {f"device.{k}": v.detach().cpu() for k, v in device.state_dict().items()}
    state.update({f"head.{k}": v.detach().cpu() for k, v in head.state_dict().items()})
    return state


def load_joined(device: nn.Module, head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``joined_state``: load ``device.*`` into ``device`` and ``head.*`` into ``head`` (strict)."""
    for prefix, module in (("device.", device), ("head.", head)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)


def as_float_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 tensor sharing memory with ``array`` where possible (read-only arrays, e.g. memory maps, are copied)."""
    if isinstance(array, torch.Tensor):
        return array.float()
    array = np.asarray(array, dtype=np.float32)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


@torch.no_grad()
def batched_eval(
    model: nn.Module, inputs: np.ndarray | torch.Tensor, batch_size: int, item_shape: tuple[int, ...]
) -> torch.Tensor:
    """Run ``model`` in eval mode, no grad, over ``inputs`` in batches on its device: float32 [N, *item_shape] on
    the CPU. The model's train/eval mode is restored afterwards (it may be a model the caller is still training)."""
    x = as_float_tensor(inputs)
    if len(x) == 0:
        return torch.empty(0, *item_shape)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat([model(chunk.to(device)).cpu() for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


def device_activations(
    device: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 64, cut: nn.Module | None = None
) -> torch.Tensor:
    """What the device sends at inference: float32 [N, *device.out_shape] on the CPU for images [N,1,105,105].

    Batches of 64: the first block's maps are 2.7 MB an image, so a batch of 512 held about 1.2 GB more at its
    peak than a batch of 64 (0.16 GB) in a client's query of its 660 images, at the same speed on 2 cores.

    The device model's activations passed through ``cut`` (``split.cut.Cut``; identity when None): the inference
    query, the attacker's own queries of the device and the benchmarks all send through this one function.
    Eval mode (no dropout), no grad, in batches on the model's device; its train/eval mode is restored afterwards.
    ``images`` may be a (read-only, e.g. memory-mapped) numpy array or a tensor, float in [0,1].
    """
    sender = device if cut is None else nn.Sequential(device, cut.to(next(device.parameters()).device))
    return batched_eval(sender, images, batch_size, activation_shape(device))


def activation_shape(device: nn.Module) -> tuple[int, ...]:
    """The shape of one image's activations out of ``device`` (a ``DeviceNet``, or any module ending in its
    blocks): (C,H,W), from a forward pass of one blank image when the module does not say."""
    if isinstance(device, DeviceNet):
        return device.out_shape
    nets = [m for m in device.modules() if isinstance(m, DeviceNet)]
    assert nets, "activation_shape needs a DeviceNet inside the module"
    side = nets[0].image_side
    param = next(device.parameters())
    was_training = device.training
    device.eval()
    with torch.no_grad():
        shape = tuple(device(torch.zeros(1, 1, side, side, device=param.device)).shape[1:])
    device.train(was_training)
    return shape
