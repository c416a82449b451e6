"""Per-round checkpoints (``checkpoint.pt``) and the ``INCOMPLETE`` marker of a run directory.

A checkpoint is written atomically after every complete round (train + evaluate) and holds everything the next
round needs: the global weights (device convnet and head), every client's accountant history (the server's copy:
a restarted federation's nodes have lost their ``context.state``), the clients already over ``--max-epsilon``, the
last round's intercepted training activations, and the wall time so far. There is no RNG stream to save: every
random draw of a round is seeded from (seed, round) on the server and (seed, partition, round) on a client, and
both are in the checkpoint (seed in ``settings``).

``INCOMPLETE`` is created with the run directory and removed only when training has finished and ``model.pt``,
``intercepted.npz`` and the figures are written; while it exists the directory is a run that crashed, was killed
or is still going, and ``python sim.py --resume RUN_DIR`` continues it from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from core import files
from core.errors import UserError
from core.privacy import History, history_from_lists, history_to_lists

CHECKPOINT = "checkpoint.pt"
INCOMPLETE = "INCOMPLETE"
FORMAT = 1


@dataclass
class Checkpoint:
    """The state after round ``round``. arrays: the global model (``device.*`` / ``head.*``) as numpy arrays."""

    round: int
    arrays: dict[str, np.ndarray]
    histories: dict[int, History]
    over_budget: list[int]
    settings: dict
    elapsed_seconds: float = 0.0
    intercepted_training: list = field(default_factory=list)  # (partition, activations, index)

    def array_record(self) -> ArrayRecord:
        return ArrayRecord({key: Array(value) for key, value in self.arrays.items()})


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``checkpoint.pt`` atomically (a kill mid-write leaves the previous one); returns its path."""
    payload = {
        "format": FORMAT,
        "round": ckpt.round,
        "arrays": ckpt.arrays,
        "histories": {int(pid): history_to_lists(h) for pid, h in ckpt.histories.items()},
        "over_budget": sorted(ckpt.over_budget),
        "settings": ckpt.settings,
        "elapsed_seconds": ckpt.elapsed_seconds,
        "intercepted_training": ckpt.intercepted_training,
    }
    return files.write_with(run_dir / CHECKPOINT, lambda fh: torch.save(payload, fh), fsync=True)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``checkpoint.pt``; raises UserError (one line) if it is missing or unreadable."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no {CHECKPOINT} there (the run did not finish a round)")
    try:
        payload = torch.load(path, weights_only=False)
        assert payload["format"] == FORMAT
        return Checkpoint(
            round=int(payload["round"]),
            arrays=dict(payload["arrays"]),
            histories={int(pid): history_from_lists(h) for pid, h in payload["histories"].items()},
            over_budget=list(payload["over_budget"]),
            settings=dict(payload["settings"]),
            elapsed_seconds=float(payload["elapsed_seconds"]),
            intercepted_training=list(payload["intercepted_training"]),
        )
    except Exception as exc:  # any damage reads the same to the user: the file cannot be used
        raise UserError(f"--resume {run_dir}: {CHECKPOINT} is unreadable ({type(exc).__name__})") from None


def mark_incomplete(run_dir: Path, note: str) -> None:
    """Create or replace the ``INCOMPLETE`` marker with ``note`` (what happened, how to resume)."""
    files.write_text(run_dir / INCOMPLETE, note.rstrip() + "\n")


def mark_complete(run_dir: Path) -> None:
    (run_dir / INCOMPLETE).unlink(missing_ok=True)


def is_incomplete(run_dir: Path) -> bool:
    return (run_dir / INCOMPLETE).exists()
