"""Session setup: where the real Omniglot zips are, and the three sets decoded once (via the default cache).

Nothing is skipped: without the data, every test that needs it fails with one message saying where it looked.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Set before anything of ours is imported, so in-process loads and `sim.py` subprocesses see the same root.
if not os.environ.get("OMNIGLOT_ROOT"):
    os.environ["OMNIGLOT_ROOT"] = str((REPO_ROOT.parent / "shared" / "data" / "omniglot").resolve())
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

from runs import stop_group  # noqa: E402

from data.omniglot import EVALUATION, SMALL1, SMALL2, ImageSet, load_set  # noqa: E402

NEEDED = (EVALUATION, SMALL1, SMALL2)
ALSO_NEEDED = ("images_background",)  # the attacker's public surrogate (tests/attack/test_knowledge.py)


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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> Iterator[str]:
    """One local Ray cluster for the whole session (a head node on 127.0.0.1), so that every ``sim.py`` a test
    starts joins it (``RAY_ADDRESS``) instead of starting and stopping Ray itself: seconds saved per run. Stopped by
    its own process group at the end; a user's other Ray sessions on the machine are not touched."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-tests-", dir="/tmp")  # a short path: Ray's socket names have a size limit
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}"]
    cmd += ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    log = (tmp_path_factory.mktemp("ray") / "head.log").open("w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_until_ready(head, port)
        os.environ["RAY_ADDRESS"] = address  # inherited by every subprocess from here on
        yield address
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ready(head: subprocess.Popen, port: int, timeout: float = 120) -> None:
    """Until the head's GCS accepts connections and ``ray status`` answers."""
    deadline = time.monotonic() + timeout
    status = [str(Path(sys.executable).parent / "ray"), "status", f"--address=127.0.0.1:{port}"]
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0 and subprocess.run(status, capture_output=True).returncode == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Ray head on port {port} is not ready after {timeout} s")


@pytest.fixture(scope="session")
def tiny_sweep(ray_cluster: str, tmp_path_factory) -> Path:
    """One real sweep for every test that only reads a finished run: ``sim.py`` with 3 clients, 2 rounds, 64 images
    each, ``--noise 0 0.5``, 30 audit canaries, then the default attacks (1 decoder epoch, 8 white-box images) on
    every 20th image of the attacker's sets (``SIM_SMALL``). Holds ``s0/`` and ``s0.5/`` (trained and attacked) and
    the sweep's report. Tests that change a run copy it first."""
    from runs import SIM_SMALL, sim

    out = tmp_path_factory.mktemp("tiny") / "sweep"
    args = ["--clients", "3", "--rounds", "2", "--limit-per-client", "64", "--noise", "0", "0.5", "--audit", "30"]
    done = sim(*args, "--attack-epochs", "1", "--whitebox-images", "8", "--out", str(out), script=SIM_SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained: 2 rounds") == 2
    return out
