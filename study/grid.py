"""The study's grid: runs ("cells") that answer leakage against accuracy, per defense, on one seed and shards.

A cell is a name, the defense family its point belongs to, and the settings it changes from the study's base
settings. Every cell shares the base's seed, clients and shards, so cells differ only in what they name.

Families (``core.defenses.FAMILIES``, one curve each in the report):
- ``dp``: DP-SGD at a target epsilon (the accountant resolves sigma per cell), 0 = no DP (epsilon inf);
- ``cut-noise``: noise on clipped activations (``--cut-clip`` / ``--cut-noise``) at sigma 0;
- ``nopeek``: NoPeek's distance-correlation weight at sigma 0;
- ``control``: a reference drawn as a point of its own, not on a curve, e.g. the device frozen at its random
  initialisation (``lr = 1e-12``, sigma 0: Adam's steps are then about 1e-12), which says what an untrained device
  leaks and what the server's part alone reaches.
The no-defense cell at a cut (``dp`` with epsilon inf) is every family's starting point at that cut.

A grid file is TOML: an optional ``[base]`` table of settings (kebab-case keys, as ``sim.py``'s flags) and one
``[[cells]]`` table per cell with ``name``, ``family`` and its settings, e.g.::

    [base]
    clients = 20

    [[cells]]
    name = "cut4-eps8"
    family = "dp"
    cut = 4
    target-epsilon = 8
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig, flag_name, settings
from core.defenses import FAMILIES
from core.errors import UserError

if TYPE_CHECKING:
    from report.study_stats import StudyCell

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a cell's name is its directory's name
_SEED_SUFFIX = re.compile(r"\.seed\d+$")  # <cell>.seed<k>: the directory of the cell's k-th training run


@dataclass(frozen=True)
class Cell:
    """One run of the study: ``settings`` (RunConfig field names) override the study's base settings."""

    name: str
    family: str
    settings: dict[str, Any]

    def config(self, base: RunConfig, out: Path) -> RunConfig:
        """This cell's validated settings, writing into ``out / name``; UserError naming the cell if invalid."""
        try:
            cfg = dataclasses.replace(base, **self.settings, out=str(out / self.name))
            return cfg.validate()
        except UserError as exc:
            raise UserError(f"study cell {self.name!r}: {exc}") from None

    @property
    def label(self) -> str:
        """How the report names the cell's point: "eps 8", "eps inf", "noise 0.1", "NoPeek 3", or a control's name."""
        return FAMILIES[self.family].point_label(self.name, self.settings)

    def for_report(self) -> StudyCell:
        """This cell as the study's report records it: its name, family and settings, nothing of the grid."""
        from report.study_stats import StudyCell  # here: the report's modules load matplotlib, which a grid needs not

        return StudyCell(self.name, self.family, self.settings)


# What the default grid holds, and why: the cells the README's headline compares, and no others (12 cells, each run
# DEFAULT_SEEDS times; about 6 minutes a run at cut 4, 8 to 9 at cut 2, on 2 cores; measured times are in
# docs/performance.md):
# - DP-SGD at epsilon inf, 8 and 1 at both cuts. Cut 2 is where the model learns under DP-SGD (the server's part
#   carries the learning); at cut 4 a device trained with DP-SGD at epsilon 30 to 1 stays close to an untrained one,
#   so the headline compares epsilon 8 and 1 there with the device frozen at its random initialisation
#   (``--freeze-blocks 4``), seed by seed.
# - the pretrained arm at cut 4 (``--pretrain public`` at epsilon 8 and 1) with its own control, the pretrained
#   device frozen: the headline's "pretraining lifts accuracy, not what DP-SGD learns" is that comparison.
# - each activation-side defense at the strength the headline names (cut noise s 0.1, NoPeek alpha 0.3).
# ``docs/study-full.toml`` adds epsilon 30 and 3 at both cuts, the weaker cut noise (s 0.03), the stronger NoPeek
# (alpha 3) and the lr-1e-12 frozen control; its other cells are these, so a study directory holding the default grid
# runs only the new cells. ``docs/study-recipe.toml`` adds the pretrained arm at epsilon inf and at cut 2.
DEFAULT_EPSILONS = {4: (0.0, 8.0, 1.0), 2: (0.0, 8.0, 1.0)}
DEFAULT_PUBLIC_EPSILONS = (8.0, 1.0)  # --pretrain public at cut 4
DEFAULT_CUT_NOISE = (0.1,)  # x the clip below: per-value std 0.6, against a spread of about 0.7
DEFAULT_CUT_CLIP = 6.0  # about the activations' L2 norm at cut 4 (median 6.1 on the sigma-0 model)
DEFAULT_NOPEEK = (0.3,)


@dataclass(frozen=True)
class SeedRun:
    """Training run ``k`` of a cell: the cell's settings with training seed (base's) + k, same shards (``--seed``).
    Its directory: the cell's name for k = 0, ``<name>.seed<k>`` for the others."""

    cell: Cell
    k: int

    @property
    def name(self) -> str:
        return self.cell.name if self.k == 0 else f"{self.cell.name}.seed{self.k}"

    def config(self, base: RunConfig, out: Path) -> RunConfig:
        cfg = self.cell.config(base, out)
        if self.k == 0:
            return cfg
        return dataclasses.replace(cfg, train_seed=cfg.training_seed + self.k, out=str(out / self.name)).validate()


DEFAULT_SEEDS = 3  # training runs per cell of the default grid; a --grid file's study runs 1 unless --seeds says


def seed_runs(cells: list[Cell], seeds: int) -> list[SeedRun]:
    """Every cell's ``seeds`` training runs, seed by seed (all cells' first run, then all second runs, ...), so a
    study stopped part-way has whole seeds done first; UserError unless 1 <= seeds."""
    check_seeds(seeds)
    return [SeedRun(cell, k) for k in range(seeds) for cell in cells]


def check_seeds(seeds: int) -> None:
    """UserError unless ``seeds`` (``--seeds``) is an integer >= 1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {seeds!r}")


def default_grid() -> list[Cell]:
    """The default study (see the comment above ``DEFAULT_EPSILONS``): cut 4's DP cells and their controls first."""
    random_frozen = Cell("cut4-random-frozen", "control", {"cut": 4, "noise": 0.0, "freeze_blocks": 4})
    public = [
        Cell(f"cut4-public-eps{eps:g}", "dp-public", {"cut": 4, "target_epsilon": eps, "pretrain": "public"})
        for eps in DEFAULT_PUBLIC_EPSILONS
    ]
    public_frozen = Cell(
        "cut4-public-frozen", "control", {"cut": 4, "noise": 0.0, "pretrain": "public", "freeze_blocks": 4}
    )
    cut_noise = [
        Cell(f"cut4-noise{s:g}", "cut-noise", {"noise": 0.0, "cut_clip": DEFAULT_CUT_CLIP, "cut_noise": s})
        for s in DEFAULT_CUT_NOISE
    ]
    nopeek = [Cell(f"cut4-nopeek{alpha:g}", "nopeek", {"noise": 0.0, "nopeek": alpha}) for alpha in DEFAULT_NOPEEK]
    return [*_dp_cells(4), random_frozen, *public, public_frozen, *_dp_cells(2), *cut_noise, *nopeek]


def _dp_cells(cut: int) -> list[Cell]:
    """DP-SGD at ``cut`` at each of ``DEFAULT_EPSILONS[cut]`` (0: no DP, named eps-inf)."""
    cells = []
    for eps in DEFAULT_EPSILONS[cut]:
        name = f"cut{cut}-eps{eps:g}" if eps else f"cut{cut}-eps-inf"
        dp = {"target_epsilon": eps} if eps else {"noise": 0.0}
        cells.append(Cell(name, "dp", {"cut": cut, **dp}))
    return cells


def read_grid(path: Path) -> tuple[dict[str, Any], list[Cell]]:
    """(base settings, cells) from a TOML grid file; UserError with one line for anything wrong in it."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--grid {path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"--grid {path}: not a readable TOML file ({exc})") from None
    unknown = set(data) - {"base", "cells"}
    if unknown:
        raise UserError(f"--grid {path}: unknown table(s) {', '.join(sorted(unknown))}; use [base] and [[cells]]")
    base = _settings(data.get("base", {}), f"--grid {path} [base]")
    cells = []
    for i, entry in enumerate(data.get("cells", [])):
        where = f"--grid {path} cell {i + 1}"
        entry = dict(entry)
        name, family = entry.pop("name", None), entry.pop("family", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"{where}: needs a name of letters, digits, '.', '_' or '-' (its directory), got {name!r}")
        if family not in FAMILIES:
            raise UserError(f"{where} ({name}): family must be one of {', '.join(FAMILIES)}, got {family!r}")
        cells.append(Cell(name, family, _settings(entry, f"{where} ({name})")))
    check_cells(cells)
    return base, cells


def check_cells(cells: list[Cell]) -> None:
    """UserError when the grid is empty or names a cell twice."""
    if not cells:
        raise UserError("the study grid has no cells")
    names = [c.name for c in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"the study grid names cell(s) {', '.join(twice)} more than once")
    seedlike = sorted(n for n in names if _SEED_SUFFIX.search(n))
    if seedlike:
        raise UserError(f"study cell name(s) {', '.join(seedlike)} end in .seed<k>, the name of a cell's k-th run")


def _settings(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Kebab-case keys of a TOML table -> RunConfig field names; UserError on an unknown key or a wrong type."""
    fields = {flag_name(f.name): f for f in settings()}
    out = {}
    for key, value in table.items():
        if key not in fields or key == "out":
            raise UserError(f"{where}: unknown setting {key!r} (settings are sim.py's flags without the dashes)")
        default = fields[key].default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise UserError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
        out[fields[key].name] = value
    return out


def parse_shard(shard: str) -> tuple[int, int]:
    """(K, N) of ``--shard K/N`` with 1 <= K <= N; UserError when the form is wrong."""
    match = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard must be K/N with 1 <= K <= N, got {shard!r}")
    return int(match[1]), int(match[2])


def shard_of(runs: list, shard: str) -> list:
    """The runs (or cells) of ``shard`` "K/N": every N-th from the K-th, so N machines sharing the study directory
    can each run ``--shard K/N``; UserError when the form is wrong."""
    k, n = parse_shard(shard)
    return runs[k - 1 :: n]


def matching(runs: list, patterns: str) -> list:
    """The runs (or cells) whose cell name matches one of ``patterns`` (comma-separated shell globs, ``--cells``,
    e.g. "cut2-*"); UserError naming the pattern when one matches no cell."""
    globs = [glob.strip() for glob in patterns.split(",") if glob.strip()] or [patterns]
    names = [run.cell.name if isinstance(run, SeedRun) else run.name for run in runs]
    for glob in globs:
        if not fnmatch.filter(names, glob):
            raise UserError(f"--cells {glob!r} matches no cell of the grid")
    return [run for run, name in zip(runs, names, strict=True) if any(fnmatch.fnmatchcase(name, g) for g in globs)]
