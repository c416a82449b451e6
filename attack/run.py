"""The curious server's attack on a finished run directory, and the leakage files it writes.

Threat model (EXPERIMENT.md, ``attack.base``): the server holds the final global device model (query access through
the run's cut) and a surrogate set (small1). Each attack is fitted once on that knowledge, then reconstructs every
evaluation set (``attack.sets``): small2's ``unseen`` / ``seen`` images and each client's intercepted activations.
``clients_inference`` / ``clients_train`` are the means of the per-client metrics (each client weighted equally).

Every set is scored for each attack and for the ``baseline`` that outputs small1's mean image (knowing nothing).

The procedure, one function a step: ``load_run`` -> ``build_sets`` -> ``run_attacks`` -> ``score`` ->
``write_outputs``; ``run_attack`` chains them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attack.base import AttackerKnowledge
from attack.figures import pick, save_grid
from attack.metrics import leakage_metrics, mean_image_baseline
from attack.registry import build_attack, parse_attacks
from attack.sets import POINTS, EvalSet, client_sets, small2_sets
from clients.data import EVALUATION, SMALL1, SMALL2, OmniglotSet, load_set
from core import files
from core.config import RunConfig, settings
from core.errors import UserError
from split.cut import Cut, build_cut
from split.model import build_split, device_activations

METRIC_KEYS = ("n", "mse", "psnr", "ssim", "reid_top1", "reid_chance")
SAVE_PER_CLIENT = 100  # reconstructions kept per client set in its .npz (metrics use every image)
FIGURE_IMAGES = 10


@dataclass(frozen=True)
class FinishedRun:
    """What the attack reads from a run directory.

    config: the run's settings; device: the final global device model (eval mode); cut: the run's cut;
    intercepted: the arrays of intercepted.npz (see ``attack.sets.client_sets``).
    """

    config: RunConfig
    device: torch.nn.Module
    cut: Cut
    intercepted: dict[str, np.ndarray]

    def query(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """What the device sends for ``images`` float32 [N,1,105,105] in [0,1]: float32 [N,32,1,1] on the CPU."""
        return device_activations(self.device, images, cut=self.cut)


def load_run(run_dir: Path) -> FinishedRun:
    """The finished run in ``run_dir``; UserError if it is incomplete."""
    for name in ("model.pt", "intercepted.npz", "config.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished run: {name} is missing (train it first with sim.py)")
    saved = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    cfg = load_config(run_dir, saved)
    device, _ = build_split(**cfg.model_options())
    device.load_state_dict(saved["device"])
    with np.load(run_dir / "intercepted.npz") as z:
        intercepted = {k: z[k] for k in z.files}
    # The one place the attacker's cut is built. Identity today: a run that chose another cut would record it in
    # its settings, and the attacker's queries must send through the same cut as the clients did.
    return FinishedRun(cfg, device.eval(), build_cut(), intercepted)


def load_config(run_dir: Path, saved: dict) -> RunConfig:
    """The run's settings from config.json; from model.pt's ``"config"`` (kebab-case) when config.json has none.

    Settings the run's code did not have yet take their defaults; ones this code no longer has are dropped.
    """
    try:
        payload = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{run_dir}/config.json is unreadable ({type(exc).__name__})") from None
    stored = payload.get("settings") if isinstance(payload, dict) else None
    if isinstance(stored, dict):
        names = {f.name for f in settings()}
        return RunConfig(**{k: v for k, v in stored.items() if k in names})
    if "config" in saved:  # runs written before model.pt lost its copy of the settings
        return RunConfig.from_flwr(saved["config"])
    raise UserError(f"{run_dir}: neither config.json nor model.pt holds the run's settings")


def build_sets(run: FinishedRun, small1: OmniglotSet, small2: OmniglotSet, evaluation: OmniglotSet) -> list[EvalSet]:
    """Every evaluation set of the run, in leakage.json's order: unseen, seen, clients' inference, clients' train."""
    return small2_sets(run.query, small1, small2) + client_sets(run.intercepted, evaluation)


def run_attacks(
    names: Sequence[str], knowledge: AttackerKnowledge, sets: list[EvalSet], console: Console
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
    """Fit each attack once and reconstruct every set with it.

    Returns ``(recon, timings)``: ``recon[set name][attack]`` float32 [n,1,105,105] in [0,1], and per attack its
    fit time in seconds (``train_seconds``) with its ``fit_summary()``.
    """
    recon: dict[str, dict[str, np.ndarray]] = {s.name: {} for s in sets}
    timings = {}
    epochs = knowledge.epochs
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for name in names:
            task = progress.add_task(f"attack {name}: epoch", total=epochs)

            def advance(epoch: int, loss: float, task=task, name=name) -> None:
                progress.advance(task)
                if not console.is_terminal and (epoch % 10 == 0 or epoch == epochs):
                    # Redirected output gets no live bar until the end: a line every 10 epochs instead.
                    console.print(f"attack {name}: epoch {epoch}/{epochs}, train MSE {loss:.4f}")

            attack = build_attack(name)
            started = time.perf_counter()
            attack.fit(dataclasses.replace(knowledge, progress=advance))
            timings[name] = {"train_seconds": time.perf_counter() - started, **attack.fit_summary()}
            progress.update(task, completed=epochs)  # an attack that does not train reports no epochs
            for s in sets:
                rec = attack.reconstruct(s.intercepted)
                if rec.shape != s.originals.shape:  # a plug-in's mistake, named here rather than deep in the metrics
                    raise ValueError(f"attack {name!r} returned {rec.shape} for set {s.name} of {s.originals.shape}")
                recon[s.name][name] = rec
    return recon, timings


def score(sets: list[EvalSet], recon: dict[str, dict[str, np.ndarray]], baseline_image: np.ndarray) -> dict:
    """``{set: {method: metrics}}`` for each attack in ``recon`` and the ``baseline`` (``baseline_image``
    float32 [1,105,105] for every image), plus ``clients_<point>``, the equal-weight mean over clients."""
    results: dict[str, dict[str, dict]] = {}
    for s in sets:
        results[s.name] = {name: leakage_metrics(s.originals, rec) for name, rec in recon[s.name].items()}
        results[s.name]["baseline"] = leakage_metrics(s.originals, np.broadcast_to(baseline_image, s.originals.shape))
    for point in POINTS:
        per_client = [results[s.name] for s in sets if s.kind == "client" and s.point == point]
        if per_client:
            results[f"clients_{point}"] = {m: _mean_metrics([r[m] for r in per_client]) for m in per_client[0]}
    return results


def _mean_metrics(rows: list[dict]) -> dict:
    """Equal-weight mean over clients (n is the total)."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS if k != "n"}
    out["n"] = int(sum(r["n"] for r in rows))
    return out


def run_attack(
    run_dir: Path,
    data_dir: str | None = None,
    epochs: int | None = None,
    decoders: Sequence[str] | str | None = None,
    seed: int = 0,
    console: Console | None = None,
    *,
    attacks: Sequence[str] | str | None = None,
) -> dict:
    """Fit each attack on small1 and score every evaluation set; writes the leakage files into ``run_dir``.

    attacks (``decoders`` is the older name of the same thing): registered names (``attack.registry``) as a sequence
    or ``"seed,up"``; default: the run's ``attacks`` setting. The last one is primary: its reconstructions fill the
    figures and the ``reconstructions`` array of each .npz. epochs: default the run's ``attack_epochs``.
    Returns ``{set: {method: metrics}}`` (also written as leakage.json).
    """
    if attacks is not None and decoders is not None and parse_attacks(attacks) != parse_attacks(decoders):
        raise ValueError(f"attacks={attacks!r} and decoders={decoders!r} disagree; give one of them")
    run_dir = Path(run_dir)
    console = console or Console()
    chosen = attacks if attacks is not None else decoders
    names = parse_attacks(chosen) if chosen is not None else None  # unknown names fail before the run is read
    run = load_run(run_dir)
    names = names or parse_attacks(run.config.attacks)
    epochs = epochs if epochs is not None else run.config.attack_epochs
    data_dir = data_dir or run.config.data_dir or None
    small1, small2, evaluation = (load_set(name, data_dir) for name in (SMALL1, SMALL2, EVALUATION))
    surrogate = small1.as_float()
    # Queried once: the device is frozen, so every attack's epochs then cost only the attack.
    knowledge = AttackerKnowledge(run.device, run.query, surrogate, run.query(surrogate), seed, epochs)
    sets = build_sets(run, small1, small2, evaluation)

    recon, timings = run_attacks(names, knowledge, sets, console)
    results = score(sets, recon, mean_image_baseline(surrogate, 1)[0])
    write_outputs(run_dir, results, sets, recon, names[-1], seed)
    meta = {
        "run": str(run_dir),
        "attacks": list(names),
        "decoders": list(names),  # the name attack/report.py read before "attacks"
        "primary_decoder": names[-1],
        "epochs": epochs,
        "surrogate": f"{SMALL1} ({len(small1)} images)",
        "timings": timings,
    }
    files.write_text(run_dir / "attack.json", json.dumps(meta, indent=2) + "\n")
    # Redirected to a file, rich would use 80 columns and cut the numbers.
    console.print(summary_table(results, names), width=None if console.is_terminal else 120)
    return results


def write_outputs(
    run_dir: Path, results: dict, sets: list[EvalSet], recon: dict[str, dict[str, np.ndarray]], primary: str, seed: int
) -> None:
    """leakage.json / .csv, one ``reconstructions_<set>.npz`` per set, and the figures (README, "Output files")."""
    files.write_text(run_dir / "leakage.json", json.dumps(results, indent=2) + "\n")
    lines = [",".join(("set", "method", *METRIC_KEYS))]
    for set_name, methods in results.items():
        for method, m in methods.items():
            lines.append(",".join([set_name, method] + [f"{m[k]:.6g}" if k != "n" else str(m[k]) for k in METRIC_KEYS]))
    files.write_text(run_dir / "leakage.csv", "\n".join(lines) + "\n")
    for s in sets:
        keep = np.arange(len(s.originals))
        if s.kind == "client" and len(keep) > SAVE_PER_CLIENT:
            keep = pick(len(s.originals), SAVE_PER_CLIENT, seed)
        arrays = {"originals": s.originals[keep].astype(np.float16), "kept": keep}
        arrays["reconstructions"] = recon[s.name][primary][keep].astype(np.float16)
        for name, rec in recon[s.name].items():
            arrays[f"reconstructions_{name}"] = rec[keep].astype(np.float16)
        if s.files is not None:
            arrays["files"] = np.asarray([s.files[i] for i in keep])
        files.savez(run_dir / f"reconstructions_{s.name}.npz", **arrays)
        if s.figure is not None:
            shown = pick(len(s.originals), min(FIGURE_IMAGES, len(s.originals)), seed)
            m = results[s.name][primary]
            title = f"{s.name} ({primary} decoder): SSIM {m['ssim']:.3f}, re-id {m['reid_top1']:.3f}"
            save_grid(s.originals[shown], recon[s.name][primary][shown], run_dir / s.figure, title)


def summary_table(results: dict, attacks: Sequence[str]) -> Table:
    """Rows for the small2 sets and the client means (per-client rows are in leakage.csv)."""
    table = Table(title="Reconstruction leakage (lower MSE, higher PSNR / SSIM / re-id = more leakage)")
    for column in ("set", "method", "n", "MSE", "PSNR dB", "SSIM", "re-id top-1", "chance"):
        table.add_column(column, justify="left" if column in ("set", "method") else "right", no_wrap=True)
    for set_name in ("unseen", "seen", "clients_inference", "clients_train"):
        if set_name not in results:
            continue
        for method in (*attacks, "baseline"):
            m = results[set_name][method]
            psnr = "inf" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f}"
            table.add_row(
                set_name,
                method,
                str(m["n"]),
                f"{m['mse']:.4f}",
                psnr,
                f"{m['ssim']:.3f}",
                f"{m['reid_top1']:.3f}",
                f"{m['reid_chance']:.4f}",
            )
        table.add_section()
    return table
