"""split/cut.py's defense at the cut: noise on clipped activations, built from the run's settings on every path
that sends activations (training, the clients' queries, the attacker's own queries)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_attack_run import make_run

from attack.run import load_run
from clients.client_app import query_cut
from clients.data import OmniglotSet
from clients.train import train_local
from core.config import RunConfig
from core.errors import UserError
from split.cut import Cut, NoisyCut, build_cut
from split.model import build_split, device_activations


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
    grad = cut.device_gradient(activations, sent, grad_sent)
    torch.testing.assert_close(grad[:2], grad_sent[:2])  # inside the clip norm: the noise is additive, identity
    assert grad[2:].abs().max() < 0.2  # clipped samples: scaled down by clip / norm


def test_settings_choose_the_cut_and_refuse_noise_without_a_clip() -> None:
    assert RunConfig().cut_options() == {} and type(build_cut(**RunConfig().cut_options())) is Cut
    cfg = RunConfig(cut_clip=3.0, cut_noise=0.7)
    cut = build_cut(**cfg.cut_options())
    assert isinstance(cut, NoisyCut) and (cut.clip, cut.sigma) == (3.0, 0.7)
    with pytest.raises(UserError, match="--cut-noise needs --cut-clip > 0"):
        RunConfig(cut_noise=0.5).validate()
    with pytest.raises(UserError, match="must be >= 0"):
        RunConfig(cut_clip=-1.0).validate()


def test_every_path_sends_through_the_runs_defense(
    tmp_path: Path, evaluation: OmniglotSet, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # A clip far below the activations' norms and no noise: whatever went through the cut has norm <= 0.01.
    cfg = RunConfig(cut_clip=0.01, cut_noise=0.0, clients=2, rounds=2)
    images, labels = batch
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options())
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
    device, _ = build_split(**cfg.model_options())
    first = device_activations(device, images, cut=query_cut(cfg, 1, 4))
    again = device_activations(device, images, cut=query_cut(cfg, 1, 4))
    other = device_activations(device, images, cut=query_cut(cfg, 1, 5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # a resumed run's query sends the same
    assert not torch.equal(first, other) and math.isfinite(float(first.sum()))


@pytest.fixture(scope="module")
def batch(evaluation: OmniglotSet) -> tuple[torch.Tensor, torch.Tensor]:
    """64 evaluation images from across the set with their labels."""
    idx = np.linspace(0, len(evaluation) - 1, 64).astype(np.int64)
    return torch.from_numpy(evaluation.as_float(idx)), torch.from_numpy(evaluation.alphabet[idx])
