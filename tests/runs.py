"""Shared test helpers: a finished run fabricated without training (``make_run``), a quiet console, and small
slices of the attacker's sets (``every_20th``) so a whole attack runs in seconds."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from core.config import RunConfig
from core.rundir import RunDir
from data.base import ImageSet, geometry
from data.omniglot import EVALUATION, load_set
from split.model import build_split, device_activations

# Rows of the evaluation set each partition holds in the fabricated run: 6 images for client 0, 6 for client 1.
CLIENT_ROWS = {0: np.arange(0, 6), 1: np.arange(700, 706)}
# Only client 0 trained in the last round (client 1 failed); Poisson batches sent image 2 twice.
TRAIN_ROWS = {0: np.array([0, 1, 2, 2, 3])}
OMNIGLOT = geometry("omniglot")
REPO_ROOT = Path(__file__).resolve().parent.parent  # build_split's image side and classes for the Omniglot model


def make_run(
    run_dir: Path, evaluation: ImageSet, *, noise: float = 0.5, epsilons: tuple[float, ...] = (2.0, 3.0), **settings
) -> Path:
    """A finished 2-client run in ``run_dir`` without training: returns ``run_dir``.

    config.json (``RunDir.write_config``) holds RunConfig settings (``settings`` override the defaults); model.pt
    an untrained device and head (torch seed 0); intercepted.npz the device's activations of ``CLIENT_ROWS`` at
    inference and ``TRAIN_ROWS`` in training; ledger.csv two rounds in which partition k ends at ``epsilons[k]``;
    metrics.csv two rounds, the last with val_acc 0.25.
    """
    cfg = RunConfig(clients=2, rounds=2, noise=noise, **settings)
    run = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options(), **OMNIGLOT)
    torch.save({"device": device.state_dict(), "head": head.state_dict()}, run.model)
    arrays = {}
    for point, rows in (("inference", CLIENT_ROWS), ("train", TRAIN_ROWS)):
        index = np.concatenate(list(rows.values()))
        arrays[f"{point}_activations"] = device_activations(device, evaluation.as_float(index)).numpy()
        arrays[f"{point}_partition"] = np.concatenate([np.full(len(r), pid) for pid, r in rows.items()])
        arrays[f"{point}_index"] = index
    # Client 0's own device from its last round: a model other than the global one (torch seed 1).
    torch.manual_seed(1)
    own, _ = build_split(**cfg.model_options(), **OMNIGLOT)
    arrays |= {f"train_device_0/{k}": v.numpy() for k, v in own.state_dict().items()}
    np.savez(run.intercepted, **arrays)
    ledger = ["round,client,partition_id,n_train,epsilon,delta,accountant,status"]
    for rnd in (1, 2):
        for pid, eps in enumerate(epsilons):
            ledger.append(f"{rnd},{100 + pid},{pid},6,{eps * rnd / 2},{cfg.delta},{cfg.accountant},trained")
    run.ledger.write_text("\n".join(ledger) + "\n")
    run.metrics.write_text("round,val_loss,val_acc\n1,3.0,0.05\n2,2.5,0.25\n")
    return run_dir


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def every_20th(name: str, data_dir: str | None = None, **_) -> ImageSet:
    """``load_set`` with small1 and small2 cut to every 20th image (136 and 156 images, 50 of small2's shared with
    small1's slice), so that a whole attack runs in seconds; the evaluation set stays whole (clients index it).
    Patch it over ``data.omniglot.load_set``."""
    full = load_set(name, data_dir)
    if name == EVALUATION:
        return full
    idx = np.arange(0, len(full), 20)
    per_image = {k: getattr(full, k)[idx] for k in ("images", "alphabet", "character", "drawer")}
    return dataclasses.replace(
        full, **per_image, files=tuple(full.files[i] for i in idx), md5=tuple(full.md5[i] for i in idx)
    )


# ``python SIM_SMALL ...``: sim.py with the attacker's sets cut to every 20th image (tests/sim_small.py).
SIM_SMALL = "tests/sim_small.py"


def sim(
    *args: str, env: dict | None = None, timeout: float = 2400, script: str = "sim.py"
) -> subprocess.CompletedProcess[str]:
    """``python sim.py args`` (or ``script``, say ``SIM_SMALL``) from the repository root, output captured. Under the
    session's Ray cluster (``ray_cluster`` in conftest.py sets ``RAY_ADDRESS``) it joins that cluster instead of
    starting Ray anew."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(path: Path) -> list[dict]:
    """A CSV file's rows as dicts."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def flat(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


def rendered_dom(chromium: str, page: str, tmp_path: Path, probe_js: str) -> str:
    """The DOM headless Chromium renders from the HTML ``page``, with ``probe_js`` (a script body run on load, which
    records what it checks as attributes) inserted before ``</body>``. Offline flags: nothing is fetched."""
    probe = tmp_path / "probe.html"
    script = f"<script>window.addEventListener('load',()=>{{{probe_js}}});</script></body>"
    probe.write_text(page.replace("</body>", script), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# The probe of every page test: how many images decoded, of how many.
IMAGES_DECODED = (
    "const imgs=[...document.images];const ok=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;"
    "document.body.setAttribute('data-probe',ok+'/'+imgs.length"
)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``process`` (started with ``start_new_session``), SIGKILL after 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
