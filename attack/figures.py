"""Figures: originals above their reconstructions, as one PNG per set.

Uses matplotlib's object API with the Agg canvas (no pyplot): no global figure state, safe in worker processes
and without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core import files

_PANEL_INCHES = 1.1


def pick(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, n_total)`` distinct images out of ``n_total``, chosen by ``seed``: int64 [k]."""
    if n_total < 0 or n < 0:
        raise ValueError(f"pick needs non-negative sizes, got n_total={n_total}, n={n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False)).astype(np.int64)


def save_grid(
    originals: np.ndarray,
    reconstructions: np.ndarray | dict[str, np.ndarray],
    path: str | os.PathLike,
    title: str,
    n: int = 10,
) -> Path:
    """Write a PNG with the first ``n`` originals (top row) above their reconstructions (one row per entry of
    ``reconstructions`` when it is a dict {row label: images}, else one row "reconstruction").

    originals, reconstructions: aligned [k,1,H,W] or [k,H,W] in [0,1] (already selected by the caller, e.g. with
    ``pick``); grey colormap with 0 = black and 1 = white, values outside [0,1] saturate. The file appears
    atomically (written beside ``path``, then renamed), so a reader never sees half a PNG. Returns the path.
    """
    named = reconstructions if isinstance(reconstructions, dict) else {"reconstruction": reconstructions}
    for images in named.values():
        if originals.shape != images.shape:
            raise ValueError(f"originals {originals.shape} and reconstructions {images.shape} differ in shape")
    k = min(n, len(originals))
    if k == 0:
        raise ValueError("no images to draw")
    path = Path(path)
    side = originals.shape[-2:]
    rows = [("original", np.asarray(originals[:k], dtype=np.float32).reshape(k, *side))]
    rows += [(label, np.asarray(images[:k], dtype=np.float32).reshape(k, *side)) for label, images in named.items()]

    # One mosaic in one axes (a grey line between images): 30 separate axes took 0.4 s a figure, this a tenth.
    gap = 3
    height, width = side
    mosaic = np.full((len(rows) * (height + gap) - gap, k * (width + gap) - gap), 0.6, dtype=np.float32)
    for r, (_, images) in enumerate(rows):
        for c in range(k):
            top, left = r * (height + gap), c * (width + gap)
            mosaic[top : top + height, left : left + width] = images[c]
    fig = Figure(figsize=(_PANEL_INCHES * k + 1.2, _PANEL_INCHES * len(rows) + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + gap) + height / 2 for r in range(len(rows))], [label for label, _ in rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
