"""Per-round checkpoints (``checkpoint.pt`` of a run directory, ``core.rundir.RunDir``).

A checkpoint is written atomically after every complete round (train + evaluate) and holds everything the next
round needs: the global weights (device convnet and head), every client's accountant history (the server's copy:
a restarted federation's nodes have lost their ``context.state``), the clients already over ``--max-epsilon``, the
last round's intercepted training activations, the server strategy's own state (FedAvgM's momentum, FedAdam's
moments; ``strategy/registry.py``), the ``--ema`` average of the device (``strategy/averaging.py``) and the wall time
so far. There is no RNG stream to save: every random draw of
a round is seeded from (seed, round) on the server and (seed, partition, round) on a client.

The settings are not copied here: ``config.json`` is their one copy. The checkpoint keeps a digest of each
setting, so ``Checkpoint.mismatches(settings)`` can name the settings that differ from the ones it was written with.

While the run directory's ``INCOMPLETE`` marker exists (``RunDir.state``), ``python sim.py --resume RUN_DIR``
continues the run from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from core import files
from core.errors import UserError
from core.privacy import History, history_from_lists, history_to_lists
from core.protocol import Intercepted
from core.rundir import RunDir

FORMAT = 4  # 2: settings digests instead of the settings, and the server strategy's state; 3: the --ema average;
# 4: the --audit scores


def settings_digest(settings: dict[str, Any]) -> dict[str, str]:
    """Per setting, the first 16 hex digits of the SHA-256 of its JSON value: tells a changed setting, holds none."""
    return {
        key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for key, value in settings.items()
    }


@dataclass
class Checkpoint:
    """The state after round ``round``.

    ``arrays``: the global model (``device.*`` / ``head.*``) as numpy arrays. ``histories``: partition ->
    [(sigma, q, steps)]. ``settings_digest``: ``settings_digest(settings)`` of the run that wrote it.
    ``strategy_state``: the inner strategy's ``StateAdapter.state_dict`` ({} for FedAvg).
    """

    round: int
    arrays: dict[str, np.ndarray]
    histories: dict[int, History]
    over_budget: list[int]
    settings_digest: dict[str, str]
    elapsed_seconds: float = 0.0
    intercepted_training: list[Intercepted] = field(default_factory=list)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    ema_state: dict[str, np.ndarray] = field(default_factory=dict)  # --ema: strategy.averaging.DeviceEMA's state
    audit_state: dict[str, Any] = field(default_factory=dict)  # --audit: audit.auditor.Auditor's state

    def array_record(self) -> ArrayRecord:
        return ArrayRecord({key: Array(value) for key, value in self.arrays.items()})

    def mismatches(self, settings: dict[str, Any]) -> list[str]:
        """The settings (names, sorted) this checkpoint was written with that ``settings`` lacks or has with another
        value; [] when they agree. Settings it does not know (added since) are not compared."""
        digest = settings_digest({key: settings[key] for key in self.settings_digest if key in settings})
        return sorted(key for key, value in self.settings_digest.items() if digest.get(key) != value)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``checkpoint.pt`` atomically (a kill mid-write leaves the previous one); returns its path."""
    payload = {
        "format": FORMAT,
        "round": ckpt.round,
        "arrays": ckpt.arrays,
        "histories": {int(pid): history_to_lists(h) for pid, h in ckpt.histories.items()},
        "over_budget": sorted(ckpt.over_budget),
        "settings_digest": ckpt.settings_digest,
        "elapsed_seconds": ckpt.elapsed_seconds,
        # plain tuples: the file must not depend on where a class lives
        "intercepted_training": [tuple(record) for record in ckpt.intercepted_training],
        "strategy_state": ckpt.strategy_state,
        "ema_state": ckpt.ema_state,
        "audit_state": ckpt.audit_state,
    }
    return files.write_with(RunDir(run_dir).checkpoint, lambda fh: torch.save(payload, fh), fsync=True)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``checkpoint.pt``; raises UserError (one line) if it is missing or unreadable."""
    path = RunDir(run_dir).checkpoint
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no {path.name} there (the run did not finish a round)")
    try:
        payload = torch.load(path, weights_only=False)
        assert payload["format"] == FORMAT
        return Checkpoint(
            round=int(payload["round"]),
            arrays=dict(payload["arrays"]),
            histories={int(pid): history_from_lists(h) for pid, h in payload["histories"].items()},
            over_budget=list(payload["over_budget"]),
            settings_digest=dict(payload["settings_digest"]),
            elapsed_seconds=float(payload["elapsed_seconds"]),
            intercepted_training=[Intercepted(*record) for record in payload["intercepted_training"]],
            strategy_state=dict(payload["strategy_state"]),
            ema_state=dict(payload["ema_state"]),
            audit_state=dict(payload["audit_state"]),
        )
    except Exception as exc:  # any damage reads the same to the user: the file cannot be used
        raise UserError(f"--resume {run_dir}: {path.name} is unreadable ({type(exc).__name__})") from None
