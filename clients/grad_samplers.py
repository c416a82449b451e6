"""A faster per-sample gradient for Conv2d, installed into one Opacus GradSampleModule.

Opacus computes a convolution's per-sample weight gradients by unfolding the input (im2col, a copy of
B x C_in*k*k x H_out*W_out floats: 146 MB per step for the second convolution at batch 32) and a batched matrix
product. On this model that was the largest part of the DP-SGD overhead (``benchmarks/run.py``). Here the same
gradients come from the convolution's own weight-gradient kernel (``aten.convolution_backward``) called once per
sample: no unfold copy, and the work per sample is exactly a plain step's weight gradient for a batch of one.

``install(model)`` swaps the sampler on that one wrapped model only (an instance attribute shadows Opacus's
class-wide registry), so nothing else in the process changes. Equality with Opacus's sampler is tested
(tests/test_grad_samplers.py).
"""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from torch import nn

from clients.config import GRAD_SAMPLERS


def conv2d_per_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a Conv2d: weight [B, *weight.shape] and bias [B, C_out].

    activations[0]: the layer's input [B, C_in, H, W]; backprops: dLoss/dOutput [B, C_out, H_out, W_out] (already
    scaled by Opacus for the loss reduction). Same signature and result as Opacus's ``compute_conv_grad_sample``.
    """
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError("conv2d_per_sample supports numeric zero padding only")
    x = activations[0]
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.stack(
            [
                torch.ops.aten.convolution_backward(
                    backprops[i : i + 1],
                    x[i : i + 1],
                    layer.weight,
                    None,
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    False,
                    (0, 0),
                    layer.groups,
                    (False, True, False),  # weight gradient only
                )[1]
                for i in range(len(x))
            ]
        )
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


def install(model: nn.Module, sampler: str = "fast") -> nn.Module:
    """Use ``sampler`` ("fast" or "opacus") for the Conv2d layers of the Opacus-wrapped ``model``; returns it."""
    if sampler not in GRAD_SAMPLERS:
        raise ValueError(f"unknown grad sampler {sampler!r}; choose from {', '.join(GRAD_SAMPLERS)}")
    if not isinstance(model, GradSampleModule):
        raise TypeError(f"install needs an Opacus GradSampleModule, got {type(model).__name__}")
    if sampler == "fast":
        model.GRAD_SAMPLERS = {**type(model).GRAD_SAMPLERS, nn.Conv2d: conv2d_per_sample}
    return model
