"""The attacker's own public images (its surrogate set), chosen with ``--surrogate``:

- ``small1``: images_background_small1 (2,720 images, 5 alphabets), the 2020 experiment's choice;
- ``public``: all of images_background (30 alphabets) minus every alphabet of small2 and every file of small2
  (checked by md5), so the attacker's own test set stays unseen: 25 alphabets, 16,160 images.

Neither holds any image of images_evaluation (the clients' private set): the two Omniglot sets share no alphabet and
no file (``public_images`` checks the md5s).
"""

from __future__ import annotations

import numpy as np

from clients.data import EVALUATION, SMALL1, SMALL2, OmniglotSet, load_set
from core.config import SURROGATES

BACKGROUND = "images_background"


def public_rows(background: OmniglotSet, small2: OmniglotSet) -> np.ndarray:
    """Rows of ``background`` that are neither in an alphabet of ``small2`` nor byte-identical to a file of it."""
    banned_alphabets = set(small2.alphabet_names)
    banned_files = set(small2.md5)
    keep = [
        background.alphabet_names[a] not in banned_alphabets and h not in banned_files
        for a, h in zip(background.alphabet, background.md5, strict=True)
    ]
    return np.flatnonzero(keep)


def surrogate_images(name: str, data_dir: str | None = None) -> tuple[np.ndarray, str]:
    """The surrogate ``name`` as float32 [M,1,105,105] in [0,1], with a one-line description for attack.json.

    Raises ValueError for an unknown name, and if a public image turned out to be a private one (md5)."""
    if name == "small1":
        return load_set(SMALL1, data_dir).as_float(), f"{SMALL1} (2020 experiment's surrogate)"
    if name != "public":
        raise ValueError(f"unknown surrogate {name!r}; choose from {', '.join(SURROGATES)}")
    background, small2 = load_set(BACKGROUND, data_dir), load_set(SMALL2, data_dir)
    rows = public_rows(background, small2)
    private = set(load_set(EVALUATION, data_dir).md5)
    if any(background.md5[i] in private for i in rows):
        raise ValueError("a public surrogate image is byte-identical to a client's private image")
    alphabets = len({background.alphabet[i] for i in rows})
    return background.as_float(rows), f"{BACKGROUND} minus small2's alphabets and files ({alphabets} alphabets)"
