"""A training run end to end: the privacy plan, the run directory, the simulation, the attack and the reports.

``run`` is what ``python sim.py [flags]`` does: one training (and attack) per ``--noise`` value with the same seed and
shards, or the continuation of one (``--resume``). Everything a user can get wrong (data, shards, the output
directories, a resumed run's settings) is checked before anything is created, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig, flag_name, settings
from core.errors import UserError
from core.privacy import EPSILON_COVERS
from core.rundir import INCOMPLETE, RunDir

if TYPE_CHECKING:
    from strategy.checkpoint import Checkpoint

# Settings a resumed run may change: where the data is, what hardware runs it, and the attack that follows
# training; not what training computes.
RESUME_MAY_CHANGE = (
    "data_dir",
    "device",
    "cpus_per_client",
    "gpus_per_client",
    "attack_epochs",
    "attacks",
    "surrogate",
    "whitebox_images",
)


def resume_config(run_dir: Path, given: dict[str, Any]) -> RunConfig:
    """The saved settings of the run in ``run_dir``, with the settings in ``given`` (those given on the command
    line, by field name) applied where a resume may change them; UserError if another one disagrees with the run."""
    saved = RunDir(run_dir).read_config()
    if "out" in given and Path(given["out"]).resolve() != Path(run_dir).resolve():
        raise UserError(f"--resume {run_dir} writes into that run directory; --out {given['out']} differs")
    values = saved.settings_dict()
    for name in sorted(set(given) - {"out"}):
        if name in RESUME_MAY_CHANGE:
            values[name] = given[name]
        elif given[name] != values[name]:
            raise UserError(
                f"--resume {run_dir}: --{flag_name(name)} {given[name]} differs from the run's {values[name]} "
                "(config.json); a resumed run keeps its settings"
            )
    values["out"] = str(run_dir)
    return RunConfig(**values).validate()


def private_set(cfg: RunConfig, download: bool = False):
    """The clients' images of the run's dataset (``data.base.ImageSet``)."""
    from data.base import get_dataset

    return get_dataset(cfg.dataset, cfg.data_dir or None).load("private", download=download)


def dry_run(cfg: RunConfig, download: bool) -> None:
    """Load the clients' set, build the shards and print one row per client."""
    from rich.console import Console
    from rich.table import Table

    from clients.shards import build_shards

    data = private_set(cfg, download)
    shards = build_shards(data.alphabet, cfg)
    table = Table(title=f"{cfg.clients} clients, --partition {cfg.partition} (seed {cfg.seed})")
    for column in ("client", "alphabets", "train", "val", "images"):
        table.add_column(column, justify="left" if column == "alphabets" else "right")
    for shard in shards:
        names = sorted({data.alphabet_names[a] for a in data.alphabet[shard.indices]})
        shown = ", ".join(names) if len(names) <= 3 else f"{len(names)}: {', '.join(names[:2])}, ..."
        table.add_row(
            str(shard.partition_id), shown, str(len(shard.train)), str(len(shard.val)), str(len(shard.indices))
        )
    n_train, n_val = sum(len(s.train) for s in shards), sum(len(s.val) for s in shards)
    table.add_section()
    table.add_row(
        "total", f"{len(data.alphabet_names)} alphabets", f"{n_train:,}", f"{n_val:,}", f"{n_train + n_val:,}"
    )
    Console().print(table)


def plan_privacy(cfg: RunConfig) -> dict:
    """Check delta against each client's training-set size and resolve --target-epsilon into --noise.

    Returns what was chosen (for config.json). Warns when delta >= 1/n for some client: such a delta allows the
    mechanism to reveal a whole record outright.
    """
    from clients.shards import build_shards
    from core.privacy import noise_for_clients

    n_trains = [len(s.train) for s in build_shards(private_set(cfg).alphabet, cfg)]
    if cfg.delta >= 1 / min(n_trains):
        print(
            f"warning: --delta {cfg.delta:g} >= 1/n for the smallest client (n = {min(n_trains)}); "
            f"use delta < {1 / max(n_trains):.2g}",
            file=sys.stderr,
        )
    if not cfg.target_epsilon:
        return {}
    epochs = cfg.rounds * cfg.local_epochs
    try:
        cfg.noise = noise_for_clients(cfg.target_epsilon, cfg.delta, n_trains, cfg.batch_size, epochs, cfg.accountant)
    except ValueError as exc:
        raise UserError(f"--target-epsilon: {exc}") from None
    print(f"--target-epsilon {cfg.target_epsilon:g}: noise multiplier {cfg.noise:.4f} ({cfg.accountant})")
    return {"noise_from_target_epsilon": cfg.noise}


def train(cfg: RunConfig, run_dir: Path, chosen: dict, resume: Checkpoint | None = None) -> Path:
    """Train with Flower into ``run_dir`` (created here, or continued from ``resume``); print a one-line result.

    ``chosen``: what ``plan_privacy`` resolved, for config.json.
    """
    from simulation.wiring import run_training

    if resume is None:
        run = RunDir(run_dir).create(overwrite=True)  # checked free (or --overwrite) before anything was created
        cfg.out = str(run_dir)
        run.write_config(cfg, chosen)
    rows = run_training(cfg, run_dir, resume)
    last = rows[-1]
    print(
        f"trained: {len(rows)} rounds, val acc {last['val_acc']:.3f}, epsilon {last['epsilon_min']:.3g}..."
        f"{last['epsilon_max']:.3g} ({cfg.accountant}, delta={cfg.delta:g}); run directory {run_dir}\n"
        f"  note: {EPSILON_COVERS}"
    )
    return run_dir


def check_resume(cfg: RunConfig, run_dir: Path) -> Checkpoint:
    """The checkpoint to continue from; UserError if the run has finished or the checkpoint disagrees with ``cfg``."""
    from strategy.checkpoint import load_checkpoint

    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    if RunDir(run_dir).state() != INCOMPLETE:
        raise UserError(f"--resume {run_dir}: that run has finished; nothing to resume")
    ckpt = load_checkpoint(run_dir)
    differ = [k for k in ckpt.mismatches(cfg.settings_dict()) if k not in RESUME_MAY_CHANGE + ("out",)]
    if differ:
        raise UserError(f"--resume {run_dir}: checkpoint.pt was written with other settings ({', '.join(differ)})")
    return ckpt


def configs_for(cfg: RunConfig, noises: Sequence[float]) -> list[RunConfig]:
    """One validated config per noise value (each must be valid on its own); UserError for repeats."""
    if len(noises) != len(set(noises)):
        raise UserError(f"--noise has repeated values: {list(noises)}")
    if len(noises) > 1 and cfg.target_epsilon:
        raise UserError("--target-epsilon picks one noise value; do not combine it with several --noise values")
    return [dataclasses.replace(cfg, noise=sigma).validate() for sigma in noises]


def run(
    cfg: RunConfig,
    noises: Sequence[float],
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    skip_attack: bool = False,
) -> Path:
    """Train (and attack) one run per noise value, or continue ``resume``; write the reports. Returns the directory
    holding the report (the run's own, or the sweep's)."""
    from data.base import get_dataset

    checkpoint = None
    if resume is not None:
        run_dirs, report_dir = [resume], resume
        checkpoint = check_resume(cfg, resume)
        plan_privacy(dataclasses.replace(cfg, target_epsilon=0.0))  # the data is still there and still shards
        configs, chosen = [cfg], [{}]
    else:
        configs = configs_for(cfg, noises)
        if len(configs) == 1:
            report_dir = Path(cfg.out) if cfg.out else RunDir.default(configs[0]).path
            run_dirs = [report_dir]
        else:
            report_dir = Path(cfg.out) if cfg.out else RunDir.default(cfg, label="sweep").path
            run_dirs = [report_dir / f"s{c.noise:g}" for c in configs]
        for run_dir in {report_dir, *run_dirs}:
            RunDir(run_dir).check_free(overwrite)
        if overwrite:
            RunDir(report_dir).clear()  # a sweep's report directory holds its runs: no stale file of an earlier one
        chosen = [plan_privacy(c) for c in configs]  # also fails fast on missing data and builds the cache
        if len(configs) > 1:
            report_dir.mkdir(parents=True, exist_ok=True)  # holds the report; each s<sigma>/ run has its marker
    for run_cfg in configs:
        run_cfg.data_dir = get_dataset(run_cfg.dataset, run_cfg.data_dir).root()  # workers may start elsewhere
    for run_cfg, run_dir, plan in zip(configs, run_dirs, chosen, strict=True):
        train(run_cfg, run_dir, plan, checkpoint)
        if not skip_attack:
            from attack.run import run_attack

            run_attack(run_dir, run_cfg.data_dir or None, epochs=run_cfg.attack_epochs, seed=run_cfg.training_seed)
    if not skip_attack:
        write_reports(report_dir, run_dirs)
    return report_dir


def write_reports(report_dir: Path, run_dirs: Sequence[Path]) -> None:
    """report.md (leakage per epsilon) and report.html: a single run's own page, or for a sweep over --noise the
    study's page with each run a point of the DP-SGD curve."""
    from report.run_page import write_run_page
    from report.study_page import write_sweep_page
    from report.sweep import write_report

    print(f"report: {write_report(report_dir, list(run_dirs))}")
    if len(run_dirs) == 1:
        print(f"report: {write_run_page(run_dirs[0])} (open it in a browser)")
        return
    print(f"report: {write_sweep_page(report_dir, run_dirs)} (open it in a browser)")


def given_settings(namespace: dict[str, Any]) -> dict[str, Any]:
    """The settings among parsed flags (by field name), e.g. for ``resume_config``."""
    names = {f.name for f in settings()}
    return {k: v for k, v in namespace.items() if k in names}
