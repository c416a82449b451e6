"""split/cut.py's defenses at the cut: noise on clipped activations, built from the run's settings on every path
that sends activations (training, the clients' queries, the attacker's own queries), and NoPeek's training term."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import OMNIGLOT, make_run

from attack.run import load_run
from clients.client_app import query_cut
from clients.train import train_local
from core.config import RunConfig
from core.defenses import FAMILIES
from core.errors import UserError
from core.privacy import epsilon
from data.base import ImageSet
from split.cut import Cut, NoisyCut, cut_for, distance_correlation
from split.model import build_split, device_activations
from study.grid import read_grid


def test_noisy_cut_clips_then_adds_noise_of_the_stated_scale() -> None:
    torch.manual_seed(0)
    activations = torch.randn(2000, 32, 1, 1) * 3.0
    clipped = NoisyCut(clip=2.0, sigma=0.0)(activations)
    norms = clipped.flatten(1).norm(dim=1)
    assert norms.max() <= 2.0 + 1e-5 and norms.min() > 1.99  # every sample was above the norm: all scaled to it
    small = activations / 100  # norms below the clip pass unchanged
    torch.testing.assert_close(NoisyCut(2.0, 0.0)(small), small)
    noisy = NoisyCut(clip=2.0, sigma=0.5)(activations)
    assert (noisy - clipped).std().item() == pytest.approx(0.5 * 2.0, rel=0.02)
    assert NoisyCut.deterministic is False and Cut.deterministic is True
    with pytest.raises(ValueError, match="clip > 0"):
        NoisyCut(clip=0.0, sigma=1.0)


def test_noisy_cut_passes_the_servers_gradient_back_through_the_clipping() -> None:
    activations = (torch.randn(4, 32, 1, 1) * torch.tensor([0.1, 0.1, 10.0, 10.0]).view(4, 1, 1, 1)).requires_grad_()
    cut = NoisyCut(clip=1.0, sigma=0.3)
    sent = cut(activations)
    grad_sent = torch.ones_like(sent)
    grad = cut.device_gradient(torch.rand(4, 1, 105, 105), activations, sent, grad_sent)
    torch.testing.assert_close(grad[:2], grad_sent[:2])  # inside the clip norm: the noise is additive, identity
    assert grad[2:].abs().max() < 0.2  # clipped samples: scaled down by clip / norm


def test_settings_choose_the_cut_and_refuse_noise_without_a_clip() -> None:
    assert type(cut_for(RunConfig())) is Cut and cut_for(RunConfig()).nopeek == 0
    cfg = RunConfig(cut_clip=3.0, cut_noise=0.7, nopeek=0.5)
    cut = cut_for(cfg)
    assert cut.nopeek == 0.5
    assert isinstance(cut, NoisyCut) and (cut.clip, cut.sigma) == (3.0, 0.7)
    with pytest.raises(UserError, match="--cut-noise needs --cut-clip > 0"):
        RunConfig(cut_noise=0.5).validate()
    with pytest.raises(UserError, match="must be >= 0"):
        RunConfig(cut_clip=-1.0).validate()


def test_every_path_sends_through_the_runs_defense(
    tmp_path: Path, evaluation: ImageSet, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # A clip far below the activations' norms and no noise: whatever went through the cut has norm <= 0.01.
    cfg = RunConfig(cut_clip=0.01, cut_noise=0.0, clients=2, rounds=2)
    images, labels = batch
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options(), **OMNIGLOT)
    assert device_activations(device, images).flatten(1).norm(dim=1).min() > 0.1  # so the clip does bite
    trained = train_local(device, head, images, labels, cfg, [], seed=0, record_cut=True)
    assert trained.cut_activations.flatten(1).norm(dim=1).max() <= 0.01 + 1e-6  # training
    sent = device_activations(device, images, cut=query_cut(cfg, 0, 3))
    assert sent.flatten(1).norm(dim=1).max() <= 0.01 + 1e-6  # the clients' queries
    run = load_run(make_run(tmp_path / "run", evaluation, cut_clip=0.01, cut_noise=0.0))
    assert isinstance(run.cut, NoisyCut) and run.cut.clip == 0.01  # the attacker's own queries
    assert run.query(evaluation.as_float(np.arange(4))).flatten(1).norm(dim=1).max() <= 0.01 + 1e-6


def test_noisy_queries_repeat_exactly(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    cfg = RunConfig(cut_clip=1.0, cut_noise=0.5)
    images, _ = batch
    torch.manual_seed(0)
    device, _ = build_split(**cfg.model_options(), **OMNIGLOT)
    first = device_activations(device, images, cut=query_cut(cfg, 1, 4))
    again = device_activations(device, images, cut=query_cut(cfg, 1, 4))
    other = device_activations(device, images, cut=query_cut(cfg, 1, 5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # a resumed run's query sends the same
    assert not torch.equal(first, other) and math.isfinite(float(first.sum()))


def test_the_noisy_cuts_stated_guarantee_is_the_gaussian_mechanisms() -> None:
    # core.defenses says: noise multiplier s/2 per release, vacuous at the study's strengths (hundreds or more).
    assert "cut-noise / 2" in FAMILIES["cut-noise"].guarantee and "hundreds or more" in FAMILIES["cut-noise"].guarantee
    _, full = read_grid(Path(__file__).resolve().parents[2] / "docs" / "study-full.toml")
    strengths = [c.settings["cut_noise"] for c in full if c.family == "cut-noise"]
    assert sorted(strengths) == [0.03, 0.1]  # the studies' strengths
    for strength in strengths:
        assert epsilon([(strength / 2, 1.0, 1)], 1e-5) > 100
    assert epsilon([(0.1 / 2, 1.0, 1)], 1e-5) == pytest.approx(294.86, rel=1e-3)


def test_distance_correlation_is_one_for_a_similarity_and_small_for_independent_samples() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    assert float(distance_correlation(x, 3.0 * x + 1.0)) == pytest.approx(1.0, abs=1e-6)
    assert float(distance_correlation(x, torch.randn(200, 7))) < 0.35  # finite-sample bias: not 0, far below 1
    assert float(distance_correlation(x[:1], x[:1])) == 0.0


@pytest.mark.slow
def test_nopeek_lowers_the_distance_correlation_as_its_weight_grows(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same start, same batches (64 images, 8 steps): the more weight NoPeek gets, the less the activations say about
    the images. Measured: dCor 0.775 without, 0.639 at 0.3, 0.528 at 3."""
    images, labels = batch
    measured = []
    for weight in (0.0, 0.3, 3.0):
        cfg = RunConfig(noise=0.0, nopeek=weight, local_epochs=4).validate()
        assert cut_for(cfg).nopeek == weight
        torch.manual_seed(0)
        device, head = build_split(**cfg.model_options(), **OMNIGLOT)
        train_local(device, head, images, labels, cfg, [], seed=0)
        measured.append(float(distance_correlation(images, device_activations(device, images))))
    assert measured[0] - 0.1 > measured[1] > measured[2] + 0.05, measured
    with pytest.raises(UserError, match="--nopeek needs --noise 0"):
        RunConfig(noise=0.5, nopeek=1.0).validate()
    with pytest.raises(UserError, match="--nopeek must be >= 0"):
        RunConfig(noise=0.0, nopeek=-1.0).validate()


@pytest.fixture(scope="module")
def batch(evaluation: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """64 evaluation images from across the set with their labels."""
    idx = np.linspace(0, len(evaluation) - 1, 64).astype(np.int64)
    return torch.from_numpy(evaluation.as_float(idx)), torch.from_numpy(evaluation.alphabet[idx])
