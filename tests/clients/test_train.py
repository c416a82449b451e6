"""The local split step with Opacus: equivalence to a plain step, per-sample clipping, FedAvg weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from runs import OMNIGLOT
from torch.nn import GroupNorm
from torch.utils.data import DataLoader, TensorDataset

from clients.train import _proximal_step, label_skew_bias, split_step, train_local
from core.config import RunConfig
from core.privacy import epsilon
from data.omniglot import EVALUATION, load_set
from split.model import build_split


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_set(EVALUATION)
    idx = np.arange(0, 13_180, 1_650)[:8]  # 8 images from different alphabets
    return torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx])


def _models(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    device, head = build_split(**OMNIGLOT)
    return device.to(dtype), head.to(dtype)


def _private(device, images, labels, noise: float, clip: float):
    optimizer = torch.optim.SGD(device.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    model, optimizer, _ = PrivacyEngine().make_private(
        module=device,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    return model, optimizer


def test_dp_step_without_noise_or_clipping_equals_plain_step(batch):
    """In float64, so that summation order (per-sample vs batched gradients) cannot hide a real difference."""
    images, labels = batch[0].double(), batch[1]
    plain_device, plain_head = _models(dtype=torch.float64)
    split_step(
        plain_device,
        plain_head,
        torch.optim.SGD(plain_device.parameters(), lr=0.1),
        torch.optim.SGD(plain_head.parameters(), lr=0.1),
        images,
        labels,
    )
    dp_device, dp_head = _models(dtype=torch.float64)
    before = [p.detach().clone() for p in dp_device.parameters()]
    model, optimizer = _private(dp_device, images, labels, noise=0.0, clip=1e9)
    split_step(model, dp_head, optimizer, torch.optim.SGD(dp_head.parameters(), lr=0.1), images, labels)
    moved = sum(float((p.detach() - b).abs().max()) for p, b in zip(dp_device.parameters(), before, strict=True))
    assert moved > 1e-4  # the step did something
    for p, q in zip(plain_device.parameters(), dp_device.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)
    for p, q in zip(plain_head.parameters(), dp_head.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)


def test_per_sample_clipping_bounds_each_sample(batch):
    images, labels = batch
    clip = 0.05
    device, head = _models()
    model, optimizer = _private(device, images, labels, noise=0.0, clip=clip)
    activations = model(images)
    cut = activations.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(head(cut), labels).backward()
    activations.backward(cut.grad)
    params = [p for p in device.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.reshape(len(labels), -1) for p in params]
    norms = torch.cat(per_sample, dim=1).norm(dim=1)
    assert (norms > clip).all()  # clipping is active for every sample, so the test can fail
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    optimizer.clip_and_accumulate()
    for p, g in zip(params, per_sample, strict=True):
        expected = (factors[:, None] * g).sum(0).reshape(p.shape)
        torch.testing.assert_close(p.summed_grad, expected, atol=1e-6, rtol=1e-4)
    clipped = torch.cat([factors[:, None] * g for g in per_sample], dim=1).norm(dim=1)
    assert (clipped <= clip * (1 + 1e-4)).all()


def test_train_local_composes_history(batch):
    images, labels = batch
    images, labels = images.repeat(8, 1, 1, 1), labels.repeat(8)  # 64 images -> 2 steps per epoch at batch 32
    device, head = _models()
    cfg = RunConfig(noise=0.8, local_epochs=2)
    first = train_local(device, head, images, labels, cfg, [], seed=1)
    second = train_local(device, head, images, labels, cfg, first.history, seed=2)
    assert first.steps == 4 and second.steps == 4
    assert second.history == [(0.8, 0.5, 8)]
    assert epsilon(second.history, 1e-5) > epsilon(first.history, 1e-5) > 0
    no_dp = train_local(device, head, images, labels, RunConfig(noise=0.0), [], seed=3)
    assert no_dp.history == [(0.0, 0.5, 2)] and epsilon(no_dp.history, 1e-5) == float("inf")


def test_label_skew_bias_restricts_or_calibrates_to_the_clients_classes() -> None:
    labels = torch.tensor([0, 0, 0, 2])
    restricted = label_skew_bias("restricted", labels, 4)
    assert restricted.tolist() == [0.0, float("-inf"), 0.0, float("-inf")]
    adjusted = label_skew_bias("logit-adjust", labels, 4)
    torch.testing.assert_close(adjusted, torch.tensor([0.75, 1e-4, 0.25, 1e-4]).log())
    assert label_skew_bias("none", labels, 4) is None
    # Restricted: the loss of a sample ignores the absent classes' logits entirely.
    logits = torch.tensor([[1.0, 50.0, 0.0, -3.0]], requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits + restricted, torch.tensor([0]))
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))


def test_proximal_step_pulls_towards_the_global_weights() -> None:
    device = torch.nn.Linear(2, 1)
    anchor = [p.detach().clone() for p in device.parameters()]
    with torch.no_grad():
        for p in device.parameters():
            p.add_(1.0)
    _proximal_step(device, anchor, 0.25)
    for p, a in zip(device.parameters(), anchor, strict=True):
        torch.testing.assert_close(p.detach(), a + 0.75)


def test_physical_batches_take_the_same_dp_steps_as_the_logical_batch(batch, monkeypatch):
    """--physical-batch splits each Poisson batch (Opacus's BatchMemoryManager): same steps, same ledger, and with
    the head held fixed the same device weights (float64: only the summation order of the clipped gradients
    differs), for the fused sampler and Opacus's own."""
    images, labels = batch[0].double().repeat(8, 1, 1, 1), batch[1].repeat(8)  # 64 images
    sizes = []

    def recording_step(*args, **kwargs):
        sizes.append(len(args[5]))  # the labels of the batch computed at once
        return split_step(*args, **kwargs)

    monkeypatch.setattr("clients.train.split_step", recording_step)
    for sampler in ("fused", "opacus"):
        results = []
        for physical in (0, 5):
            sizes.clear()
            device, head = _models(dtype=torch.float64)
            head.requires_grad_(False)  # its optimizer then has nothing to step: only the device trains
            cfg = RunConfig(noise=0.8, batch_size=32, physical_batch=physical, grad_sampler=sampler, lr=0.01)
            result = train_local(device, head, images, labels, cfg, [], seed=4, record_cut=True)
            results.append((result, [p.detach().clone() for p in device.parameters()]))
            assert max(sizes) <= (physical or 64) and len(sizes) > (2 if physical else 1)
        (whole, whole_w), (split, split_w) = results
        assert split.steps == whole.steps == 2 and split.history == whole.history == [(0.8, 0.5, 2)]
        assert len(split.cut_activations) == len(whole.cut_activations)  # every image sent once either way
        for p, q in zip(whole_w, split_w, strict=True):
            torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("sampler", ["fused", "opacus"])
def test_frozen_blocks_keep_their_weights_and_the_rest_train(batch, sampler):
    images, labels = batch[0].repeat(4, 1, 1, 1), batch[1].repeat(4)  # 32 images
    for frozen in (2, 4):
        device, head = _models()
        before = [p.detach().clone() for p in device.parameters()]
        cfg = RunConfig(noise=0.8, batch_size=16, freeze_blocks=frozen, grad_sampler=sampler, lr=0.01)
        result = train_local(device, head, images, labels, cfg, [], seed=5)
        assert result.history == [(0.8, 0.5, 2)]  # a wholly frozen device: the planned steps at the run's sigma
        convs = [m for m in device if isinstance(m, torch.nn.Conv2d)]
        moved = [not torch.equal(c.weight, b) for c, b in zip(convs, before[::4], strict=True)]  # conv w, b, GN w, b
        assert moved == [block > frozen for block in (1, 2, 3, 4)]
        assert all(p.requires_grad is False for c in convs[:frozen] for p in c.parameters())


@pytest.mark.parametrize("sampler", ["fused", "opacus"])
def test_train_params_norm_moves_only_the_group_norms_at_the_same_dp_steps(batch, sampler):
    """--train-params norm: DP-SGD trains the GroupNorm scales and shifts (256 numbers at cut 4) and nothing else,
    with the ledger's steps those of training every parameter; both per-sample samplers agree on what moves."""
    images, labels = batch[0].repeat(4, 1, 1, 1), batch[1].repeat(4)  # 32 images
    device, head = _models()
    before = {name: p.detach().clone() for name, p in device.named_parameters()}
    cfg = RunConfig(noise=0.8, batch_size=16, train_params="norm", grad_sampler=sampler, lr=0.01)
    result = train_local(device, head, images, labels, cfg, [], seed=5)
    assert result.history == [(0.8, 0.5, 2)]
    norms = {name for name, _ in device.named_parameters() if isinstance(device[int(name.split(".")[0])], GroupNorm)}
    moved = {name for name, p in device.named_parameters() if not torch.equal(p, before[name])}
    assert moved == norms and sum(before[n].numel() for n in norms) == 256


def test_augmentation_multiplicity_keeps_the_steps_and_sends_every_view(batch):
    images, labels = batch[0].repeat(4, 1, 1, 1), batch[1].repeat(4)  # 32 images
    device, head = _models()
    cfg = RunConfig(noise=0.8, batch_size=16, aug_mult=3)
    result = train_local(device, head, images, labels, cfg, [], seed=6, record_cut=True)
    plain = train_local(*_models(), images, labels, RunConfig(noise=0.8, batch_size=16), [], seed=6, record_cut=True)
    assert result.history == plain.history == [(0.8, 0.5, 2)]  # K views are one record: the same DP steps
    assert len(result.cut_activations) == 3 * len(plain.cut_activations)  # the server receives every view
    positions = result.cut_positions.view(-1, 3)
    assert (positions == positions[:, :1]).all()  # each image's K views are consecutive
