"""--pretrain public: trained on the public role only, never on an image the attack is scored on; cached by content."""

from __future__ import annotations

import pytest
import torch
from runs import quiet

from core.config import RunConfig
from data.base import get_dataset, shared_files
from split import pretrain
from split.model import build_split


def test_pretraining_moves_the_device_and_is_cached_by_its_recipe(tmp_path, monkeypatch):
    cfg = RunConfig(dataset="synthetic", pretrain="public", pretrain_epochs=1)
    loaded = []
    original_load = type(get_dataset("synthetic")).load
    monkeypatch.setattr(
        type(get_dataset("synthetic")), "load", lambda self, role: loaded.append(role) or original_load(self, role)
    )
    state = pretrain.pretrain_device(cfg, quiet(), cache_dir=tmp_path)
    torch.manual_seed(cfg.seed)
    fresh, _ = build_split(**cfg.model_options(), image_side=105, n_classes=4)
    assert state.keys() == fresh.state_dict().keys()
    assert not torch.equal(state["1.weight"], fresh.state_dict()["1.weight"])  # the first conv (after Invert) learned
    assert set(loaded) == {"public", "unseen", "private"}  # trained on public; the other two only checked against
    monkeypatch.setattr(pretrain, "_train", lambda *a: pytest.fail("a cached device was trained again"))
    again = pretrain.pretrain_device(cfg, quiet(), cache_dir=tmp_path)
    assert all(torch.equal(state[k], again[k]) for k in state)
    longer = RunConfig(dataset="synthetic", pretrain="public", pretrain_epochs=2)
    assert len(list(tmp_path.iterdir())) == 1
    assert pretrain.cache_path(longer, ("a",), tmp_path) != pretrain.cache_path(cfg, ("a",), tmp_path)


def test_a_public_set_holding_an_unseen_image_is_refused(tmp_path, monkeypatch):
    synthetic = type(get_dataset("synthetic"))
    original_load = synthetic.load
    monkeypatch.setattr(
        synthetic, "load", lambda self, role: original_load(self, "unseen" if role == "public" else role)
    )
    with pytest.raises(ValueError, match="shares images with the unseen set"):
        pretrain.pretrain_device(RunConfig(dataset="synthetic", pretrain="public"), quiet(), cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_omniglot_public_set_holds_no_unseen_and_no_private_image():
    """The attack's unseen set (small2) and the clients' images are not in what --pretrain public trains on."""
    omniglot = get_dataset("omniglot")
    public = omniglot.load("public")
    unseen = omniglot.load("unseen")
    assert len(public) == 16_160
    assert not shared_files(unseen, public).any() and not shared_files(omniglot.load("private"), public).any()
    assert not set(unseen.alphabet_names[a] for a in unseen.alphabet) & set(
        public.alphabet_names[a] for a in public.alphabet
    )
