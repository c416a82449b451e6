"""A run directory (``runs/<name>/``): the one owner of its paths, its config, its state and its file formats.

Lifecycle: ``create`` makes the directory with its ``INCOMPLETE`` marker, ``write_config`` stores every resolved
setting in ``config.json`` (their one copy), training writes ``ledger.csv`` / ``metrics.csv`` / ``checkpoint.pt``
each round and ``model.pt`` / ``intercepted.npz`` at the end, then the marker goes (state ``trained``); the attack
writes ``leakage.json`` / ``attack.json`` (state ``attacked``). Everything else reads a run through this class, so
``config.json`` is parsed in one place and a run written by another version reads as one clear line.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core import files
from core.config import RunConfig, settings
from core.errors import UserError
from core.protocol import Intercepted

# 2: config.json names its format, and attack.json says "attacks" / "best_attack" (1: "decoders" beside "attacks").
FORMAT = 2
PACKAGES = ("torch", "opacus", "flwr", "flwr-datasets", "numpy", "matplotlib", "pillow", "rich")
DEVICE_PREFIX = "train_device_"  # intercepted.npz keys of each client's last-round device weights
EMPTY, INCOMPLETE, TRAINED, ATTACKED = "empty", "incomplete", "trained", "attacked"


@dataclass(frozen=True)
class RunDir:
    """The run directory at ``path`` (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # --- paths
    config = property(lambda self: self.path / "config.json")
    incomplete = property(lambda self: self.path / "INCOMPLETE")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    model = property(lambda self: self.path / "model.pt")
    intercepted = property(lambda self: self.path / "intercepted.npz")
    ledger = property(lambda self: self.path / "ledger.csv")
    metrics = property(lambda self: self.path / "metrics.csv")
    client_metrics = property(lambda self: self.path / "client_metrics.csv")
    detector = property(lambda self: self.path / "detector.csv")  # --detect only
    leakage = property(lambda self: self.path / "leakage.json")
    attack = property(lambda self: self.path / "attack.json")
    audit = property(lambda self: self.path / "audit.json")
    times = property(lambda self: self.path / "times.json")
    report_md = property(lambda self: self.path / "report.md")
    report_html = property(lambda self: self.path / "report.html")
    # What only a run (or a sweep's / study's) directory holds: ``clear`` empties no other folder.
    MARKERS = ("config.json", "INCOMPLETE", "report.md", "study.json")
    # The weights and arrays a run needs to be resumed or attacked again: megabytes each (hundreds at cut 2), so a
    # study's committed records (results/, .gitignore) leave them out.
    WEIGHTS = ("checkpoint.pt", "model.pt", "intercepted.npz")

    def __str__(self) -> str:
        return str(self.path)

    @staticmethod
    def default(cfg: RunConfig, label: str | None = None) -> RunDir:
        """``runs/<timestamp>-c<clients>-s<noise>`` (or ``-<label>`` instead of ``-s<noise>``)."""
        return RunDir(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-c{cfg.clients}-{label or f's{cfg.noise:g}'}")

    # --- state
    def state(self) -> str:
        """``empty`` (nothing worth keeping), ``incomplete`` (resume it), ``trained`` (attack it) or ``attacked``."""
        if not self.config.is_file():
            return EMPTY
        if self.incomplete.exists():
            return INCOMPLETE
        if self.leakage.is_file() and self.attack.is_file():
            return ATTACKED
        return TRAINED

    def has_weights(self) -> bool:
        """Whether the finished training's ``model.pt`` and ``intercepted.npz`` are here (an attack needs both)."""
        return self.model.is_file() and self.intercepted.is_file()

    def add_time(self, start: float, end: float, state: str, host: str) -> None:
        """Append one stretch of wall-clock work on this run to ``times.json``: ``start`` / ``end`` in seconds since
        the epoch, the ``state`` it started from and the ``host`` it ran on. Unlike file times, it survives a copy or
        a git checkout, so a study carried over several machines keeps what each run took."""
        spans = self.read_times()
        spans.append({"start": round(start, 3), "end": round(end, 3), "from": state, "host": host})
        files.write_text(self.times, json.dumps(spans, indent=1) + "\n")

    def read_times(self) -> list[dict[str, Any]]:
        """The stretches ``add_time`` recorded, oldest first; [] when none were."""
        if not self.times.is_file():
            return []
        spans = json.loads(self.times.read_text())
        assert isinstance(spans, list), self.times
        return spans

    def resume_hint(self) -> str:
        return f"continue it from its last checkpoint with: python sim.py --resume {self.path}"

    def mark_incomplete(self, note: str) -> None:
        """Create or replace the ``INCOMPLETE`` marker with ``note`` (what happened, how to resume)."""
        files.write_text(self.incomplete, note.rstrip() + "\n")

    def mark_complete(self) -> None:
        self.incomplete.unlink(missing_ok=True)

    # --- lifecycle
    def check_free(self, overwrite: bool = False) -> None:
        """Refuse a path that is a file, a non-empty directory (unless ``overwrite``), or not creatable / writable.

        Creates nothing: the nearest existing ancestor must be a writable directory. Raises UserError.
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise UserError(
                f"run directory {path} already exists and is not empty; pass --resume {path} to continue it, "
                "--overwrite to replace it, or another --out"
            )
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"cannot create --out {path}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to --out {path}: {existing} is not writable")

    def clear(self) -> None:
        """Empty the directory before it is reused (``--overwrite``, a study cell started over), so no file of an
        earlier run stays beside the new one's. UserError for a non-empty directory holding none of ``MARKERS``."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        if not any((self.path / name).exists() for name in self.MARKERS):
            raise UserError(
                f"--overwrite {self.path}: not a run directory (no {' / '.join(self.MARKERS)}); not emptying it"
            )
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def create(self, overwrite: bool = False) -> RunDir:
        """Create the directory with its INCOMPLETE marker; refuse a non-empty one unless ``overwrite``."""
        self.check_free(overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.mark_incomplete(f"training has not finished\n{self.resume_hint()}")
        except OSError as exc:
            raise UserError(f"cannot write to --out {self.path} ({exc.strerror or exc})") from None
        return self

    # --- config.json
    def write_config(self, cfg: RunConfig, chosen: dict | None = None) -> None:
        """``config.json``: the format, every resolved setting, what was chosen for the run (e.g. the noise resolved
        from a target epsilon), package versions, and the machine."""
        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
        payload = {
            "format": FORMAT,
            "settings": cfg.settings_dict(),
            **(chosen or {}),
            "versions": versions,
            "python": platform.python_version(),
            "machine": platform.platform(),
        }
        files.write_text(self.config, json.dumps(payload, indent=2) + "\n")

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the run (``config.json``, ``leakage.json``, ``attack.json``) as a dict; UserError (one line)
        if it is missing or unreadable."""
        path = self.path / name
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: no {name} there; is it a run directory?") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is unreadable ({type(exc).__name__})") from None
        if not isinstance(payload, dict):
            raise UserError(f"{path} is unreadable (not a JSON object)")
        return payload

    def read_csv(self, name: str) -> list[dict[str, str]]:
        """The rows of a CSV file of the run (``ledger.csv``, ``metrics.csv``, ``client_metrics.csv``), as dicts of
        strings keyed by its header; UserError (one line) if it is missing."""
        path = self.path / name
        try:
            with path.open(newline="") as fh:
                return list(csv.DictReader(fh))
        except FileNotFoundError:
            raise UserError(f"{self.path}: no {name} there; did training finish?") from None

    def settings(self) -> dict[str, Any]:
        """The run's saved settings (field names), as written; UserError for a run of another format."""
        payload = self.read_json("config.json")
        if payload.get("format") != FORMAT or not isinstance(payload.get("settings"), dict):
            raise UserError(
                f"{self.path} was written by another version of this tool (run format {payload.get('format', 1)}, "
                f"this one reads {FORMAT}); train it again"
            )
        return payload["settings"]

    def read_config(self) -> RunConfig:
        """The run's settings as a RunConfig; UserError (one line) when config.json is missing, unreadable, of
        another format, or names settings this version does not have."""
        saved = self.settings()
        unknown = sorted(set(saved) - {f.name for f in settings()})
        if unknown:
            raise UserError(f"{self.config} has settings this version does not know ({', '.join(unknown)})")
        try:
            return RunConfig(**saved)
        except TypeError as exc:
            raise UserError(f"{self.config} is unreadable ({exc})") from None

    # --- intercepted.npz
    def save_intercepted(self, inference: list[Intercepted], train: list[Intercepted], shape: tuple[int, ...]) -> Path:
        """Write ``intercepted.npz`` atomically: per point (``inference``, ``train``) the float16 activations, the
        partition and the image index of every row, and each training client's device weights
        (``train_device_<k>/<param>``). ``shape``: one row's activation shape (C,H,W), for a point with no record."""
        return files.savez(self.intercepted, **_stack(inference, "inference", shape), **_stack(train, "train", shape))

    def load_intercepted(self) -> dict[str, np.ndarray]:
        """Every array of ``intercepted.npz``, by key."""
        with np.load(self.intercepted) as z:
            return {k: z[k] for k in z.files}


def local_devices(intercepted: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """The per-client device weights among intercepted.npz's arrays: {partition: DeviceNet state dict}."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in intercepted.items():
        if key.startswith(DEVICE_PREFIX):
            pid, name = key[len(DEVICE_PREFIX) :].split("/", 1)
            out.setdefault(int(pid), {})[name] = value
    return out


def _stack(parts: list[Intercepted], point: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    parts = sorted(parts, key=lambda p: p.partition)
    if not parts:
        return {
            f"{point}_activations": np.zeros((0, *shape), np.float16),
            f"{point}_partition": np.zeros(0, np.int64),
            f"{point}_index": np.zeros(0, np.int64),
        }
    stacked = {
        f"{point}_activations": np.concatenate([p.activations for p in parts]).astype(np.float16),
        f"{point}_partition": np.concatenate([np.full(len(p.index), p.partition, np.int64) for p in parts]),
        f"{point}_index": np.concatenate([p.index for p in parts]).astype(np.int64),
    }
    for p in parts:
        for name, value in (p.device or {}).items():
            stacked[f"{DEVICE_PREFIX}{p.partition}/{name}"] = value
    return stacked
