"""data/base.py: a dataset is one registered class; the synthetic one goes through the whole pipeline (train one
round, attack, report) with its own geometry (4 classes), by name alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import sim

from core.errors import UserError
from core.rundir import RunDir
from data.base import DATASETS, get_dataset, shared_files
from split.model import build_split


def test_the_registry_names_each_dataset_and_its_geometry() -> None:
    assert set(DATASETS) >= {"omniglot", "synthetic"}
    synthetic = get_dataset("synthetic")
    assert synthetic.geometry() == {"image_side": 105, "n_classes": 4}
    private, unseen = synthetic.load("private"), synthetic.load("unseen")
    assert private.images.shape == (160, 105, 105) and private.images.dtype == np.uint8
    assert sorted(set(private.alphabet.tolist())) == [0, 1, 2, 3]
    assert not shared_files(private, unseen).any()  # each role draws its own images
    np.testing.assert_array_equal(private.images, synthetic.load("private").images)  # seeded
    device, head = build_split(**synthetic.geometry())
    assert head(device(torch.from_numpy(private.as_float(np.arange(3))))).shape == (3, 4)
    with pytest.raises(UserError, match="--dataset must be one of"):
        get_dataset("mnist")


@pytest.mark.slow
def test_a_registered_dataset_trains_and_is_attacked_for_one_round(ray_cluster: str, tmp_path: Path) -> None:
    """With --pretrain public: the server pretrains the device on the dataset's public role (cached) first."""
    out = tmp_path / "run"
    args = ["--dataset", "synthetic", "--clients", "2", "--rounds", "1", "--noise", "0.5"]
    args += ["--pretrain", "public", "--pretrain-epochs", "1"]
    env = {**os.environ, "OMNIGLOT_CACHE": str(tmp_path / "cache")}  # the pretraining cache sits beside the data's
    done = sim(*args, "--attacks", "seed", "--attack-epochs", "1", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pretraining on synthetic-public: epoch 1/1" in done.stdout
    assert len(list((tmp_path / "cache" / "pretrain").glob("device-*.pt"))) == 1
    run = RunDir(out)
    assert run.state() == "attacked" and run.read_config().dataset == "synthetic"
    model = torch.load(run.model, weights_only=True)
    assert model["head"]["4.bias"].shape == (4,)  # the head's last layer: the dataset's 4 classes
    leakage = json.loads(run.leakage.read_text())
    assert leakage["unseen"]["seed"]["n"] == 64 and leakage["clients_inference"]["seed"]["n"] > 0
    assert "report.html" in done.stdout and run.report_html.is_file()
