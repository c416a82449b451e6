"""split/model.py: shapes at the cut, Opacus compatibility, and that the split model learns the alphabet task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from runs import OMNIGLOT
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from data.base import ImageSet
from split.model import DeviceNet, ServerHead, build_split, cut_shape


@pytest.mark.parametrize("batch", [1, 5])
def test_device_output_shape(batch: int) -> None:
    torch.manual_seed(0)
    out = DeviceNet(105)(torch.rand(batch, 1, 105, 105))
    assert out.shape == (batch, 32, 1, 1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("batch", [1, 5])
def test_head_output_shape(batch: int) -> None:
    out = ServerHead(105, 20)(torch.randn(batch, 32, 1, 1))
    assert out.shape == (batch, 20)
    assert ServerHead(105, 7)(torch.randn(batch, 32, 1, 1)).shape == (batch, 7)


@pytest.mark.parametrize("cut, side", [(1, 33), (2, 13), (3, 4), (4, 1)])
def test_every_cut_splits_the_same_network(cut: int, side: int) -> None:
    """The device is the first ``cut`` blocks, the server part the rest: together always the original network."""
    torch.manual_seed(0)
    device, head = build_split(cut=cut, **OMNIGLOT)
    assert device.out_shape == cut_shape(cut, 105) == (32, side, side) and head.in_shape == (32, side, side)
    images = torch.rand(3, 1, 105, 105)
    assert device(images).shape == (3, 32, side, side) and head(device(images)).shape == (3, 20)
    convs = [m for part in (device, head) for m in part if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [7, 7, 5, 3] and sum(isinstance(m, nn.Conv2d) for m in device) == cut
    torch.manual_seed(0)
    whole, _ = build_split(**OMNIGLOT)
    assert [tuple(p.shape) for p in device.parameters()] + [tuple(p.shape) for p in head.parameters()][
        : 4 * (4 - cut)
    ] == [tuple(p.shape) for p in whole.parameters()]
    with pytest.raises(ValueError, match="cut must be one of"):
        cut_shape(5, 105)


def test_the_original_cut_keeps_its_state_dict_keys() -> None:
    """Runs trained before --cut existed load unchanged: the head at cut 4 starts with its Flatten."""
    device, head = build_split(**OMNIGLOT)
    assert list(head.state_dict()) == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert list(device.state_dict())[:2] == ["0.weight", "0.bias"]


def test_split_forward_on_real_images(evaluation: ImageSet) -> None:
    torch.manual_seed(0)
    device, head = build_split(**OMNIGLOT)
    images = torch.from_numpy(evaluation.as_float(np.arange(0, 4000, 1000)))
    activations = device(images)
    logits = head(activations)
    assert activations.shape == (4, 32, 1, 1)
    assert logits.shape == (4, 20)
    assert torch.equal(logits, head(device(images)))
    # Different drawings give different activations at the cut.
    assert not torch.allclose(activations[0], activations[1])


@pytest.mark.parametrize(
    "module", [DeviceNet(105), ServerHead(105, 20), DeviceNet(105, norm_groups=8)], ids=["device", "head", "g8"]
)
def test_opacus_compatible(module: nn.Module) -> None:
    assert ModuleValidator.validate(module, strict=False) == []
    assert not any(isinstance(m, _BatchNorm) for m in module.modules())
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


def test_groupnorm_groups() -> None:
    norms = [m for m in DeviceNet(105).modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4  # one per block
    assert all(m.num_groups == 1 and m.num_channels == 32 for m in norms)
    assert all(m.num_groups == 4 for m in DeviceNet(105, norm_groups=4).modules() if isinstance(m, nn.GroupNorm))
    with pytest.raises(ValueError, match="norm_groups"):
        DeviceNet(105, norm_groups=5)


def test_dropout_setting() -> None:
    device, head = build_split(dropout=0.2, **OMNIGLOT)
    drops = [m for m in (*device.modules(), *head.modules()) if isinstance(m, nn.Dropout)]
    assert len(drops) == 5 and all(m.p == 0.2 for m in drops)
    assert all(m.p == 0.0 for m in DeviceNet(105).modules() if isinstance(m, nn.Dropout))


# Four alphabets of distinct scripts: balanced, so a label-blind model cannot beat ln 4 (the label entropy).
# (All 20 alphabets sit on a loss plateau near ln 20 for the first few hundred steps: too slow for a unit test.)
LEARN_ALPHABETS = ("Aurek-Besh", "Malayalam", "Tibetan", "ULOG")
LEARN_PER_ALPHABET = 375  # 1,500 images
LEARN_EPOCHS = 2


@pytest.mark.slow
def test_split_model_learns(evaluation: ImageSet) -> None:
    """Non-private Adam (lr 1e-3, batch 32) on 1,500 real images: the training loss falls well below what any
    predictor that ignores the pixels can reach, so gradients flow through head and device alike."""
    rng = np.random.default_rng(0)
    ids = [evaluation.alphabet_names.index(name) for name in LEARN_ALPHABETS]
    idx = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(evaluation.alphabet == a), LEARN_PER_ALPHABET, replace=False) for a in ids]
        )
    )
    images = torch.from_numpy(evaluation.as_float(idx))
    labels = torch.from_numpy(evaluation.alphabet[idx])  # ids in 0..19, for the full 20-way head

    torch.manual_seed(0)
    device, head = build_split(**OMNIGLOT)
    optimizer = torch.optim.Adam([*device.parameters(), *head.parameters()], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(0)
    losses, hits = [], []
    for _ in range(LEARN_EPOCHS):
        for batch in torch.randperm(len(idx), generator=order).split(32):
            logits = head(device(images[batch]))
            loss = loss_fn(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hits.append((logits.argmax(1) == labels[batch]).float().mean().item())

    per_epoch = len(losses) // LEARN_EPOCHS
    initial = losses[0]  # the untrained model's first batch
    final = float(np.mean(losses[-per_epoch:]))
    label_blind = float(np.log(len(LEARN_ALPHABETS)))
    print(f"loss: first batch {initial:.3f}, last epoch {final:.3f}, label-blind best {label_blind:.3f}")
    assert initial > label_blind, initial  # the untrained model knows nothing
    assert final < 0.85 * initial, (initial, final)
    assert final < 0.85 * label_blind, (label_blind, final)  # learned from the pixels, not just the label prior
    assert float(np.mean(hits[-per_epoch:])) > 0.5  # chance is 0.25
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in device.parameters())
