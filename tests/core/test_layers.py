"""Data flows one way: every import of every room's modules, read with ``ast`` (those inside functions and
``TYPE_CHECKING`` blocks too), goes to its own room or to a lower layer, never up nor sideways to a peer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first; the rooms of one layer are peers and import none of each other. report/ sits below simulation/
# because training draws a run's figures through it (simulation/wiring.py, simulation/apps.py: plot_run); it reads
# runs through core's RunDir only. sim.py is the thin CLI on top.
LAYERS = (
    ("core",),
    ("data",),
    ("split",),
    ("audit",),
    ("clients", "strategy", "attack"),
    ("report",),
    ("simulation",),
    ("study",),
    ("sim",),
)
OUTSIDE = ("tests", "benchmarks")  # above every room: they may import any of them
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _modules() -> dict[str, list[Path]]:
    """room -> its Python files: each package at the repository's root, and sim.py."""
    rooms = {p.parent.name: sorted(p.parent.rglob("*.py")) for p in ROOT.glob("*/__init__.py")}
    rooms["sim"] = [ROOT / "sim.py"]
    return {room: paths for room, paths in rooms.items() if room not in OUTSIDE}


def _imported_rooms(path: Path) -> list[tuple[int, str]]:
    """(line, room) of every import in ``path`` whose top-level name is a room."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in LAYER]
    return found


def test_every_room_has_a_layer() -> None:
    assert sorted(_modules()) == sorted(LAYER), "a new package needs its place in LAYERS"


def test_no_room_imports_a_higher_one_or_a_peer() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {room} (layer {LAYER[room]}) imports {other} (layer {LAYER[other]})"
        for room, paths in _modules().items()
        for path in paths
        for line, other in _imported_rooms(path)
        if other != room and LAYER[other] >= LAYER[room]
    ]
    assert not wrong, "\n".join(wrong)


def test_relative_imports_are_not_used() -> None:
    """The check above reads absolute imports only; a relative one would pass it unread."""
    relative = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for paths in _modules().values()
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative, relative


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by basename (no __init__.py in tests/): two of one name stop the whole run at
    collection on a fresh clone (this happened once: tests/core/ and tests/data/ both held a test_registry.py)."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
