"""--cut 1..4: at every cut the device trains with DP-SGD (the fused per-sample gradients) and the whole default
attack (decoders and the white-box search) runs on what crossed the cut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import OMNIGLOT, every_20th, make_run, quiet

from attack.run import run_attack
from clients.train import train_local
from core.config import RunConfig
from core.errors import UserError
from data.base import ImageSet
from split.model import build_split, cut_shape


@pytest.mark.parametrize("cut", [pytest.param(c, marks=pytest.mark.slow) for c in (1, 2, 3)] + [4])
def test_every_cut_trains_with_dp_sgd_and_is_attacked(
    cut: int, tmp_path: Path, evaluation: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = RunConfig(cut=cut, noise=1.0, batch_size=8, local_epochs=2).validate()
    idx = np.arange(0, 2400, 150)
    images, labels = torch.from_numpy(evaluation.as_float(idx)), torch.from_numpy(evaluation.alphabet[idx])
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options(), **OMNIGLOT)
    before = [p.detach().clone() for p in device.parameters()]
    result = train_local(device, head, images, labels, cfg, [], seed=0, record_cut=True)
    assert result.steps == 4 and np.isfinite(result.loss)
    assert result.cut_activations.shape[1:] == cut_shape(cut, 105)
    assert all(not torch.equal(a, b) for a, b in zip(before, device.parameters(), strict=True))  # every block moved
    assert result.history[0][0] == 1.0  # DP-SGD's noise multiplier, accounted

    monkeypatch.setattr("data.omniglot.load_set", every_20th)
    attacks = ("seed", "up", "cond", "rmle", "whitebox")  # every registered attack
    run_dir = make_run(
        tmp_path / "run", evaluation, cut=cut, attack_epochs=1, whitebox_images=3, attacks=",".join(attacks)
    )
    results = run_attack(run_dir, console=quiet())
    for name in ("unseen", "client_0_inference", "client_0_train"):
        assert {*attacks, "baseline", "best"} == set(results[name]), name
        for attack in attacks:
            assert 0 <= results[name][attack]["ssim"] <= 1 and np.isfinite(results[name][attack]["mse"])
    assert results["unseen"]["whitebox"]["n"] == results["unseen"]["rmle"]["n"] == 3
    meta = json.loads((run_dir / "attack.json").read_text())
    assert meta["ceiling_unseen"]["activation_nn_reid_top1"] == 1.0  # a deterministic cut fingerprints each image
    with np.load(run_dir / "reconstructions_unseen.npz") as z:
        assert z["reconstructions_cond"].shape[1:] == (1, 105, 105)


def test_cut_flag_is_checked() -> None:
    with pytest.raises(UserError, match="--cut must be one of 1, 2, 3, 4"):
        RunConfig(cut=0).validate()
    assert RunConfig(cut=2).model_options()["cut"] == 2
