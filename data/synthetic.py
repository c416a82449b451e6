"""A tiny synthetic handwriting-like dataset: seeded strokes at Omniglot's geometry, four classes.

For smoke tests of the whole pipeline through the dataset registry (``--dataset synthetic``) without any download:
class c draws strokes at about c x 45 degrees, so a model can learn the task and an attack has shapes to invert.
Each role draws from its own seed, so no image of one role is another role's.
"""

from __future__ import annotations

import hashlib

import numpy as np

from data.base import Dataset, ImageSet, register_dataset

ROLE_SIZES = {"private": 160, "surrogate": 96, "unseen": 64, "public": 160}
ROLE_SEEDS = {"private": 11, "surrogate": 12, "unseen": 13, "public": 14}


@register_dataset("synthetic")
class Synthetic(Dataset):
    side = 105
    n_classes = 4

    def load(self, role: str, download: bool = False) -> ImageSet:
        rng = np.random.default_rng(ROLE_SEEDS[role])
        n = ROLE_SIZES[role]
        labels = np.arange(n, dtype=np.int64) % self.n_classes
        images = np.stack([_draw(int(c), rng, self.side) for c in labels])
        return ImageSet(
            name=f"synthetic-{role}",
            images=images,
            alphabet=labels,
            alphabet_names=tuple(f"class{c}" for c in range(self.n_classes)),
            character=labels.copy(),
            drawer=np.arange(n, dtype=np.int64),
            files=tuple(f"{role}/{i:04d}.png" for i in range(n)),
            md5=tuple(hashlib.md5(image.tobytes()).hexdigest() for image in images),
        )


def _draw(label: int, rng: np.random.Generator, side: int) -> np.ndarray:
    """uint8 [side, side]: white background, two dark strokes at the class's angle (plus jitter)."""
    image = np.full((side, side), 255, np.uint8)
    for _ in range(2):
        angle = np.deg2rad(label * 45 + rng.normal(0, 8))
        cx, cy = rng.uniform(0.3, 0.7, size=2) * side
        length = rng.uniform(0.25, 0.45) * side
        t = np.linspace(-0.5, 0.5, 4 * side) * length
        xs = np.clip(np.round(cx + t * np.cos(angle)), 0, side - 1).astype(int)
        ys = np.clip(np.round(cy + t * np.sin(angle)), 0, side - 1).astype(int)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                image[np.clip(ys + dy, 0, side - 1), np.clip(xs + dx, 0, side - 1)] = 0
    return image
