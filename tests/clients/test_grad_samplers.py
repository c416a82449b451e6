"""clients/grad_samplers.py: our per-sample gradients (Conv2d sampler, fused backward) equal Opacus's."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.optimizers import DPOptimizer
from runs import OMNIGLOT
from torch import nn

from clients import grad_samplers
from clients.train import augmented_views, split_step, train_local
from core.config import RunConfig
from core.errors import UserError
from core.privacy import History
from data.omniglot import EVALUATION, load_set
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
    "conv, pool",
    [
        (dict(in_channels=1, out_channels=32, kernel_size=7), 1),  # the device convnet's first layer
        (dict(in_channels=1, out_channels=8, kernel_size=5, stride=2, padding=2, dilation=1), 1),
        (dict(in_channels=1, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=2, bias=False), 1),
        # inputs pooled to 15x15: outputs below _GROUPED_BELOW positions take the grouped-convolution path
        (dict(in_channels=1, out_channels=8, kernel_size=5), 7),
        (dict(in_channels=1, out_channels=4, kernel_size=3, stride=2, padding=1, dilation=2), 7),
        (dict(in_channels=1, out_channels=4, kernel_size=4, stride=3, padding=2, dilation=1), 7),
    ],
)
def test_fast_conv_sampler_equals_opacus(images: torch.Tensor, conv: dict, pool: int) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv)
    images = nn.functional.avg_pool2d(images, pool)
    grouped = layer(images).shape[2] * layer(images).shape[3] < grad_samplers._GROUPED_BELOW
    assert grouped == (pool > 1)
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
    device, _ = build_split(**OMNIGLOT)
    device = device.double()
    first_block = nn.Sequential(*list(device)[:4])  # conv, ReLU, GroupNorm, max-pool
    features = first_block(images.double()).detach()  # [12,32,33,33]: the second convolution's input
    layer = device[5]
    ours = _per_sample(grad_samplers.conv2d_per_sample, layer, features)
    theirs = _per_sample(compute_conv_grad_sample, layer, features)
    for param, grad in theirs.items():
        torch.testing.assert_close(ours[param], grad, atol=1e-10, rtol=1e-8)


def _grad_samples(kind: str, images: torch.Tensor, dtype: torch.dtype, **model) -> dict[str, torch.Tensor]:
    """Per-sample gradients of every device parameter for one batch, by Opacus's hooks or the fused backward."""
    labels = torch.arange(len(images)) % 5
    torch.manual_seed(0)
    device, head = (m.to(dtype) for m in build_split(**model, **OMNIGLOT))
    images = images.to(dtype)
    torch.manual_seed(7)  # the same dropout masks whichever way
    if kind == "opacus":
        wrapped = GradSampleModule(device)
        nn.functional.cross_entropy(head(wrapped(images)), labels).backward()
        wrapped.remove_hooks()
    else:
        fused = grad_samplers.PerSampleDevice(device)
        activations = fused(images)
        cut = activations.detach().requires_grad_(True)
        nn.functional.cross_entropy(head(cut), labels).backward()
        fused.backward(cut.grad)
        assert all(p.grad is None for p in device.parameters())  # no summed gradient is computed
    return {name: p.grad_sample.detach().double() for name, p in device.named_parameters()}


@pytest.mark.parametrize(
    "model", [dict(), dict(norm_groups=4, dropout=0.3), dict(cut=1), dict(cut=2), dict(cut=3, invert_input=True)]
)
def test_fused_backward_equals_opacus(images: torch.Tensor, model: dict) -> None:
    """Every parameter's per-sample gradient from one fused backward pass equals Opacus's hooks' (float64: exact
    up to rounding, so far inside 1e-5), at every cut (the device: 4 parameters a block)."""
    theirs = _grad_samples("opacus", images, torch.float64, **model)
    ours = _grad_samples("fused", images, torch.float64, **model)
    assert set(ours) == set(theirs) and len(ours) == 4 * model.get("cut", 4)
    for name, grad in theirs.items():
        assert ours[name].shape == grad.shape and grad.shape[0] == len(images)
        assert grad.abs().max() > 1e-3, name  # non-trivial, so the comparison can fail
        torch.testing.assert_close(ours[name], grad, atol=1e-10, rtol=1e-8, msg=name)


def test_fused_backward_float32_as_accurate_as_opacus(images: torch.Tensor) -> None:
    """In float32 both differ from the float64 values by rounding (the first convolution sums 9,801 products per
    weight); the fused backward's error is no larger than Opacus's."""
    truth = _grad_samples("fused", images, torch.float64)
    errors = {
        kind: {n: float((g - truth[n]).abs().max()) for n, g in _grad_samples(kind, images, torch.float32).items()}
        for kind in ("opacus", "fused")
    }
    for name, opacus_error in errors["opacus"].items():
        assert errors["fused"][name] <= 1.1 * opacus_error + 1e-6, name


def test_fused_backward_empty_batch() -> None:
    device, _ = build_split(**OMNIGLOT)
    fused = grad_samplers.PerSampleDevice(device)
    activations = fused(torch.zeros(0, 1, 105, 105))
    fused.backward(torch.zeros_like(activations))
    assert all(p.grad_sample.shape == (0, *p.shape) for p in device.parameters())


def test_fused_round_frees_the_model(images: torch.Tensor) -> None:
    """After a fused DP round the model can be freed. Per-sample gradients computed with an autograd graph would tie
    each parameter to itself through C++ (a cycle the garbage collector cannot see): 60 MB kept per round."""
    torch.manual_seed(0)
    device, head = build_split(**OMNIGLOT)
    cfg = RunConfig(noise=0.8, clip=0.1, batch_size=4, grad_sampler="fused")
    train_local(device, head, images, torch.arange(len(images)) % 4, cfg, [], seed=3)
    assert all(p.grad_sample is not None and p.grad_sample.grad_fn is None for p in device.parameters())
    weight = weakref.ref(device[0].weight)
    del device, head
    gc.collect()
    assert weight() is None


def test_empty_poisson_batch_step() -> None:
    """A DP step on an empty Poisson batch (possible, if rare) adds noise only and leaves no NaN anywhere."""
    torch.manual_seed(0)
    device, head = build_split(**OMNIGLOT)
    before = [p.detach().clone() for p in device.parameters()]
    fused = grad_samplers.install(GradSampleModule(device), "fused")
    device_opt = DPOptimizer(
        torch.optim.SGD(device.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4
    )
    head_opt = torch.optim.SGD(head.parameters(), lr=0.1)
    loss, correct, cut = split_step(
        fused, head, device_opt, head_opt, torch.zeros(0, 1, 105, 105), torch.zeros(0, dtype=torch.int64)
    )
    assert (loss, correct, cut.shape) == (0.0, 0, (0, 32, 1, 1))
    for p, q in zip(device.parameters(), before, strict=True):
        assert torch.isfinite(p).all() and not torch.equal(p, q)  # the noise moved every parameter
    assert all(torch.isfinite(p).all() for p in head.parameters())


def test_fused_refuses_unsupported_layers() -> None:
    with pytest.raises(ValueError, match="supports Conv2d and GroupNorm layers, not Linear"):
        grad_samplers.PerSampleDevice(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="affine"):
        grad_samplers.PerSampleDevice(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2, affine=False)))


def test_install_is_local_to_one_model() -> None:
    fast = grad_samplers.install(GradSampleModule(build_split(**OMNIGLOT)[0]), "fast")
    other = GradSampleModule(build_split(**OMNIGLOT)[0])
    assert fast.GRAD_SAMPLERS[nn.Conv2d] is grad_samplers.conv2d_per_sample
    assert other.GRAD_SAMPLERS[nn.Conv2d] is compute_conv_grad_sample
    assert grad_samplers.install(other, "opacus").GRAD_SAMPLERS[nn.Conv2d] is compute_conv_grad_sample
    with pytest.raises(UserError, match="^--grad-sampler must be one of fused, fast, opacus, got 'slow'$"):
        grad_samplers.install(other, "slow")
    with pytest.raises(TypeError):
        grad_samplers.install(build_split(**OMNIGLOT)[0])
    wrapped = GradSampleModule(build_split(**OMNIGLOT)[0])
    fused = grad_samplers.install(wrapped, "fused")
    assert isinstance(fused, grad_samplers.PerSampleDevice) and fused.module is wrapped.to_standard_module()
    assert not hasattr(wrapped, "autograd_grad_sample_hooks")  # Opacus's hooks are gone


def test_training_is_identical_with_either_sampler(images: torch.Tensor) -> None:
    """One local DP round (noise and clipping on, same seeds): the same weights and ledger whichever sampler runs."""
    labels = torch.arange(len(images)) % 4
    results = {}
    for sampler in grad_samplers.SAMPLERS:
        torch.manual_seed(0)
        device, head = build_split(**OMNIGLOT)
        cfg = RunConfig(noise=0.8, clip=0.1, batch_size=4, grad_sampler=sampler)
        history: History = []
        result = train_local(device, head, images, labels, cfg, history, seed=3)
        results[sampler] = (result, [p.detach().clone() for p in device.parameters()])
    slow, slow_weights = results.pop("opacus")
    assert slow.steps > 0
    for ours, ours_weights in results.values():
        assert ours.history == slow.history and ours.loss == pytest.approx(slow.loss, rel=1e-5)
        for p, q in zip(ours_weights, slow_weights, strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_fused_backward_averages_each_images_views_before_clipping(images: torch.Tensor) -> None:
    """--aug-mult K: a batch of K consecutive views per image gives one per-sample gradient per image, the mean of
    its views' gradients (each view's gradient of its own loss, as Opacus's hooks compute it)."""
    views = augmented_views(images[:4].double(), 3, torch.Generator().manual_seed(1))
    per_view = _grad_samples("opacus", views, torch.float64)
    torch.manual_seed(0)
    device, head = (m.double() for m in build_split(**OMNIGLOT))
    fused = grad_samplers.PerSampleDevice(device)
    activations = fused(views)
    cut = activations.detach().requires_grad_(True)
    nn.functional.cross_entropy(head(cut), torch.arange(len(views)) % 5).backward()
    fused.backward(cut.grad, views=3)
    for name, p in device.named_parameters():
        expected = per_view[name].view(4, 3, *p.shape).mean(1)
        assert p.grad_sample.shape == (4, *p.shape)
        torch.testing.assert_close(p.grad_sample.double(), expected, atol=1e-10, rtol=1e-8, msg=name)
    with pytest.raises(ValueError, match="not 2 views of each image"):
        fused(views[:5])
        fused.backward(torch.zeros(5, 32, 1, 1, dtype=torch.float64), views=2)


def test_augmented_views_are_small_seeded_changes_of_each_image(images: torch.Tensor) -> None:
    batch = images[:4]
    views = augmented_views(batch, 3, torch.Generator().manual_seed(2))
    assert views.shape == (12, 1, 105, 105) and float(views.min()) >= 0 and float(views.max()) <= 1
    torch.testing.assert_close(views, augmented_views(batch, 3, torch.Generator().manual_seed(2)))
    originals = batch.repeat_interleave(3, dim=0)
    changed = (views - originals).abs().flatten(1).mean(1)
    assert (changed > 0.005).all() and (changed < 0.2).all()  # every view moved, none beyond recognition
    ink = (1 - views).flatten(1).sum(1) / (1 - originals).flatten(1).sum(1)
    assert ((ink > 0.7) & (ink < 1.4)).all()  # the strokes stay (scale 0.9-1.1: ink within about 0.8-1.2)
