"""Per-sample gradients for DP-SGD on the device convnet: three ways, chosen by ``--grad-sampler``.

- ``opacus``: Opacus's hooks and its Conv2d sampler (unfold = im2col, then a batched matrix product: 146 MB of
  copies per step for the second convolution at batch 32).
- ``fast``: Opacus's hooks, with the Conv2d sampler replaced by ``conv2d_per_sample`` (no unfold copy).
- ``fused`` (default): no Opacus hooks at all. ``PerSampleDevice`` runs the forward pass itself, keeps each layer's
  input and GroupNorm statistics, and after one backward pass for the gradients *at* each layer's output (no summed
  weight gradients, which DP-SGD would discard) computes every per-sample parameter gradient directly. Opacus's
  hooks also rescale every layer's full-size output gradient by the batch size and recompute GroupNorm; here the
  batch-size factor is applied once, to the [B,32,1,1] cut gradient.

In every case Opacus's ``DPOptimizer`` does the clipping, the noise and the accounting from ``p.grad_sample``, with
Opacus's convention: ``grad_sample[i]`` is the gradient of sample i's own loss. Equality with Opacus's per-sample
gradients is tested (tests/test_grad_samplers.py).
"""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from torch import nn

from clients.config import GRAD_SAMPLERS

# Below this many output positions a convolution's per-sample weight gradients come from one grouped convolution
# (batch as groups); above it, from one weight-gradient kernel call per sample. Measured on this model, batch 32,
# 2 cores: 9x9 outputs 2.3 ms grouped vs 4.5 ms per sample; 27x27 outputs 43 ms vs 17 ms.
_GROUPED_BELOW = 256


def _conv_weight_per_sample(layer: nn.Conv2d, x: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients [B, *weight.shape] of ``layer`` from its input x and output gradient."""
    batch, c_out, h_out, w_out = backprops.shape
    if h_out * w_out < _GROUPED_BELOW and layer.groups == 1:
        # grad_w[b,o,c] = x[b,c] correlated with backprops[b,o]: a convolution of the input (channels as batch,
        # batch as groups) with each sample's output gradient as the kernel; stride and dilation swap roles.
        kernel = backprops.reshape(batch * c_out, 1, h_out, w_out)
        grad = nn.functional.conv2d(
            x.transpose(0, 1), kernel, None, layer.dilation, layer.padding, layer.stride, groups=batch
        )
        kh, kw = layer.kernel_size
        grad = grad[:, :, :kh, :kw].reshape(x.shape[1], batch, c_out, kh, kw)
        return grad.permute(1, 2, 0, 3, 4)
    return torch.stack(
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
            for i in range(batch)
        ]
    )


def conv2d_per_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a Conv2d: weight [B, *weight.shape] and bias [B, C_out].

    activations[0]: the layer's input [B, C_in, H, W]; backprops: dLoss/dOutput [B, C_out, H_out, W_out] (already
    scaled by Opacus for the loss reduction). Same signature and result as Opacus's ``compute_conv_grad_sample``.
    """
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError("conv2d_per_sample supports numeric zero padding only")
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = _conv_weight_per_sample(layer, activations[0], backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


def group_norm_per_sample(
    layer: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients [B, C] of a GroupNorm's weight and bias, from its input x [B,C,H,W], the per-(sample,
    group) mean and 1/std [B, G] of the forward pass, and dLoss/dOutput [B,C,H,W]. No normalised copy of x is made:
    sum_hw(g * (x - mean) * rstd) = rstd * (sum_hw(g * x) - mean * sum_hw(g)).
    """
    per_group = layer.num_channels // layer.num_groups
    g_sum = backprops.sum(dim=(2, 3))
    g_x = torch.einsum("bchw,bchw->bc", backprops, x)
    mean, rstd = (t.repeat_interleave(per_group, dim=1) for t in (mean, rstd))
    return {layer.weight: rstd * (g_x - mean * g_sum), layer.bias: g_sum}


class PerSampleDevice:
    """The device convnet with DP-SGD's per-sample gradients computed in one backward pass, without Opacus hooks.

    ``activations = net(images)`` runs the forward pass and records what the gradients need; ``net.backward(grad)``
    takes dLoss/dActivations (what came back across the cut, for a loss averaged over the batch) and sets
    ``p.grad_sample`` [B, *p.shape] on every parameter, as Opacus's ``GradSampleModule`` would, for its
    ``DPOptimizer``. ``p.grad`` is left untouched. Supports an ``nn.Sequential`` of Conv2d, affine GroupNorm and
    parameter-free layers (the ``DeviceNet``).
    """

    def __init__(self, module: nn.Sequential) -> None:
        for layer in module:
            has_params = any(True for _ in layer.parameters())
            if has_params and not isinstance(layer, (nn.Conv2d, nn.GroupNorm)):
                raise ValueError(f"the fused sampler supports Conv2d and GroupNorm layers, not {type(layer).__name__}")
            if isinstance(layer, nn.GroupNorm) and not layer.affine:
                raise ValueError("the fused sampler needs affine GroupNorm layers")
            if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
                raise ValueError("the fused sampler supports Conv2d with numeric zero padding only")
        self.module = module
        self._tape: list[tuple] = []  # per layer with parameters: (layer, its input, its output, GroupNorm stats)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._tape = []
        x = images
        for layer in self.module:
            if isinstance(layer, nn.GroupNorm):
                batch, channels = x.shape[:2]
                y, mean, rstd = torch.ops.aten.native_group_norm(
                    x, layer.weight, layer.bias, batch, channels, x.shape[2:].numel(), layer.num_groups, layer.eps
                )
                self._tape.append((layer, x, y, (mean, rstd)))
            else:
                y = layer(x)
                if isinstance(layer, nn.Conv2d):
                    self._tape.append((layer, x, y, None))
            x = y
        self._activations = x
        return x

    def backward(self, grad: torch.Tensor) -> None:
        """Set ``p.grad_sample`` from dLoss/dActivations ``grad`` (same shape as the activations, mean-reduced loss)."""
        tape, self._tape = self._tape, []
        batch = len(grad)
        if batch == 0:  # an empty Poisson batch: DP-SGD still takes a (noise-only) step
            for param in self.module.parameters():
                param.grad_sample = torch.zeros(0, *param.shape, dtype=param.dtype, device=param.device)
            return
        # Opacus's convention: grad_sample[i] is the gradient of sample i's loss, i.e. batch x the mean-loss one.
        outputs = [entry[2] for entry in tape]
        backprops = torch.autograd.grad(self._activations, outputs, grad_outputs=grad * batch)
        for (layer, x, _, stats), g in zip(tape, backprops, strict=True):
            if isinstance(layer, nn.Conv2d):
                per_sample = conv2d_per_sample(layer, [x], g)
            else:
                per_sample = group_norm_per_sample(layer, x, *stats, g)
            for param, value in per_sample.items():
                param.grad_sample = value


def install(model: nn.Module, sampler: str = "fused") -> GradSampleModule | PerSampleDevice:
    """What to train with under ``sampler`` (see the module docstring), given the Opacus-wrapped ``model``.

    "opacus"/"fast": ``model`` itself, its Conv2d sampler set on this one instance only (an instance attribute
    shadows Opacus's class-wide registry). "fused": ``model``'s hooks are removed and a ``PerSampleDevice`` over
    the wrapped network is returned.
    """
    if sampler not in GRAD_SAMPLERS:
        raise ValueError(f"unknown grad sampler {sampler!r}; choose from {', '.join(GRAD_SAMPLERS)}")
    if not isinstance(model, GradSampleModule):
        raise TypeError(f"install needs an Opacus GradSampleModule, got {type(model).__name__}")
    if sampler == "fused":
        model.remove_hooks()
        return PerSampleDevice(model.to_standard_module())
    if sampler == "fast":
        model.GRAD_SAMPLERS = {**type(model).GRAD_SAMPLERS, nn.Conv2d: conv2d_per_sample}
    return model
