"""Evaluation sets: which images the attack tries to reconstruct, and from which activations.

- ``unseen``: small2 minus the 1,000 files also in small1 (2,120 images the attacker never saw): the honest number.
- ``seen``: those 1,000 shared files, reported separately (EXPERIMENT.md, the pitfall).
- ``client_<k>_inference`` / ``client_<k>_train``: client k's private images from the activations the server
  intercepted at inference (final global model) and during the client's last training round (its local model).

A set's kind, point and partition are fields, so nothing downstream parses its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from attack.base import Intercepted
from clients.data import OmniglotSet, shared_files

POINTS = ("inference", "train")  # where the server intercepted a client's activations (intercepted.npz prefixes)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set.

    kind: "unseen" / "seen" (small2, the attacker's own test queries) or "client" (a client's private images);
    point: "inference" or "train" for client sets, None for small2; partition: the client's partition id or None.
    activations: float32 [n,32,1,1], what crossed the cut; originals: float32 [n,1,105,105] in [0,1], the images
    behind them (for scoring only: the attacker never gets them); files: small2 file names of the rows, else None.
    """

    kind: Literal["unseen", "seen", "client"]
    point: Literal["inference", "train"] | None
    partition: int | None
    activations: torch.Tensor
    originals: np.ndarray
    files: list[str] | None = None

    @property
    def name(self) -> str:
        """Key in leakage.json: "unseen", "seen" or "client_<k>_<point>"."""
        return self.kind if self.kind != "client" else f"client_{self.partition}_{self.point}"

    @property
    def intercepted(self) -> Intercepted:
        """What an attack is given: the activations and, for a client's set, the partition that sent them."""
        return Intercepted(self.activations, self.partition)

    @property
    def figure(self) -> str | None:
        """File name of the set's reconstruction figure; only the unseen set and clients' inference sets get one."""
        if self.kind == "unseen":
            return "reconstructions_unseen.png"
        if self.kind == "client" and self.point == "inference":
            return f"reconstructions_client_{self.partition}.png"
        return None


def small2_sets(query: Callable[[np.ndarray], torch.Tensor], small1: OmniglotSet, small2: OmniglotSet) -> list[EvalSet]:
    """The ``unseen`` and ``seen`` sets: small2 split by whether a file is also in small1, each sent through
    ``query`` (images float32 [N,1,105,105] -> activations [N,32,1,1], the attacker's own queries of the device)."""
    seen_mask = shared_files(small1, small2)
    sets = []
    for kind, mask in (("unseen", ~seen_mask), ("seen", seen_mask)):
        idx = np.flatnonzero(mask)
        originals = small2.as_float(idx)
        sets.append(EvalSet(kind, None, None, query(originals), originals, [small2.files[i] for i in idx]))
    return sets


def client_sets(intercepted: dict[str, np.ndarray], evaluation: OmniglotSet) -> list[EvalSet]:
    """One set per (point, partition) present in intercepted.npz, inference sets first, partitions ascending.

    intercepted: ``<point>_activations`` [n,32,1,1], ``<point>_partition`` [n] and ``<point>_index`` [n] (row in the
    evaluation set) for each point. A partition with no row at a point (e.g. it failed its last round) has no set
    there. Partitions are those seen at inference: every client's images go through the final model.
    """
    partitions = sorted(set(intercepted["inference_partition"].tolist()))
    sets = []
    for point in POINTS:
        for pid in partitions:
            rows = intercepted[f"{point}_partition"] == pid
            if rows.any():
                activations = torch.from_numpy(intercepted[f"{point}_activations"][rows])
                originals = evaluation.as_float(intercepted[f"{point}_index"][rows])
                sets.append(EvalSet("client", point, pid, activations, originals))
    return sets
