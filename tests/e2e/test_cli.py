"""`sim.py` as a user runs it: bad values give one `error:` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FLAGS = [
    "--clients",
    "--noise",
    "--rounds",
    "--local-epochs",
    "--batch-size",
    "--lr",
    "--clip",
    "--delta",
    "--partition",
    "--alphabets-per-client",
    "--alpha",
    "--limit-per-client",
    "--data-dir",
    "--out",
    "--seed",
    "--device",
    "--max-epsilon",
    "--resume",
    "--dataset",
]


def run_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "sim.py", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--clients", "x"], "argument --clients: invalid int value: 'x'"),
        (["--noise", "-1"], "--noise must be >= 0"),
        (["study", "--list", "--shard", "3/2"], "--shard must be K/N"),
        (["epsilon", "--n", "0", "--noise", "1", "--epochs", "1"], "need --n, --batch-size, --epochs >= 1"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
@pytest.mark.slow
def test_a_bad_value_is_one_line_and_exit_status_2_in_a_real_process(args: list[str], mentions: str) -> None:
    """The policy tests/e2e/test_bad_input.py checks in-process for every input, here on the process itself."""
    result = run_sim(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert mentions in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_the_console_script_is_the_same_entry_point() -> None:
    script = Path(sys.executable).parent / "splitfed"
    result = subprocess.run(
        [str(script), "epsilon", "--n", "594", "--noise", "0.5", "--epochs", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "190 steps (10 epochs of 594 examples): epsilon = 28.524 at delta = 1e-05 (rdp accountant)" in result.stdout


def test_dry_run_prints_shards(omniglot_root: Path) -> None:
    result = run_sim("--dry-run", "--clients", "20")
    assert result.returncode == 0, result.stderr
    assert "13,180" in result.stdout
    assert "20 alphabets" in result.stdout
    assert "Traceback" not in result.stderr


def test_help_mentions_every_flag() -> None:
    result = run_sim("--help")
    assert result.returncode == 0, result.stderr
    for flag in FLAGS:
        assert flag in result.stdout, flag
    assert "--fail-rate" not in result.stdout  # the test seam's failures are no user's setting
    # Registry-backed choices are listed from the registries themselves, the attacks' too.
    from core.config import settings
    from simulation.registries import choices

    text = " ".join(result.stdout.split())
    assert "(fedavg, fedavgm, fedadam, fedyogi, fedprox)" in text
    assert "(seed, up, cond, rmle, whitebox, hijack)" in text
    for kind in {f.metadata["registry"] for f in settings()} - {None}:
        assert f"({', '.join(choices(kind))})" in text, kind


def test_flwr_app_config_mirrors_run_config() -> None:
    """``flwr run .`` reads [tool.flwr.app.config]: the same keys and defaults as sim.py's RunConfig."""
    import tomllib

    from core.config import RunConfig

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_flwr()
