"""Per-sample gradients for DP-SGD on the device convnet: three ways, chosen by ``--grad-sampler``.

- ``opacus``: Opacus's hooks and its Conv2d sampler (unfold = im2col, then a batched matrix product: 146 MB of
  copies per step for the second convolution at batch 32).
- ``fast``: Opacus's hooks, with the Conv2d sampler replaced by ``conv2d_per_sample`` (no unfold copy).
- ``fused`` (default): no Opacus hooks at all. ``PerSampleDevice`` runs the forward pass itself and keeps each
  convolution's input; one backward pass then yields the gradients *at* each convolution's output (no summed weight
  gradients, which DP-SGD would discard), from which the per-sample convolution gradients follow. GroupNorm runs
  with per-sample copies of its weight and bias, so the same backward pass yields their per-sample gradients with
  no extra pass over the maps. Opacus's hooks also rescale every layer's full-size output gradient by the batch size
  and recompute GroupNorm; here the batch-size factor is applied once, to the [B,C,H,W] cut gradient.

In every case Opacus's ``DPOptimizer`` does the clipping, the noise and the accounting from ``p.grad_sample``, with
Opacus's convention: ``grad_sample[i]`` is the gradient of sample i's own loss. Equality with Opacus's per-sample
gradients is tested (tests/clients/test_grad_samplers.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus import GradSampleModule
from torch import nn

from core.registry import lookup, register

# Below this many output positions a convolution's per-sample weight gradients come from one grouped convolution
# (batch as groups); above it, from one weight-gradient kernel call per sample. Measured on this model, batch 32,
# 2 cores, with core.runtime's setting: 9x9 outputs 2.0 ms grouped vs 3.2 ms per sample; 27x27 outputs 29.8 ms
# vs 14.7 ms.
_GROUPED_BELOW = 256


def _require_zero_padding(layer: nn.Conv2d) -> None:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError("per-sample Conv2d gradients support numeric zero padding only")


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
    _require_zero_padding(layer)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = _conv_weight_per_sample(layer, activations[0], backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


class PerSampleDevice:
    """The device convnet with DP-SGD's per-sample gradients computed in one backward pass, without Opacus hooks.

    ``activations = net(images)`` runs the forward pass and records what the gradients need; ``net.backward(grad)``
    takes dLoss/dActivations (what came back across the cut, for a loss averaged over the batch) and sets
    ``p.grad_sample`` [B, *p.shape] on every parameter, as Opacus's ``GradSampleModule`` would, for its
    ``DPOptimizer``. ``p.grad`` is left untouched. Supports an ``nn.Sequential`` of Conv2d, affine GroupNorm and
    parameter-free layers (the ``DeviceNet``); frozen layers (no parameter requires grad) get no per-sample gradients.
    """

    def __init__(self, module: nn.Sequential) -> None:
        for layer in module:
            has_params = any(True for _ in layer.parameters())
            if has_params and not isinstance(layer, (nn.Conv2d, nn.GroupNorm)):
                raise ValueError(f"the fused sampler supports Conv2d and GroupNorm layers, not {type(layer).__name__}")
            if isinstance(layer, nn.GroupNorm) and not layer.affine:
                raise ValueError("the fused sampler needs affine GroupNorm layers")
            if isinstance(layer, nn.Conv2d):
                _require_zero_padding(layer)  # refused here, before training starts
        self.module = module
        self._tape: list[tuple] = []  # per layer with parameters: (layer, tensors to differentiate, its input)
        self._activations: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._tape = []
        if len(images) == 0:  # an empty Poisson batch: nothing to differentiate
            self._activations = self.module(images)
            return self._activations
        x = images
        for layer in self.module:
            if not any(p.requires_grad for p in layer.parameters()):  # parameter-free or frozen (--freeze-blocks)
                x = layer(x)
                continue
            if isinstance(layer, nn.GroupNorm):
                y, per_sample = _group_norm_per_sample_affine(layer, x)
                self._tape.append((layer, per_sample, None))
            else:
                y = layer(x)
                if isinstance(layer, nn.Conv2d):
                    self._tape.append((layer, (y,), x))
            x = y
        self._activations = x
        return x

    def backward(self, grad: torch.Tensor, views: int = 1) -> None:
        """Set ``p.grad_sample`` from dLoss/dActivations ``grad`` (same shape as the activations, mean-reduced loss).

        ``views`` > 1: the batch holds ``views`` consecutive augmented views of each image (augmentation
        multiplicity, De et al. 2022), and each image's gradient is the mean of its views' gradients, taken before
        Opacus clips it: ``grad_sample`` then has one row per image, [B / views, *p.shape]."""
        tape, activations = self._tape, self._activations
        self._tape, self._activations = [], None  # hold no graph between steps
        batch = len(grad)
        if batch % views:
            raise ValueError(f"a batch of {batch} views is not {views} views of each image")
        if batch == 0:  # an empty Poisson batch: DP-SGD still takes a (noise-only) step
            for param in (p for p in self.module.parameters() if p.requires_grad):
                param.grad_sample = torch.zeros(0, *param.shape, dtype=param.dtype, device=param.device)
            return
        # Opacus's convention: grad_sample[i] is the gradient of sample i's loss, i.e. batch x the mean-loss one.
        wanted = [t for _, tensors, _ in tape for t in tensors]
        grads = iter(torch.autograd.grad(activations, wanted, grad_outputs=grad * batch))
        # No graph: the layer inputs and weights require grad, and a recorded graph would tie each grad_sample to
        # them in a reference cycle through C++ that Python's garbage collector cannot see (a leak per round).
        with torch.no_grad():
            for layer, _, x in tape:
                if isinstance(layer, nn.Conv2d):
                    per_sample = conv2d_per_sample(layer, [x], next(grads))
                else:  # the gradients of the per-sample copies of weight and bias
                    per_sample = {p: next(grads).view(batch, -1) for p in (layer.weight, layer.bias)}
                for param, value in per_sample.items():
                    param.grad_sample = value if views == 1 else value.view(-1, views, *value.shape[1:]).mean(1)


def _group_norm_per_sample_affine(layer: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """``layer(x)`` computed as one GroupNorm over a batch of one with B x C channels and B x G groups, whose weight
    and bias are per-sample copies (leaves of their own): the same numbers, and the backward pass then yields the
    per-sample weight and bias gradients [B*C] as a by-product of the input gradient it computes anyway."""
    batch, channels = x.shape[:2]
    weight, bias = (p.detach().repeat(batch).requires_grad_() for p in (layer.weight, layer.bias))
    flat = x.reshape(1, batch * channels, *x.shape[2:])
    y = nn.functional.group_norm(flat, batch * layer.num_groups, weight, bias, layer.eps).view_as(x)
    return y, (weight, bias)


def _fused(model: GradSampleModule) -> PerSampleDevice:
    model.remove_hooks()
    return PerSampleDevice(model.to_standard_module())


def _fast(model: GradSampleModule) -> GradSampleModule:
    model.GRAD_SAMPLERS = {**type(model).GRAD_SAMPLERS, nn.Conv2d: conv2d_per_sample}
    return model


def _opacus(model: GradSampleModule) -> GradSampleModule:
    return model


Installer = Callable[[GradSampleModule], GradSampleModule | PerSampleDevice]
# --grad-sampler: how DP-SGD gets per-sample gradients, each from the Opacus-wrapped model (see ``install``).
SAMPLERS: dict[str, Installer] = {"fused": _fused, "fast": _fast, "opacus": _opacus}


def register_sampler(name: str) -> Callable[[Installer], Installer]:
    """Decorator on an installer (Opacus-wrapped model -> what to train with): make it ``--grad-sampler name``. A
    name can be registered once."""
    return register(SAMPLERS, name)


def install(model: nn.Module, sampler: str = "fused") -> GradSampleModule | PerSampleDevice:
    """What to train with under ``sampler`` (see the module docstring), given the Opacus-wrapped ``model``.

    "opacus"/"fast": ``model`` itself, its Conv2d sampler set on this one instance only (an instance attribute
    shadows Opacus's class-wide registry). "fused": ``model``'s hooks are removed and a ``PerSampleDevice`` over
    the wrapped network is returned. UserError naming the choices when ``sampler`` is not registered.
    """
    installer = lookup(SAMPLERS, sampler, "--grad-sampler")
    if not isinstance(model, GradSampleModule):
        raise TypeError(f"install needs an Opacus GradSampleModule, got {type(model).__name__}")
    return installer(model)
