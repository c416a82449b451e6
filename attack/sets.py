"""Evaluation sets: which images the attack tries to reconstruct, and from which activations.

- ``unseen``: small2 minus the 1,000 files also in small1 (2,120 images the attacker never saw): the honest number.
- ``seen``: those 1,000 shared files, reported separately (docs/experiment.md, the pitfall).
- ``client_<k>_inference`` / ``client_<k>_train``: client k's private images from the activations the server
  intercepted at inference (final global model, no labels) and during the client's last training round (its own
  updated model, with the labels training sends).

Each set attacks and scores ``scored``, a seeded sample of its rows (every row of small2's sets; ``per_client``
rows of a client's set), and re-identifies each reconstruction among **all** the set's distinct originals, so a
sample changes the error bars, never the chance level. Training-time activations come from Poisson-sampled batches,
so one image can stand behind several rows: its copies are one candidate, not several tied ones.
A set's kind, point and partition are fields: nothing downstream parses its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from attack.base import Payload
from attack.figures import pick
from data.base import ImageSet, shared_files

POINTS = ("inference", "train")  # where the server intercepted a client's activations (intercepted.npz prefixes)
PER_CLIENT = 100  # rows of each client set that are attacked and scored


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set.

    kind: "unseen" / "seen" (small2, the attacker's own test queries) or "client" (a client's private images);
    point: "inference" or "train" for client sets, None for small2; partition: the client's partition id or None.
    activations: float32 [n,C,H,W], what crossed the cut; images: uint8 [m,105,105] (255 = background), the
    distinct images behind them (for scoring only: the attacker never gets them; ``originals`` gives them as
    float); own: int64 [n], each row's image in ``images``; scored: int64 rows that are attacked and scored;
    labels: int64 [n] labels the server saw with the activations, or None; device: the model that produced them
    when not the final global one; files: small2 file names of the rows, else None.
    """

    kind: Literal["unseen", "seen", "client"]
    point: Literal["inference", "train"] | None
    partition: int | None
    activations: torch.Tensor
    images: np.ndarray
    own: np.ndarray
    scored: np.ndarray
    labels: np.ndarray | None = None
    device: nn.Module | None = None
    files: list[str] | None = None

    @property
    def name(self) -> str:
        """Key in leakage.json: "unseen", "seen" or "client_<k>_<point>"."""
        return self.kind if self.kind != "client" else f"client_{self.partition}_{self.point}"

    def intercepted(self, rows: np.ndarray | None = None) -> Payload:
        """What an attack is given for ``rows`` (default ``scored``): activations, sender, labels, device."""
        rows = self.scored if rows is None else rows
        whole = Payload(self.activations, self.partition, self.labels, self.device)
        return whole.rows(rows)

    @property
    def originals(self) -> np.ndarray:
        """The distinct images as float32 [m,1,105,105] in [0,1] (a new array each call: kept as uint8)."""
        return _as_float(self.images)

    def originals_of(self, rows: np.ndarray) -> np.ndarray:
        """The original image behind each of ``rows``: float32 [len(rows),1,105,105]."""
        return _as_float(self.images[self.own[rows]])

    @property
    def figure(self) -> str | None:
        """File name of the set's reconstruction figure; only the unseen set and clients' inference sets get one."""
        if self.kind == "unseen":
            return "reconstructions_unseen.png"
        if self.kind == "client" and self.point == "inference":
            return f"reconstructions_client_{self.partition}.png"
        return None


def _as_float(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images, dtype=np.float32) / 255.0)[:, None, :, :]


def small2_sets(query: Callable[[np.ndarray], torch.Tensor], small1: ImageSet, small2: ImageSet) -> list[EvalSet]:
    """The ``unseen`` and ``seen`` sets: small2 split by whether a file is also in small1, each sent through
    ``query`` (images float32 [N,1,105,105] -> activations [N,C,H,W], the attacker's own queries of the device).
    Every row is scored; no labels (the attacker's queries get none). ``seen`` is left out where no file is shared
    (a dataset whose attacker sets are disjoint); ``unseen`` is always there."""
    seen_mask = shared_files(small1, small2)
    sets = []
    for kind, mask in (("unseen", ~seen_mask), ("seen", seen_mask)):
        idx = np.flatnonzero(mask)
        if kind == "seen" and len(idx) == 0:
            continue
        files = [small2.files[i] for i in idx]
        rows = np.arange(len(idx))
        images = np.asarray(small2.images[idx])
        sets.append(EvalSet(kind, None, None, query(_as_float(images)), images, rows, rows, files=files))
    return sets


def client_sets(
    intercepted: dict[str, np.ndarray],
    evaluation: ImageSet,
    devices: dict[int, nn.Module] | None = None,
    per_client: int = PER_CLIENT,
    seed: int = 0,
) -> list[EvalSet]:
    """One set per (point, partition) present in intercepted.npz, inference sets first, partitions ascending.

    intercepted: ``<point>_activations`` [n,C,H,W], ``<point>_partition`` [n] and ``<point>_index`` [n] (row in the
    evaluation set) for each point. A partition with no row at a point (e.g. it failed its last round) has no set
    there. Partitions are those seen at inference: every client's images go through the final model.
    devices: each client's own device model from its last round (``core.rundir.local_devices``); its
    training-time set records it. Training-time sets carry the labels training sent with the activations (the
    image's alphabet, which is the task label). ``per_client`` rows of each set are scored, drawn by
    (seed, partition, point).
    """
    devices = devices or {}
    partitions = sorted(set(intercepted["inference_partition"].tolist()))
    sets = []
    for p, point in enumerate(POINTS):
        for pid in partitions:
            rows = intercepted[f"{point}_partition"] == pid
            if not rows.any():
                continue
            index = intercepted[f"{point}_index"][rows]
            activations = torch.from_numpy(intercepted[f"{point}_activations"][rows]).float()
            labels = evaluation.alphabet[index].astype(np.int64) if point == "train" else None
            scored = pick(len(index), per_client, seed * 100_003 + pid * 2 + p)
            device = devices.get(pid) if point == "train" else None
            distinct, own = np.unique(index, return_inverse=True)
            images = np.asarray(evaluation.images[distinct])
            sets.append(EvalSet("client", point, pid, activations, images, own, scored, labels, device))
    return sets
