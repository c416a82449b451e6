"""Every input a user can get wrong: one `error:` line naming it, a non-zero exit, no traceback, no run directory.

Each case runs `sim.py`'s main in this process (no --dry-run), so it would train if the input were accepted; all of
them fail before anything is written, which is why `--out` must not exist afterwards. tests/e2e/test_cli.py checks
the same policy on a real process (its exit status and stderr).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from core.config import RunConfig
from core.rundir import RunDir
from data.omniglot import EVALUATION
from sim import main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken(omniglot_root: Path, tmp_path_factory) -> dict[str, Path]:
    """Data roots holding a damaged copy of images_evaluation.zip: truncated, lacking an alphabet, non-image entry."""
    base = tmp_path_factory.mktemp("broken")
    source = omniglot_root / f"{EVALUATION}.zip"
    roots = {name: base / name for name in ("truncated", "no-alphabet", "non-image")}
    for root in roots.values():
        root.mkdir()
    payload = source.read_bytes()
    (roots["truncated"] / source.name).write_bytes(payload[: len(payload) // 3])
    with zipfile.ZipFile(source) as src:
        infos = [info for info in src.infolist() if not info.is_dir()]
        with zipfile.ZipFile(roots["no-alphabet"] / source.name, "w") as dst:
            for info in infos:
                if not info.filename.startswith(f"{EVALUATION}/Angelic/"):
                    dst.writestr(info.filename, src.read(info))
        with zipfile.ZipFile(roots["non-image"] / source.name, "w") as dst:
            for info in infos:
                dst.writestr(info.filename, src.read(info))
            dst.writestr(f"{EVALUATION}/Angelic/character01/0965_99.png", b"this is a text file, not a PNG")
    return roots


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A run directory as an unfinished run leaves it: config.json (3 clients, 4 rounds) and the INCOMPLETE marker."""
    run_dir = tmp_path_factory.mktemp("old") / "run"
    run_dir.mkdir()
    RunDir(run_dir).write_config(RunConfig(clients=3, rounds=4, limit_per_client=64, out=str(run_dir)))
    RunDir(run_dir).mark_incomplete("training has not finished")
    return run_dir


DATA_CASES = [
    (["--data-dir", "/nonexistent/omniglot"], "/nonexistent/omniglot does not exist"),
    (["--data-dir", "{truncated}"], "is not a readable zip"),
    (["--data-dir", "{no-alphabet}"], "found 19 alphabets"),
    (["--data-dir", "{non-image}"], "0965_99.png is not a valid PNG"),
]
NUMBERS = ("--clients", "--rounds", "--noise", "--batch-size", "--lr", "--clip", "--local-epochs")
CASES = [
    *DATA_CASES,
    # non-numeric, zero (--noise 0 is valid: no DP), negative
    *[([flag, "x"], f"argument {flag}: invalid") for flag in (*NUMBERS, "--delta")],
    *[([flag, "0"], flag) for flag in NUMBERS if flag != "--noise"],
    *[([f"{flag}=-1"], flag) for flag in (*NUMBERS, "--seed")],
    # NaN (for the integer flags "nan" is not an integer)
    *[([flag, "nan"], flag) for flag in ("--noise", "--lr", "--clip", "--delta", "--max-epsilon")],
    (["--clients", "nan"], "argument --clients: invalid int value: 'nan'"),
    (["--rounds", "inf"], "argument --rounds: invalid int value: 'inf'"),
    (["--noise", "inf"], "--noise must be a finite number"),
    # delta outside (0, 1)
    *[([f"--delta={d}"], "--delta must be in (0, 1)") for d in ("0", "1", "1.5", "-1e-5")],
    # more clients than there is data for
    (["--clients", "13181"], "--clients 13181 is more than the 13180 images"),
    (["--clients", "7000", "--partition", "iid"], "it needs at least 2 (train + validation)"),
    (["--clients", "21", "--partition", "alphabet"], "needs --clients <= 20 (the alphabets)"),
    # the budget cap; the test seam's failure rate is not a flag
    (["--max-epsilon=-1"], "--max-epsilon must be > 0"),
    (["--detect", "1.5"], "--detect must be in [0, 1] (0 = off)"),
    (["--detect", "0.2", "--detect-threshold", "2"], "--detect-threshold in [-1, 1]"),
    (["--max-epsilon", "2", "--noise", "0"], "--max-epsilon needs --noise > 0"),
    (["--fail-rate", "0.4"], "unrecognized arguments: --fail-rate"),
    (["--proximal-mu", "0.1"], "--proximal-mu is the weight of a proximal term only fedprox sends; not fedavg"),
    (["--dataset", "mnist"], "--dataset must be one of omniglot, synthetic"),
    (["--grad-sampler", "jax"], "--grad-sampler must be one of fused, fast, opacus"),
    # choices of the new levers, checked before anything runs
    (["--physical-batch=-1"], "--physical-batch must be an integer >= 0"),
    (["--freeze-blocks", "5"], "--freeze-blocks must be in 0..--cut (4), got 5"),
    (["--freeze-blocks", "3", "--cut", "2"], "--freeze-blocks must be in 0..--cut (2), got 3"),
    (["--pretrain", "imagenet"], "--pretrain must be one of none, public"),
    (["--pretrain-epochs", "0"], "--pretrain-epochs must be a positive integer"),
    (["--ema", "1"], "--ema must be in [0, 1) (0 = off), got 1.0"),
    (["--aug-mult=-1"], "--aug-mult must be an integer >= 0"),
    (["--audit=-3"], "--audit must be an integer >= 0 (0 = off), got -3"),
    (["--audit", "100", "--freeze-blocks", "4"], "--audit needs at least 2 canaries, a trained device"),
    (["--audit", "100", "--physical-batch", "8"], "--audit needs at least 2 canaries, a trained device"),
    (["--audit", "9000000"], "--audit 9000000: the trainable device has only 86944 weights"),
    (["--aug-mult", "2", "--grad-sampler", "opacus"], "--aug-mult needs --grad-sampler fused under DP"),
    (["--attacks", "seed,bogus"], "--attacks must be one of seed, up, cond, rmle, whitebox, hijack, got 'bogus'"),
    (["--server", "evil"], "--server must be one of honest, hijack, got 'evil'"),
    (["--server", "hijack", "--noise", "0", "--nopeek", "0.3"], "--server hijack cannot run with --nopeek"),
    (["--server", "hijack", "--strategy", "fedadam"], "--server hijack cannot run with --strategy"),
    (["--hijack-epochs", "0"], "--hijack-epochs must be a positive integer"),
    (["--strategy", "fedsgd"], "--strategy must be one of"),
    (["--head-mode", "both"], "--head-mode must be one of"),
    (["--skew-loss", "focal"], "--skew-loss must be one of"),
    (["--input-norm", "std"], "--input-norm must be one of"),
    # output directory
    (["--out", "{file}/run"], "is not a directory"),
    (["--out", "/proc/no-such-dir/run"], "cannot write to --out /proc/no-such-dir/run"),
    (["--out", "{old_run}"], "already exists and is not empty; pass --resume"),
    # resume
    (["--resume", "{old_run}", "--rounds", "5"], "--rounds 5 differs from the run's 4"),
    (["--resume", "{old_run}", "--noise", "0.7"], "--noise 0.7 differs from the run's 0.5"),
    (["--resume", "{old_run}", "--overwrite"], "pass only one of them"),
    (["--resume", "{old_run}"], "no checkpoint.pt there"),
    (["--resume", "{tmp}"], "no config.json there"),
]


def _ids(case) -> str:
    return " ".join(case)


@pytest.mark.parametrize(("args", "mentions"), CASES, ids=[_ids(a) for a, _ in CASES])
def test_bad_input_one_line_no_run_dir(args, mentions, broken, old_run, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    names = {**{k: str(v) for k, v in broken.items()}, "old_run": str(old_run), "file": str(tmp_path / "file")}
    names["tmp"] = str(tmp_path)
    args = [a.format(**names) for a in args]
    before = sorted(p.name for p in old_run.iterdir())
    out = [] if "--out" in args or "--resume" in args else ["--out", str(tmp_path / "run")]
    if any(a.startswith("--data-dir") for a in args):
        monkeypatch.setenv("OMNIGLOT_CACHE", str(tmp_path / "cache"))  # a damaged zip must not touch the real cache
    capsys.readouterr()
    code = main([*args, *out, "--skip-attack"])  # in this process: the checks run before any training starts
    stdout, stderr = capsys.readouterr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert mentions in lines[0]
    assert "Traceback" not in stdout + stderr
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in old_run.iterdir()) == before
