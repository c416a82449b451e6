"""``--pretrain public``: the device convnet trained centrally, without DP, on the dataset's public images, before
federated training starts (Tramèr & Boneh 2021: features learned on public data first).

The server builds the initial global model, so it pretrains (or reads the cache) and sends the pretrained device to
every client in round 1; the attacker (the same server) therefore knows these weights. The public images are the
dataset's ``public`` role: on Omniglot ``images_background`` minus the alphabets and byte-identical files of small2,
the attack's unseen set (``data.omniglot.Omniglot._public``), so no image the attack is scored on is pretrained on;
``pretrain_device`` checks it again by md5 against the ``unseen`` and ``private`` roles before training.

The task during pretraining is the public set's own classes (its alphabets) through a head of its own, which is
discarded: only the device's weights are kept. The result is cached by a content hash of everything it depends on
(the public images' md5s, the model's settings, the epochs, the seed, this module's format), so a study pays once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from core import files
from core.config import RunConfig
from data.base import get_dataset, resolve_cache_dir, shared_files
from split.model import ServerHead, build_split

FORMAT = 1  # bump when the recipe below changes: cached devices of another format are not reused
BATCH, LR = 64, 1e-3  # Adam over device and head; measured in docs/results.md (pretraining)


def cache_path(cfg: RunConfig, md5s: tuple[str, ...], cache_dir: Path | None = None) -> Path:
    """Where the pretrained device for ``cfg`` and a public set with image hashes ``md5s`` is cached."""
    recipe = {"format": FORMAT, "epochs": cfg.pretrain_epochs, "batch": BATCH, "lr": LR}
    return recipe_path("pretrain/device", cfg, md5s, recipe, cache_dir)


def recipe_path(kind: str, cfg: RunConfig, md5s: tuple[str, ...], recipe: dict, cache_dir: Path | None = None) -> Path:
    """Where something trained on public images is cached, by a content hash of what it depends on: the dataset,
    the images' md5s ``md5s``, the model's settings, ``--seed`` and ``recipe`` (format, epochs, batch, lr...).
    ``kind``: "<folder>/<stem>" under the cache (``cache_dir`` replaces the folder)."""
    folder, stem = kind.split("/")
    images = hashlib.sha256("".join(md5s).encode()).hexdigest()
    full = {"dataset": cfg.dataset, "images": images, "model": cfg.model_options(), "seed": cfg.seed, **recipe}
    key = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
    return (cache_dir or resolve_cache_dir() / folder) / f"{stem}-{key}.pt"


def pretrain_device(cfg: RunConfig, console: Console | None = None, cache_dir: Path | None = None) -> dict:
    """The device state dict after ``cfg.pretrain_epochs`` epochs on the public set (from the cache when there)."""
    console = console or Console()
    dataset = get_dataset(cfg.dataset, cfg.data_dir or None)
    public = dataset.load("public")
    path = cache_path(cfg, public.md5, cache_dir)
    if path.exists():
        console.print(f"pretrained device: {path} (cached)")
        return torch.load(path, weights_only=True)
    for role in ("unseen", "private"):
        if shared_files(dataset.load(role), public).any():
            raise ValueError(f"the public pretraining set shares images with the {role} set")
    state = _train(cfg, public, console)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_with(path, lambda fh: torch.save(state, fh))
    console.print(f"pretrained device: {path}")
    return state


def _train(cfg: RunConfig, public, console: Console) -> dict:
    """Adam on device + a throw-away head over the public images' classes; returns the device's state dict."""
    classes, labels = np.unique(public.alphabet, return_inverse=True)
    geometry = {"image_side": public.images.shape[-1], "n_classes": len(classes)}
    torch.manual_seed(cfg.seed)
    device, _ = build_split(**cfg.model_options(), **geometry)
    head = ServerHead(**geometry, cut=cfg.cut, norm_groups=cfg.norm_groups)
    optimizer = torch.optim.Adam([*device.parameters(), *head.parameters()], lr=LR)
    order_rng = np.random.default_rng(cfg.seed)
    targets = torch.from_numpy(labels.astype(np.int64))
    for epoch in range(1, cfg.pretrain_epochs + 1):
        device.train()
        head.train()
        order = order_rng.permutation(len(targets))
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), BATCH):
            rows = np.sort(order[start : start + BATCH])  # sorted: faster reads of the memory-mapped images
            x, y = torch.from_numpy(public.as_float(rows)), targets[rows]
            logits = head(device(x))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        console.print(
            f"pretraining on {public.name}: epoch {epoch}/{cfg.pretrain_epochs}, loss {loss_sum / len(order):.3f}, "
            f"train acc {correct / len(order):.3f} ({len(classes)} classes)"
        )
    return {key: value.detach().clone() for key, value in device.state_dict().items()}
