"""What the curious server holds beyond the 2020 attacker: public images (attack/surrogate.py) and white-box access
to the device models, a client's own included (attack/whitebox.py). Real Omniglot data throughout."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attack.base import AttackerKnowledge, Payload
from attack.decoder_attack import ConditionedDecoderAttack
from attack.surrogate import surrogate_images
from attack.whitebox import LatentWhiteBoxAttack, RMLEAttack, activation_distance, total_variation
from core.errors import UserError
from data.base import get_dataset
from data.omniglot import BACKGROUND, ImageSet, load_set
from split.model import DeviceNet, device_activations


@pytest.fixture(scope="module")
def background(omniglot_root: Path) -> ImageSet:
    return load_set(BACKGROUND, omniglot_root)


def _zip_md5s(path: Path) -> set[str]:
    """md5 of every PNG in an Omniglot zip, read straight from the archive (not through our loader)."""
    with zipfile.ZipFile(path) as archive:
        return {hashlib.md5(archive.read(n)).hexdigest() for n in archive.namelist() if n.endswith(".png")}


def test_public_surrogate_is_disjoint_from_small2_and_the_clients(
    omniglot_root: Path, background: ImageSet, small2: ImageSet
) -> None:
    public = get_dataset("omniglot", omniglot_root).load("public")
    rows = np.flatnonzero(np.isin(np.asarray(background.md5), np.asarray(public.md5)))
    public_md5 = set(public.md5)
    # No file of small2 (the attacker's own test set) and none of images_evaluation (the clients' images), by the
    # bytes of the PNGs in the zips themselves.
    assert not public_md5 & _zip_md5s(omniglot_root / "images_background_small2.zip")
    assert not public_md5 & _zip_md5s(omniglot_root / "images_evaluation.zip")
    # No alphabet of small2 either, and everything else of the background set is kept.
    names = {background.alphabet_names[background.alphabet[i]] for i in rows}
    assert not names & set(small2.alphabet_names) and len(names) == 25
    assert len(rows) == 16_160
    images, described = surrogate_images("public", "omniglot", str(omniglot_root))
    assert images.shape == (16_160, 1, 105, 105) and images.dtype == np.float32
    assert described == "images_background minus small2's alphabets and files"
    np.testing.assert_array_equal(images[:3], background.as_float(rows[:3]))
    with pytest.raises(UserError, match="^--surrogate must be one of small1, public, got 'nope'$"):
        surrogate_images("nope", "omniglot", str(omniglot_root))


@pytest.fixture(scope="module")
def device() -> DeviceNet:
    torch.manual_seed(0)
    return DeviceNet(105, invert_input=True).eval()


@pytest.fixture(scope="module")
def images(small1: ImageSet) -> np.ndarray:
    return small1.as_float(np.linspace(0, len(small1) - 1, 320).astype(np.int64))


def _knowledge(device: DeviceNet, images: np.ndarray) -> AttackerKnowledge:
    def query(x: np.ndarray, model: torch.nn.Module | None = None) -> torch.Tensor:
        return device_activations(model or device, x)

    def classify(acts: torch.Tensor) -> np.ndarray:
        return np.clip((acts.flatten(1)[:, 0].numpy() * 10).astype(np.int64), 0, 19)

    acts = query(images[:256])
    return AttackerKnowledge(device, query, classify, 20, images[:256], acts, seed=0, epochs=2)


def test_whitebox_searches_through_the_model_that_produced_the_activations(
    device: DeviceNet, images: np.ndarray
) -> None:
    torch.manual_seed(1)
    client = DeviceNet(105, invert_input=True).eval()  # a client's own last-round model, not the global one
    attack = LatentWhiteBoxAttack()
    attack.fit(_knowledge(device, images))
    acts = device_activations(client, images[:2])
    assert attack.sender(Payload(acts, partition=3, device=client)) is client
    assert attack.sender(Payload(acts)) is device  # inference and the attacker's own queries: the global model


# Distance after / before on this untrained device (on the trained sigma-0 model: from 0.205 to 0.048 and 0.013,
# docs/results.md, "What limits re-identification").
@pytest.mark.parametrize(("attack_class", "factor"), [(RMLEAttack, 0.97), (LatentWhiteBoxAttack, 0.95)])
def test_whitebox_lowers_the_activation_distance_it_optimises(
    attack_class: type, factor: float, device: DeviceNet, images: np.ndarray
) -> None:
    knowledge = _knowledge(device, images)
    decoder = ConditionedDecoderAttack()
    decoder.fit(knowledge)
    target = images[256:264]
    intercepted = Payload(device_activations(device, target))
    start = decoder.reconstruct(intercepted)
    attack = attack_class()
    attack.fit(knowledge)
    attack.starts_from(decoder)
    weights = {k: v.clone() for k, v in device.state_dict().items()}
    rec = attack.reconstruct(intercepted, start=start)
    assert rec.shape == start.shape and rec.dtype == np.float32 and rec.min() >= 0.0 and rec.max() <= 1.0
    before, after = attack.distances[-1]
    with torch.no_grad():
        measured = activation_distance(device, torch.from_numpy(rec), intercepted.activations).mean().item()
    assert after == pytest.approx(measured, rel=1e-4) and after < factor * before
    for k, v in device.state_dict().items():  # the device was only read
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in device.parameters())  # and left as it was found
    if attack_class is RMLEAttack:  # the pixel search needs the start images; the latent one reads the decoder
        with pytest.raises(ValueError, match="give start"):
            attack.reconstruct(intercepted)


def test_total_variation_is_zero_on_flat_images() -> None:
    flat = torch.full((2, 1, 9, 9), 0.5)
    assert total_variation(flat).tolist() == [0.0, 0.0]
    stripes = flat.clone()
    stripes[..., ::2] = 1.0
    assert total_variation(stripes)[0] == pytest.approx(0.5)  # every horizontal step is 0.5, no vertical one
