"""clients/detector.py: the label probe separates an honest server's gradient (it reads the labels) from the
hijacking server's (it does not), on real Omniglot images, and never touches the client's DP-SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clients.detector import LabelProbe, alarm, label_cosine, wrong_labels
from clients.train import train_local
from core.config import RunConfig
from core.errors import UserError
from data.base import ImageSet
from split.hijack import HijackModels, HijackRound, pilot_features
from split.model import build_split


def test_wrong_labels_are_always_another_of_the_clients_classes_and_cover_them() -> None:
    classes = torch.tensor([2, 3, 7, 11])
    labels = classes[torch.arange(4000) % 4]
    wrong = wrong_labels(labels, classes, torch.Generator().manual_seed(0))
    assert (wrong != labels).all() and set(wrong.tolist()) == {2, 3, 7, 11}
    for label in classes.tolist():  # each label's wrong ones: the other three, about 1000 / 3 each
        counts = torch.bincount(wrong[labels == label], minlength=12)[classes]
        assert counts[classes == label] == 0 and (counts[classes != label] > 280).all()
    two = wrong_labels(torch.tensor([3, 11, 3]), torch.tensor([3, 11]), torch.Generator().manual_seed(0))
    assert two.tolist() == [11, 3, 11]


def test_the_score_is_a_cosine_and_a_round_without_probes_never_alarms() -> None:
    g = torch.randn(5, 32, 1, 1)
    assert label_cosine(g, 3 * g) == pytest.approx(1.0) and label_cosine(g, -g) == pytest.approx(-1.0)
    assert math.isnan(label_cosine(g, torch.zeros_like(g)))
    assert alarm(0.85, 0.8) and not alarm(0.5, 0.8) and not alarm(math.nan, 0.8)
    for probe in (LabelProbe(0.0, torch.arange(20), seed=0), LabelProbe(1.0, torch.zeros(9, dtype=torch.int64), 0)):
        # rate 0, or a client of one class (no wrong label of its own to give): never asks
        probe.after_step(torch.zeros(4, dtype=torch.int64), g[:4], lambda y: pytest.fail("a probe was sent"))
        assert probe.scores == []


def _client(evaluation: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's kind of data: 192 images of two alphabets (real labels, alphabet ids)."""
    alphabet = np.asarray(evaluation.alphabet)
    rows = np.flatnonzero((alphabet == 3) | (alphabet == 11))[::3][:192]
    return torch.from_numpy(evaluation.as_float(rows)), torch.from_numpy(alphabet[rows])


@pytest.mark.parametrize("cut", [2, 4])
def test_the_probe_tells_the_hijacking_server_from_the_honest_one(evaluation: ImageSet, cut: int) -> None:
    """Measured on a run's kind of client: the honest server's probes score near 0, the hijacker's near 1; the
    client's ledger (its DP-SGD steps) is the same with the probe as without it, under either server."""
    images, labels = _client(evaluation)
    cfg = RunConfig(noise=0.5, batch_size=32, cut=cut, detect=1.0)
    torch.manual_seed(0)
    models = HijackModels(105, invert_input=True, cut=cut)
    real = pilot_features(models, np.asarray(evaluation.images[:96]))
    scores, histories = {}, {}
    for name in ("honest", "hijack"):
        for detect in (0.0, 1.0):
            server = HijackRound(models, real, seed=1).gradient if name == "hijack" else None
            torch.manual_seed(0)
            device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
            setting = RunConfig(**{**cfg.settings_dict(), "detect": detect})
            result = train_local(device, head, images, labels, setting, [], seed=7, server=server)
            histories[name, detect] = result.history
            if detect:
                scores[name] = np.array(result.probe_scores)
            else:
                assert result.probe_scores == []
    assert len(scores["honest"]) >= 4 and len(scores["hijack"]) >= 4  # every non-empty step probed
    assert np.median(scores["honest"]) < 0.3 and scores["honest"].max() < cfg.detect_threshold
    assert scores["hijack"].min() > cfg.detect_threshold and np.median(scores["hijack"]) > 0.9
    assert histories["honest", 0.0] == histories["honest", 1.0] == histories["hijack", 0.0] == histories["hijack", 1.0]


def test_bad_detector_settings_are_one_line() -> None:
    with pytest.raises(UserError, match=r"--detect must be in \[0, 1\]"):
        RunConfig(detect=1.5).validate()
    with pytest.raises(UserError, match=r"--detect-threshold in \[-1, 1\]"):
        RunConfig(detect=0.1, detect_threshold=2.0).validate()
