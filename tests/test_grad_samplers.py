"""clients/grad_samplers.py: the fast Conv2d per-sample gradient equals Opacus's, and stays local to one model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from clients import grad_samplers
from clients.config import RunConfig
from clients.data import EVALUATION, load_set
from clients.privacy import History
from clients.train import train_local
from split.model import build_split


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """12 real images from different alphabets, float32 [12,1,105,105]."""
    data = load_set(EVALUATION)
    return torch.from_numpy(data.as_float(np.arange(0, 13_180, 1_100)[:12]))


def _per_sample(sampler, layer: nn.Conv2d, x: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    torch.manual_seed(1)
    backprops = torch.randn_like(layer(x)) * 1e-2
    return sampler(layer, [x], backprops)


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=1, out_channels=32, kernel_size=7),  # the device convnet's first layer
        dict(in_channels=1, out_channels=8, kernel_size=5, stride=2, padding=2, dilation=1),
        dict(in_channels=1, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=2, bias=False),
    ],
)
def test_fast_conv_sampler_equals_opacus(images: torch.Tensor, conv: dict) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv)
    ours = _per_sample(grad_samplers.conv2d_per_sample, layer, images)
    theirs = _per_sample(compute_conv_grad_sample, layer, images)
    assert set(ours) == set(theirs) == {p for p in layer.parameters()}
    for param, grad in theirs.items():
        assert ours[param].shape == grad.shape == (len(images), *param.shape)
        assert grad.abs().max() > 1e-3  # non-trivial gradients, so the comparison can fail
        torch.testing.assert_close(ours[param], grad, atol=1e-5, rtol=1e-4)


def test_fast_conv_sampler_on_deep_layer(images: torch.Tensor) -> None:
    """The 32-channel 7x7 layer, on the real features the first block produces (float64: exact up to rounding)."""
    torch.manual_seed(0)
    device, _ = build_split()
    device = device.double()
    first_block = nn.Sequential(*list(device)[:4])  # conv, ReLU, GroupNorm, max-pool
    features = first_block(images.double()).detach()  # [12,32,33,33]: the second convolution's input
    layer = device[5]
    ours = _per_sample(grad_samplers.conv2d_per_sample, layer, features)
    theirs = _per_sample(compute_conv_grad_sample, layer, features)
    for param, grad in theirs.items():
        torch.testing.assert_close(ours[param], grad, atol=1e-10, rtol=1e-8)


def test_install_is_local_to_one_model() -> None:
    fast = grad_samplers.install(GradSampleModule(build_split()[0]), "fast")
    other = GradSampleModule(build_split()[0])
    assert fast.GRAD_SAMPLERS[nn.Conv2d] is grad_samplers.conv2d_per_sample
    assert other.GRAD_SAMPLERS[nn.Conv2d] is compute_conv_grad_sample
    assert grad_samplers.install(other, "opacus").GRAD_SAMPLERS[nn.Conv2d] is compute_conv_grad_sample
    with pytest.raises(ValueError, match="unknown grad sampler"):
        grad_samplers.install(other, "slow")
    with pytest.raises(TypeError):
        grad_samplers.install(build_split()[0])


def test_training_is_identical_with_either_sampler(images: torch.Tensor) -> None:
    """One local DP round (noise and clipping on, same seeds): the same weights and ledger whichever sampler runs."""
    labels = torch.arange(len(images)) % 4
    results = {}
    for sampler in grad_samplers.GRAD_SAMPLERS:
        torch.manual_seed(0)
        device, head = build_split()
        cfg = RunConfig(noise=0.8, clip=0.1, batch_size=4, grad_sampler=sampler)
        history: History = []
        result = train_local(device, head, images, labels, cfg, history, seed=3)
        results[sampler] = (result, [p.detach().clone() for p in device.parameters()])
    (fast, fast_weights), (slow, slow_weights) = results["fast"], results["opacus"]
    assert fast.steps > 0 and fast.history == slow.history
    for p, q in zip(fast_weights, slow_weights, strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
