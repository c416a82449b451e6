"""split/hijack.py and split/server.py: the hijacking server's models, its per-step gradient, its warm start, the
server-behaviour registry, and the client's DP-SGD under it (the same ledger as under an honest server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runs import quiet

from clients.train import train_local
from core.config import RunConfig
from core.errors import UserError
from data.base import ImageSet
from split.hijack import PREFIX, HijackModels, HijackRound, has_hijack, initial_models, pilot_features
from split.model import build_split
from split.server import SERVERS, build_server, check_server


def _models(cut: int = 4) -> HijackModels:
    torch.manual_seed(0)
    return HijackModels(105, invert_input=True, cut=cut)


@pytest.mark.parametrize("cut", [4, 2])
def test_the_critic_scores_the_cut_and_the_gradient_has_its_shape(cut: int) -> None:
    models = _models(cut)
    shape = models.pilot.out_shape
    real = torch.randn(40, *shape)
    rnd = HijackRound(models, real, seed=3)
    before = {k: v.clone() for k, v in models.state_dict().items()}
    received = torch.randn(7, *shape)
    grad = rnd.gradient(received)
    assert grad.shape == received.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert models.critic(received).shape == (7,)
    after = models.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"critic"}  # the pilot and decoder stay fixed during training
    assert set(rnd.returned()) == {k for k in models.arrays() if k.startswith(f"{PREFIX}critic.")}
    assert torch.equal(rnd.gradient(torch.empty(0, *shape)), torch.empty(0, *shape))  # an empty Poisson batch
    again = HijackRound(_models(cut), real, seed=3).gradient(received)
    torch.testing.assert_close(again, grad, rtol=0, atol=0)  # seeded: a resumed round draws the same


def test_the_models_travel_as_prefixed_arrays() -> None:
    models = _models()
    arrays = models.arrays()
    assert has_hijack(arrays) and not has_hijack({"device.1.weight": 0})
    assert {k.split(".")[1] for k in arrays} == {"pilot", "decoder", "critic"}
    other = HijackModels(105, invert_input=True).load_arrays({**arrays, "device.1.weight": torch.zeros(1)})
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in models.state_dict().items())
    out = models.reconstruct(torch.randn(3, 32, 1, 1))
    assert out.shape == (3, 1, 105, 105) and out.min() >= 0 and out.max() <= 1


def test_the_warm_start_trains_the_autoencoder_once_and_keeps_the_critic_fresh(tmp_path, monkeypatch) -> None:
    cfg = RunConfig(dataset="synthetic", server="hijack", hijack_epochs=1)
    first = initial_models(cfg, quiet(), cache_dir=tmp_path)
    torch.manual_seed(cfg.seed)
    fresh = HijackModels(105, invert_input=True)
    assert not torch.equal(first.pilot.state_dict()["1.weight"], fresh.pilot.state_dict()["1.weight"])
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr("split.hijack._warm_start", lambda *a: pytest.fail("a cached pilot was trained again"))
    other_seed = initial_models(RunConfig(**{**cfg.settings_dict(), "train_seed": 5}), quiet(), cache_dir=tmp_path)
    assert torch.equal(other_seed.pilot.state_dict()["1.weight"], first.pilot.state_dict()["1.weight"])
    assert not torch.equal(other_seed.critic[1].weight, first.critic[1].weight)  # the critic: the training seed's


def test_dp_sgd_under_the_hijack_keeps_the_honest_ledger(evaluation: ImageSet) -> None:
    """The client clips and noises whatever comes down the cut: the same steps, sample rate and sigma, so the same
    history (and epsilon); only where the device goes differs."""
    cfg = RunConfig(noise=0.5, batch_size=16)
    rows = np.arange(0, 13180, 206)[:64]
    images, labels = torch.from_numpy(evaluation.as_float(rows)), torch.from_numpy(evaluation.alphabet[rows])
    models = _models()
    real = pilot_features(models, np.asarray(evaluation.images[rows[:32]]))
    results, devices = [], []
    for server in (None, HijackRound(models, real, seed=1).gradient):
        torch.manual_seed(0)
        device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
        results.append(train_local(device, head, images, labels, cfg, [], seed=7, server=server))
        devices.append(device.state_dict())
    honest, hijacked = results
    assert honest.history == hijacked.history and honest.steps == hijacked.steps == 4
    assert not torch.equal(devices[0]["1.weight"], devices[1]["1.weight"])


def test_the_registry_names_the_behaviours_and_refuses_what_the_hijack_cannot_honour() -> None:
    assert list(SERVERS) == ["honest", "hijack"]
    assert build_server("honest").round(RunConfig(), {}, 0) is None and build_server("hijack").attacks == ("hijack",)
    with pytest.raises(UserError, match="--server must be one of honest, hijack, got 'evil'"):
        build_server("evil")
    check_server(RunConfig(server="hijack", noise=0.5, freeze_blocks=4))  # the frozen control is allowed
    with pytest.raises(UserError, match="--server hijack cannot run with --nopeek"):
        check_server(RunConfig(server="hijack", noise=0, nopeek=0.3))
    with pytest.raises(UserError, match="--server hijack cannot run with --strategy"):
        check_server(RunConfig(server="hijack", strategy="fedadam"))
