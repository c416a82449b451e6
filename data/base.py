"""What every dataset gives the rest of the tool: ``ImageSet`` (decoded images with their labels) and ``Dataset``
(the roles a run needs, and the geometry the model is built for), behind a registry.

A run names its dataset (``--dataset``); the model takes its image side and class count from it
(``geometry``), the clients their private set, the attacker its surrogate and its unseen test set. A new dataset is
one class with ``@register_dataset("name")``. A dataset resolves its own files' root (``Dataset.root``); decoded sets
and everything trained on public images are cached in one place for every dataset (``resolve_cache_dir``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from core.registry import lookup, register

# The sets a run reads: the clients' private images; the attacker's surrogate (its own images, to train an attack
# on); its unseen test set (images no client and no surrogate holds); and a larger public set (``--surrogate public``).
ROLES = ("private", "surrogate", "unseen", "public")
# --surrogate: the attacker's own images by name -> the role that holds them (the curious server's attacks, and the
# hijacking server's public images, ``split.hijack``).
SURROGATES = {"small1": "surrogate", "public": "public"}
# The tool's cache (decoded sets, pretrained devices, hijack pilots), for every dataset; the name is historical.
ENV_CACHE = "OMNIGLOT_CACHE"


def surrogate_role(name: str) -> str:
    """The role (``ROLES``) holding the surrogate ``name``; UserError naming the choices when it is not one."""
    return lookup(SURROGATES, name, "--surrogate")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded sets and what is trained on public images live: ``cache_dir``, else ``$OMNIGLOT_CACHE``, else
    ``~/.cache/omniglot-splitfed``.

    Not inside a dataset's root, which may be read-only (a shared copy).
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    return Path.home() / ".cache" / "omniglot-splitfed"


@dataclass(frozen=True)
class ImageSet:
    """One decoded set of grey images, in a fixed order.

    images: uint8 [N,S,S], 255 = background, 0 = stroke (memory-mapped when loaded from a cache).
    alphabet: int64 [N], the class of each image: an index into ``alphabet_names`` (ids 0..A-1).
    character: int64 [N], a finer id (Omniglot's character); drawer: int64 [N], who drew it.
    files: one name per image; md5: hex md5 of each image's source bytes (identifies identical files across sets).
    """

    name: str
    images: np.ndarray
    alphabet: np.ndarray
    alphabet_names: tuple[str, ...]
    character: np.ndarray
    drawer: np.ndarray
    files: tuple[str, ...]
    md5: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def as_float(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """float32 [n,1,S,S] in [0,1], background 1.0, strokes 0.0."""
        raw = self.images if index is None else self.images[index]
        return (np.asarray(raw, dtype=np.float32) / 255.0)[:, None, :, :]


def shared_files(first: ImageSet, second: ImageSet) -> np.ndarray:
    """bool [len(second)]: True where ``second``'s image is byte-identical to some image of ``first``.

    For Omniglot's small1 vs small2 this marks the 1,000 files the two "disjoint" subsets share (Greek and Latin).
    """
    known = set(first.md5)
    return np.fromiter((h in known for h in second.md5), dtype=bool, count=len(second))


class Dataset(ABC):
    """A dataset: its geometry and one ``ImageSet`` per role (``ROLES``).

    ``side``: images are [side, side]; ``n_classes``: the task's classes (the head's outputs).
    """

    name: ClassVar[str]
    side: ClassVar[int]
    n_classes: ClassVar[int]

    def __init__(self, data_dir: str | os.PathLike | None = None) -> None:
        self.data_dir = data_dir

    @abstractmethod
    def load(self, role: str, download: bool = False) -> ImageSet:
        """The set of ``role``; UserError (one line) when its data is missing."""

    def root(self) -> str:
        """``data_dir`` as every process must read it (simulation workers may start in another directory); this
        base, for a dataset that reads no files: ``data_dir`` unchanged ("" for none)."""
        return os.fspath(self.data_dir) if self.data_dir else ""

    def describe(self, role: str) -> str:
        """One line naming the set of ``role`` (for attack.json)."""
        return f"{self.name} {role}"

    @classmethod
    def geometry(cls) -> dict[str, int]:
        """Keywords of ``split.model.build_split``: the image side and the class count."""
        return {"image_side": cls.side, "n_classes": cls.n_classes}


DATASETS: dict[str, type[Dataset]] = {}


def register_dataset(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator: make ``cls`` available as ``--dataset name``."""

    def add(cls: type[Dataset]) -> type[Dataset]:
        register(DATASETS, name)(cls)
        cls.name = name
        return cls

    return add


def get_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset ``name`` reading from ``data_dir``; UserError naming the choices when it is not registered."""
    return lookup(DATASETS, name, "--dataset")(data_dir)


def geometry(name: str) -> dict[str, int]:
    """``build_split`` keywords (image side, classes) of the dataset ``name``."""
    return get_dataset(name).geometry()
