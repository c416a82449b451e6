"""The attacker's own images (``--surrogate``), from the run's dataset (``data.base.Dataset``).

``small1``: the dataset's surrogate set (Omniglot's ``images_background_small1``, the 2020 experiment's).
``public``: its larger public set (Omniglot: ``images_background`` minus small2's alphabets and files, so the
attack's unseen test set stays unseen).
"""

from __future__ import annotations

import numpy as np

from data.base import get_dataset, surrogate_role


def surrogate_images(name: str, dataset: str = "omniglot", data_dir: str | None = None) -> tuple[np.ndarray, str]:
    """The surrogate ``name`` as float32 [M,1,S,S] in [0,1], with a one-line description for attack.json.

    Raises UserError naming the choices for an unknown name (and ValueError, for Omniglot's public set, if an image
    of it is a private one)."""
    role = surrogate_role(name)
    source = get_dataset(dataset, data_dir)
    images = source.load(role)
    return images.as_float(), source.describe(role)
