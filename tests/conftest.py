"""Session setup: where the real Omniglot zips are, and the three sets decoded once (via the default cache).

Nothing is skipped: without the data, every test that needs it fails with one message saying where it looked.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Set before anything of ours is imported, so in-process loads and `sim.py` subprocesses see the same root.
if not os.environ.get("OMNIGLOT_ROOT"):
    os.environ["OMNIGLOT_ROOT"] = str((REPO_ROOT.parent / "shared" / "data" / "omniglot").resolve())
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

from data.omniglot import EVALUATION, SMALL1, SMALL2, ImageSet, load_set  # noqa: E402

NEEDED = (EVALUATION, SMALL1, SMALL2)
ALSO_NEEDED = ("images_background",)  # the attacker's public surrogate (tests/test_attack_knowledge.py)


def pytest_configure(config: pytest.Config) -> None:
    # flwr-datasets' ShardPartitioner uses a pyarrow sort option that pyarrow >= 25 deprecates; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:Specifying null_placement in SortOptions:FutureWarning")


@dataclass(frozen=True)
class Sets:
    evaluation: ImageSet
    small1: ImageSet
    small2: ImageSet


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """The folder holding the official zips ($OMNIGLOT_ROOT); fails (not skips) when any zip is missing."""
    root = Path(os.environ["OMNIGLOT_ROOT"])
    missing = [f"{name}.zip" for name in (*NEEDED, *ALSO_NEEDED) if not (root / f"{name}.zip").is_file()]
    if missing:
        pytest.fail(
            f"Omniglot data missing: {', '.join(missing)} not in {root}; set OMNIGLOT_ROOT to the folder holding "
            "the Omniglot zips (default: ../shared/data/omniglot next to the repo)",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def omniglot(omniglot_root: Path) -> Sets:
    """evaluation / small1 / small2, loaded through the default cache (decoded at most once per machine)."""
    return Sets(*(load_set(name, omniglot_root) for name in NEEDED))


@pytest.fixture(scope="session")
def evaluation(omniglot: Sets) -> ImageSet:
    return omniglot.evaluation


@pytest.fixture(scope="session")
def small1(omniglot: Sets) -> ImageSet:
    return omniglot.small1


@pytest.fixture(scope="session")
def small2(omniglot: Sets) -> ImageSet:
    return omniglot.small2


@pytest.fixture
def small1_zip(omniglot_root: Path) -> Path:
    """The real (read-only) small1 zip: the source for every copy / rewrite / corruption test."""
    return omniglot_root / f"{SMALL1}.zip"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium's path. Skipped with one line where it is absent, except under CI (``$CI`` set), where the
    browser tests of report.html must run (``.ci/run`` installs Debian's chromium)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is needed under CI (Debian package chromium; .ci/run installs it)")
    pytest.skip("headless Chromium not installed (apt-get install chromium); the browser check of report.html")
