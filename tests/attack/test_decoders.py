"""split/decoders.py, attack/decoders.py and attack/decoder_attack.py: shapes, registry, the attacker's unseen test
set, a short real training run, and the decoder attacks as plug-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack import decoder_attack
from attack.base import AttackerKnowledge, Payload
from attack.decoder_attack import ConditionedDecoderAttack, SeedDecoderAttack, UpDecoderAttack
from attack.decoders import reconstruct, train_decoder
from attack.metrics import mean_image_baseline, mse
from core.errors import UserError
from data.base import ImageSet, shared_files
from split.decoders import DECODERS, SeedDecoder, UpDecoder, build_decoder
from split.model import DeviceNet, device_activations

OVERLAP_ALPHABETS = {"Greek", "Latin"}  # in both small1 and small2 (docs/experiment.md, the pitfall)


@pytest.fixture(scope="module")
def device() -> DeviceNet:
    torch.manual_seed(0)
    return DeviceNet(105)  # untrained: its activations still carry enough to beat the mean image on training data


@pytest.fixture(scope="module")
def train_images(small1: ImageSet) -> np.ndarray:
    """512 small1 images spread over its five alphabets, float32 [512,1,105,105]."""
    return small1.as_float(np.linspace(0, len(small1) - 1, 512).astype(np.int64))


@pytest.fixture(scope="module")
def train_activations(device: DeviceNet, train_images: np.ndarray) -> torch.Tensor:
    return device_activations(device, train_images)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_maps_activations_to_images(name: str) -> None:
    torch.manual_seed(0)
    decoder = build_decoder(name)
    out = decoder(torch.randn(3, 32, 1, 1))
    assert out.shape == (3, 1, 105, 105) and out.dtype == torch.float32
    assert out.min() >= 0.0
    if name == "up":
        assert out.max() <= 1.0  # sigmoid output


def test_registry() -> None:
    assert {"seed": SeedDecoder, "up": UpDecoder} == DECODERS
    assert isinstance(build_decoder("up"), UpDecoder)
    with pytest.raises(UserError, match="^decoder must be one of seed, up, got 'nope'$"):
        build_decoder("nope")


def test_seed_decoder_layout_and_live_start(train_activations: torch.Tensor) -> None:
    convs = [m for m in SeedDecoder() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (32, 32, 9, 1, 0),
        (32, 32, 7, 2, 0),
        (32, 1, 7, 2, 0),
        (1, 1, 5, 2, 0),
    ]
    # Keras-style init: for every one of these seeds some output pixels are alive (> 0), so gradients flow.
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            assert (SeedDecoder()(train_activations[:64]) > 0).any()


def test_unseen_set_is_disjoint_from_small1(small1: ImageSet, small2: ImageSet) -> None:
    shared = shared_files(small1, small2)
    unseen = np.flatnonzero(~shared)
    assert len(unseen) == 2_120 and shared.sum() == 1_000
    # By content: no unseen PNG is byte-identical to a small1 PNG.
    assert not {small2.md5[i] for i in unseen} & set(small1.md5)
    # By path: the overlap is exactly Greek and Latin, all of whose small2 files are small1's files too.
    small1_files = set(small1.files)
    overlap = [i for i, f in enumerate(small2.files) if f.split("/")[0] in OVERLAP_ALPHABETS]
    assert len(overlap) == 1_000 and all(small2.files[i] in small1_files and shared[i] for i in overlap)
    assert not {small2.files[i] for i in unseen} & small1_files
    assert {small2.files[i].split("/")[0] for i in unseen} == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}


def test_device_activations(device: DeviceNet, train_images: np.ndarray, train_activations: torch.Tensor) -> None:
    assert train_activations.shape == (512, 32, 1, 1) and train_activations.dtype == torch.float32
    device.train()
    again = device_activations(device, torch.from_numpy(train_images[:100]), batch_size=33)
    assert device.training  # mode restored
    torch.testing.assert_close(again, train_activations[:100])  # batching does not matter
    assert train_activations.std(dim=0).min() > 0  # no dead channel: every feature varies across images


def test_short_training_beats_the_mean_image(train_activations: torch.Tensor, train_images: np.ndarray) -> None:
    torch.manual_seed(0)
    decoder = build_decoder("up")
    seen: list[tuple[int, float]] = []
    losses = train_decoder(
        decoder, train_activations, train_images, epochs=3, progress=lambda e, loss: seen.append((e, loss))
    ).train
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert seen == list(enumerate(losses, start=1))
    rec = reconstruct(decoder, train_activations)
    assert rec.shape == train_images.shape and rec.dtype == np.float32
    assert rec.min() >= 0.0 and rec.max() <= 1.0
    assert mse(train_images, rec) < mse(train_images, mean_image_baseline(train_images, len(train_images)))


def test_training_is_reproducible_and_reconstruct_clips(
    train_activations: torch.Tensor, train_images: np.ndarray
) -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        decoder = SeedDecoder()
        runs.append(train_decoder(decoder, train_activations[:64], train_images[:64], epochs=2, seed=5).train)
    assert runs[0] == runs[1]
    with torch.no_grad():
        decoder[-2].bias.fill_(2.0)  # push the last layer above 1 everywhere
    rec = reconstruct(decoder, train_activations[:8])
    assert rec.max() == 1.0 and rec.min() >= 0.0


def test_train_decoder_rejects_misaligned_inputs(train_activations: torch.Tensor, train_images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="10 activations but 11 images"):
        train_decoder(build_decoder("up"), train_activations[:10], train_images[:11], epochs=1)


def test_early_stopping_keeps_the_best_held_out_epoch(
    train_activations: torch.Tensor, train_images: np.ndarray
) -> None:
    torch.manual_seed(0)
    decoder = build_decoder("up", dropout=0.0)  # no dropout: it overfits 48 images, so the held-out MSE turns up
    log = train_decoder(decoder, train_activations[:64], train_images[:64], epochs=40, seed=0, holdout=16, patience=3)
    assert len(log.holdout) == len(log.train) < 40  # stopped early
    assert log.best_epoch == int(np.argmin(log.holdout)) + 1 and len(log.train) == log.best_epoch + 3
    # The kept weights are the best epoch's: their held-out MSE is the best one measured.
    held = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:16]
    kept = float(((reconstruct(decoder, train_activations[held]) - train_images[held.numpy()]) ** 2).mean())
    assert kept == pytest.approx(log.best_holdout, rel=1e-6)
    with pytest.raises(ValueError, match="holdout must leave training rows"):
        train_decoder(decoder, train_activations[:8], train_images[:8], holdout=8)


def _knowledge(device: DeviceNet, activations: torch.Tensor, images: np.ndarray, **options) -> AttackerKnowledge:
    """The attacker's knowledge with an untrained device, and a head stand-in: the label is the first channel's
    rank among 20 bins (any function of the activation will do)."""

    def classify(acts: torch.Tensor) -> np.ndarray:
        return np.clip((acts.flatten(1)[:, 0].numpy() * 10).astype(np.int64), 0, 19)

    def query(images: np.ndarray, model: torch.nn.Module | None = None) -> torch.Tensor:
        return device_activations(model or device, images)

    return AttackerKnowledge(device, query, classify, 20, images, activations, **options)


@pytest.mark.parametrize("attack_class", [SeedDecoderAttack, UpDecoderAttack])
def test_decoder_attack_is_the_seeded_training_procedure(
    attack_class: type,
    device: DeviceNet,
    train_activations: torch.Tensor,
    train_images: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decoder_attack, "HOLDOUT_MAX", 8)
    epochs: list[int] = []
    progress = lambda epoch, loss: epochs.append(epoch)  # noqa: E731
    knowledge = _knowledge(device, train_activations[:64], train_images[:64], seed=3, epochs=2, progress=progress)
    torch.manual_seed(99)  # whatever drew from torch's global RNG before must not matter: fit seeds it
    attack = attack_class()
    attack.fit(knowledge)
    # The procedure by hand: seed, build, train with the attack's held-out slice and loss, reconstruct.
    torch.manual_seed(3)
    decoder = build_decoder(attack_class.decoder)
    log = train_decoder(
        decoder,
        train_activations[:64],
        train_images[:64],
        epochs=2,
        batch_size=attack_class.batch_size,
        seed=3,
        holdout=6,  # 10 % of 64, under HOLDOUT_MAX
        patience=decoder_attack.PATIENCE,
        ssim_weight=attack_class.ssim_weight,
        min_delta=decoder_attack.MIN_DELTA,
    )
    assert attack.log == log and attack.holdout_mse() == log.best_holdout
    assert attack.fit_summary()["holdout_mse"] == log.best_holdout
    assert epochs == [1, 2]
    rec = attack.reconstruct(Payload(train_activations[64:80], partition=0))
    assert rec.shape == (16, 1, 105, 105) and rec.dtype == np.float32
    np.testing.assert_array_equal(rec, reconstruct(decoder, train_activations[64:80]))


def test_conditioned_decoder_uses_the_label(
    device: DeviceNet, train_activations: torch.Tensor, train_images: np.ndarray
) -> None:
    knowledge = _knowledge(device, train_activations[:64], train_images[:64], seed=0, epochs=2)
    attack = ConditionedDecoderAttack()
    attack.fit(knowledge)
    assert attack.model.stem[0].in_features == 32 + 20  # activations and a one-hot label (channels of a 1x1 map)
    acts = train_activations[64:72]
    predicted = knowledge.classify(acts)
    # No label sent: the head's prediction stands in, so giving exactly that label changes nothing ...
    unlabelled = attack.reconstruct(Payload(acts))
    np.testing.assert_array_equal(unlabelled, attack.reconstruct(Payload(acts, labels=predicted)))
    # ... and a wrong label changes every reconstruction.
    wrong = attack.reconstruct(Payload(acts, labels=(predicted + 7) % 20))
    assert all(np.abs(wrong[i] - unlabelled[i]).max() > 1e-4 for i in range(len(acts)))
