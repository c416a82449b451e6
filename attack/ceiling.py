"""How much of an image its activations determine: reference points for any decoder, on the ``unseen`` set.

A decoder maps 32 numbers (at the default cut) to 11,025 pixels, so it can only be as specific as the activations
are. Three measures, all on small2's unseen images, which come 20 drawings (drawers) to a character:

- ``activation_nn_reid_top1``: re-identification in activation space: each activation matched to the nearest of
  the candidates' own activations (what an attacker holding the candidate images would do). Without a defense at the
  cut the device is deterministic, so this is 1 unless two images collide: the activations fingerprint an image
  perfectly; reconstructing it from them is the hard part.
- ``activation_nn_same_character``: the fraction of images whose nearest other image in activation space (L2) is a
  drawing of the same character. It says how often the activations pin down *which character* was drawn.
- ``character_mean_reid_top1`` / ``_top5``: re-identification (pixel L2, among every unseen image) when each image is
  "reconstructed" as the mean of the other drawings of its own character. It is what an attacker who knew the
  character exactly, and nothing about the drawer's hand, would score: drawer-specific detail is what separates
  the remaining images.

A decoder that scores well above ``character_mean_reid_top1`` is reading the drawer's hand (stroke positions) from
the activations, not just the character.
"""

from __future__ import annotations

import numpy as np
import torch

from attack.metrics import reid_ranks


def _activation_distances(activations: torch.Tensor) -> torch.Tensor:
    flat = activations.flatten(1).double()
    return torch.cdist(flat, flat)


def activation_nn_reid(intercepted: torch.Tensor, candidates: torch.Tensor) -> float:
    """Fraction of rows i whose nearest candidate activation (L2) is candidate i, strictly (ties miss)."""
    dist = torch.cdist(intercepted.flatten(1).double(), candidates.flatten(1).double())
    own = dist.diagonal().clone()
    dist.fill_diagonal_(float("inf"))
    return float((own < dist.min(dim=1).values).double().mean())


def activation_nn_same_character(activations: torch.Tensor, character: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (activation L2) has the same character id."""
    dist = _activation_distances(activations)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.argmin(dim=1).numpy()
    return float(np.mean(character[nearest] == character))


def character_means(images: np.ndarray, character: np.ndarray) -> np.ndarray:
    """Each image's leave-one-out character mean: the mean of the other images with its character id (the image
    itself where it is its character's only one). float32, the shape of ``images``."""
    out = np.empty(images.shape, dtype=np.float32)
    for char in np.unique(character):
        rows = np.flatnonzero(character == char)
        group = images[rows].astype(np.float64)
        total = group.sum(axis=0)
        if len(rows) == 1:
            out[rows] = group
        else:
            out[rows] = ((total[None] - group) / (len(rows) - 1)).astype(np.float32)
    return out


def ceiling(
    activations: torch.Tensor, candidate_activations: torch.Tensor, images: np.ndarray, character: np.ndarray
) -> dict[str, float]:
    """The reference points above for one set: the activations the server received [n,...], the candidates' own
    activations as the attacker's query computes them [n,...] (row-aligned), images [n,1,105,105], character ids
    [n]."""
    ranks = reid_ranks(images, character_means(images, character))
    return {
        "n": len(images),
        "activation_nn_reid_top1": activation_nn_reid(activations, candidate_activations),
        "activation_nn_same_character": activation_nn_same_character(activations, character),
        "character_mean_reid_top1": float(np.mean(ranks < 1)),
        "character_mean_reid_top5": float(np.mean(ranks < 5)),
        "chance_same_character": float(
            np.mean([(np.sum(character == c) - 1) / (len(character) - 1) for c in character])
        ),
    }
