"""The curious server's attack on a finished run directory, and the leakage files it writes.

Threat model (``attack.base``): the server holds the final global device model (query access through the run's cut),
the head it hosts, each client's own device model from its last round, the labels training sends, and public images
of its own (``attack.surrogate``). Each attack is fitted once on that knowledge, then reconstructs every evaluation
set (``attack.sets``): small2's ``unseen`` / ``seen`` images and each client's intercepted activations. A refining
attack (the white-box optimisation) starts from the decoder with the lowest held-out MSE on the surrogate.

Every set is also scored for the ``baseline`` that outputs the surrogate's mean image (knowing nothing), and gets a
``best`` row: the attack with the most re-identification there (the worst case for the client, ``best_attack``).
``clients_inference`` / ``clients_train`` weight each client equally.

The procedure, one function a step: ``load_run`` -> ``build_sets`` -> ``fit_attacks`` -> ``attack_sets`` (reconstruct,
score and write one set at a time, so memory holds one set) -> ``summarize_sets`` -> ``write_outputs``;
``run_attack`` chains them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attack.base import Attack, AttackerKnowledge
from attack.ceiling import ceiling
from attack.figures import pick, save_grid
from attack.metrics import INTERVAL_KEYS, METRIC_KEYS, PerImage, mean_image_baseline, per_image_many, summarize
from attack.registry import build_attack, parse_attacks
from attack.sets import POINTS, EvalSet, client_sets, small2_sets
from attack.surrogate import surrogate_images
from core import files
from core.config import RunConfig
from core.errors import UserError
from core.rundir import INCOMPLETE, RunDir, local_devices
from data.base import ImageSet, geometry, get_dataset
from split.cut import Cut, cut_for
from split.decoders import IMAGE_SIDE
from split.hijack import HijackModels
from split.model import batched_eval, build_split, device_activations
from split.server import build_server

CSV_KEYS = (*METRIC_KEYS, *(f"{k}_{e}" for k in INTERVAL_KEYS for e in ("lo", "hi")))
SAVE_PER_SET = 100  # reconstructions kept per set in its .npz (the metrics use every scored row)
FIGURE_IMAGES = 10


@dataclass(frozen=True)
class FinishedRun:
    """What the attack reads from a run directory.

    config: the run's settings; device / head: the final global device model and the server's head (eval mode);
    cut: the run's cut; intercepted: the arrays of intercepted.npz (see ``attack.sets.client_sets``);
    client_devices: each client's own device model from its last training round.
    hijack: the hijacking server's pilot, decoder and critic (``--server hijack``), else None.
    """

    config: RunConfig
    device: torch.nn.Module
    head: torch.nn.Module
    cut: Cut
    intercepted: dict[str, np.ndarray]
    client_devices: dict[int, torch.nn.Module]
    hijack: HijackModels | None = None

    def query(self, images: np.ndarray | torch.Tensor, device: torch.nn.Module | None = None) -> torch.Tensor:
        """What ``device`` (default the final global one) sends for ``images`` float32 [N,1,105,105] in [0,1]:
        float32 [N,C,H,W] on the CPU."""
        return device_activations(device if device is not None else self.device, images, cut=self.cut)

    def classify(self, activations: torch.Tensor) -> np.ndarray:
        """The label the server's head predicts for each activation: int64 [N]."""
        out = self.head[-1].out_features
        return batched_eval(self.head, activations, 1024, (out,)).argmax(dim=1).numpy()


def load_run(run_dir: Path) -> FinishedRun:
    """The finished run in ``run_dir`` (read through ``RunDir``); UserError if it is not a trained run."""
    run = RunDir(run_dir)
    cfg = run.read_config()  # one clear line for a missing config.json or a run of another version
    if run.state() == INCOMPLETE:
        raise UserError(f"{run_dir} has not finished training; {run.resume_hint()}")
    for path in (run.model, run.intercepted):
        if not path.is_file():
            raise UserError(f"{run_dir} is not a finished run: {path.name} is missing (train it first with sim.py)")
    if geometry(cfg.dataset)["image_side"] != IMAGE_SIDE:
        raise UserError(f"the attacks draw {IMAGE_SIDE}-pixel images; dataset {cfg.dataset!r} has another side")
    saved = torch.load(run.model, map_location="cpu", weights_only=False)
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    device.load_state_dict(saved["device"])
    head.load_state_dict(saved["head"])
    hijack = None
    if "server" in saved:  # --server hijack: the server's own models, trained beside the clients
        hijack = HijackModels.for_run(cfg, IMAGE_SIDE)
        hijack.load_state_dict(saved["server"])
        hijack.eval()
    intercepted = run.load_intercepted()
    client_devices = {}
    for pid, state in local_devices(intercepted).items():
        own, _ = build_split(**cfg.model_options(), **geometry(cfg.dataset))
        own.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        client_devices[pid] = own.eval()
    # The one place the attacker's cut is built: from the run's settings, so its own queries send through the same
    # cut (the same defense) as the clients did.
    cut = cut_for(cfg)
    return FinishedRun(cfg, device.eval(), head.eval(), cut, intercepted, client_devices, hijack)


def hijack_ceiling(models: HijackModels, images: np.ndarray, seed: int) -> dict:
    """The hijack's own ceiling: ``summarize`` of its decoder on its pilot's activations of ``images`` float32
    [N,1,105,105] (every row re-identified among all N), what a device pulled exactly onto the pilot would leak."""
    rec = models.reconstruct(device_activations(models.pilot, images))
    return summarize(per_image_many(images, [rec])[0], seed)


def build_sets(
    run: FinishedRun, small1: ImageSet, small2: ImageSet, evaluation: ImageSet, seed: int = 0
) -> list[EvalSet]:
    """Every evaluation set of the run, in leakage.json's order: unseen, seen, clients' inference, clients' train."""
    return small2_sets(run.query, small1, small2) + client_sets(
        run.intercepted, evaluation, run.client_devices, seed=seed
    )


def fit_attacks(
    names: Sequence[str], knowledge: AttackerKnowledge, console: Console
) -> tuple[dict[str, Attack], dict[str, dict[str, float]]]:
    """Fit each attack once; returns the fitted attacks by name and, per attack, its fit time in seconds
    (``train_seconds``) with its ``fit_summary()``."""
    fitted, timings = {}, {}
    epochs = knowledge.epochs
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for name in names:
            task = progress.add_task(f"attack {name}: epoch", total=epochs)

            def advance(epoch: int, loss: float, task=task, name=name) -> None:
                progress.advance(task)
                if not console.is_terminal and epoch % 5 == 0:
                    # Redirected output gets no live bar until the end: a line every 5 epochs instead.
                    console.print(f"attack {name}: epoch {epoch}, train loss {loss:.4f}")

            attack = build_attack(name)
            started = time.perf_counter()
            attack.fit(dataclasses.replace(knowledge, progress=advance))
            timings[name] = {"train_seconds": time.perf_counter() - started}
            progress.update(task, completed=epochs)  # early stopping and attacks that do not train end here
            fitted[name] = attack
    return fitted, timings


def start_attack(fitted: dict[str, Attack]) -> str:
    """The attack whose output a refining attack starts from: the lowest held-out MSE, else the first decoder."""
    candidates = [name for name, attack in fitted.items() if not attack.refines]
    measured = [name for name in candidates if fitted[name].holdout_mse() is not None]
    return min(measured, key=lambda name: fitted[name].holdout_mse()) if measured else candidates[0]


def attack_sets(
    fitted: dict[str, Attack],
    sets: list[EvalSet],
    baseline_image: np.ndarray,
    run_dir: Path,
    seed: int,
    unseen_cap: int | None = None,
) -> tuple[dict[str, dict[str, PerImage]], dict[str, dict[str, dict]], dict[str, float]]:
    """Reconstruct, score and write one set at a time. Returns ``{set: {method: PerImage}}`` with the ``baseline``
    (the client means are built from them), ``{set: {method: summarize(...)}}``, and the seconds spent per attack
    reconstructing, in ``scoring`` (per-image values and their intervals) and in ``writing``. Writes each set's .npz
    and figure (``write_set``). unseen_cap: replaces a capped attack's cap on the unseen set (``--whitebox-images``)."""
    scores: dict[str, dict[str, PerImage]] = {}
    numbers: dict[str, dict[str, dict]] = {}
    seconds = dict.fromkeys([*fitted, "scoring", "writing"], 0.0)
    first, start_from = next(iter(fitted)), start_attack(fitted)
    for attack in fitted.values():
        if attack.refines:
            attack.starts_from(fitted[start_from])
    for s in sets:
        recon: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # method -> (rows, reconstructions)
        for name, attack in sorted(fitted.items(), key=lambda item: item[1].refines):  # starts before refiners
            rows = s.scored
            cap = attack.caps.get(s.kind)
            if s.kind == "unseen" and cap is not None and unseen_cap is not None:
                cap = unseen_cap
            if cap == 0:
                continue
            if cap is not None and len(rows) > cap:
                rows = rows[pick(len(rows), cap, seed)]
            began = time.perf_counter()
            if attack.refines:
                base_rows, base = recon[start_from]
                rec = attack.reconstruct(s.intercepted(rows), start=base[np.searchsorted(base_rows, rows)])
            else:
                rec = attack.reconstruct(s.intercepted(rows))
            seconds[name] += time.perf_counter() - began
            if rec.shape != (len(rows), 1, *s.images.shape[1:]):  # a plug-in's mistake, named here
                raise ValueError(f"attack {name!r} returned {rec.shape} for {len(rows)} rows of set {s.name}")
            recon[name] = (rows, rec)
        rows = s.scored
        recon["baseline"] = (rows, np.broadcast_to(baseline_image, (len(rows), *baseline_image.shape)))
        began = time.perf_counter()
        pool = s.originals
        by_rows: dict[bytes, list[str]] = {}  # methods that reconstructed the same rows share SSIM's original half
        for name, (r, _) in recon.items():
            by_rows.setdefault(r.tobytes(), []).append(name)
        scored: dict[str, PerImage] = {}
        for names in by_rows.values():
            r = recon[names[0]][0]
            values = per_image_many(pool[s.own[r]], [recon[n][1] for n in names], pool, s.own[r])
            scored.update(zip(names, values, strict=True))
        scores[s.name] = {name: scored[name] for name in (*fitted, "baseline") if name in scored}
        numbers[s.name] = {name: summarize(values, seed) for name, values in scores[s.name].items()}
        seconds["scoring"] += time.perf_counter() - began
        began = time.perf_counter()
        write_set(run_dir, s, recon, first, numbers[s.name], seed)
        seconds["writing"] += time.perf_counter() - began
    return scores, numbers, seconds


def best_attack(numbers: dict[str, dict]) -> str:
    """The worst case for the client among a set's attacks (``{method: summarize(...)}``): the highest lower end of
    the top-1 re-identification interval, then the highest point value, then SSIM. The lower end, so that an attack
    scored on a handful of images (a lucky hit in 4) does not outrank one measured on a hundred."""
    attacks = [name for name in numbers if name not in ("baseline", "best")]
    return max(attacks, key=lambda m: (numbers[m]["reid_top1_lo"], numbers[m]["reid_top1"], numbers[m]["ssim"]))


def summarize_sets(
    scores: dict[str, dict[str, PerImage]], numbers: dict[str, dict[str, dict]], sets: list[EvalSet], seed: int
) -> dict:
    """``{set: {method: numbers}}``: each set's ``numbers`` (from ``attack_sets``), plus ``clients_<point>``, the
    equal-weight mean over clients of ``scores``, and on every set a ``best`` row (its numbers plus ``attack``,
    ``best_attack``; for a client mean, the attack best on that mean)."""
    results = {name: dict(by_method) for name, by_method in numbers.items()}
    for point in POINTS:
        names = [s.name for s in sets if s.kind == "client" and s.point == point]
        if names:
            methods = scores[names[0]]
            results[f"clients_{point}"] = {m: summarize([scores[n][m] for n in names], seed) for m in methods}
    for by_method in results.values():
        best = best_attack(by_method)
        by_method["best"] = {**by_method[best], "attack": best}
    return results


def run_attack(
    run_dir: Path,
    data_dir: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    console: Console | None = None,
    *,
    attacks: Sequence[str] | str | None = None,
    surrogate: str | None = None,
    whitebox_images: int | None = None,
) -> dict:
    """Fit each attack on the surrogate and score every evaluation set; writes the leakage files into ``run_dir``.

    attacks: registered names (``attack.registry``) as a sequence
    or ``"seed,cond"``; default: the run's ``attacks`` setting. The first one fills the figures beside the best.
    epochs: the most decoder epochs, default the run's ``attack_epochs``. surrogate: "small1" or "public", default
    the run's. whitebox_images: unseen images a white-box attack reconstructs, default the run's.
    Returns ``{set: {method: numbers}}`` (also written as leakage.json).
    """
    run_dir = Path(run_dir)
    console = console or Console()
    names = parse_attacks(attacks) if attacks is not None else None  # unknown names fail before the run is read
    run = load_run(run_dir)
    names = names or parse_attacks(run.config.attacks)
    # A server behaviour's own attacks (--server hijack: its decoder) join the run's, after them.
    names = (*names, *(a for a in build_server(run.config.server).attacks if a not in names))
    epochs = epochs if epochs is not None else run.config.attack_epochs
    surrogate = surrogate or run.config.surrogate
    data_dir = data_dir or run.config.data_dir or None
    began = time.perf_counter()
    torch.manual_seed(seed)  # a noisy cut draws its noise from torch's generator: the same queries every run
    source = get_dataset(run.config.dataset, data_dir)
    small1, small2, evaluation = (source.load(role) for role in ("surrogate", "unseen", "private"))
    public, described = surrogate_images(surrogate, run.config.dataset, data_dir)
    public_activations = run.query(public)  # once: the device is frozen, so every attack's epochs reuse it
    n_classes = run.head[-1].out_features
    knowledge = AttackerKnowledge(
        run.device,
        run.query,
        run.classify,
        n_classes,
        public,
        public_activations,
        seed,
        epochs,
        cut=run.cut,
        hijack=run.hijack,
    )
    sets = build_sets(run, small1, small2, evaluation, seed)
    unseen = sets[0]
    # Reference points for any decoder (attack.ceiling): the candidates' activations as an attacker holding the
    # candidate images would compute them (a fresh query when the cut is not deterministic).
    position = {f: i for i, f in enumerate(small2.files)}
    characters = small2.character[[position[f] for f in unseen.files]]
    unseen_images = unseen.originals
    candidates = unseen.activations if run.cut.deterministic else run.query(unseen_images)
    limits = ceiling(unseen.activations, candidates, unseen_images, characters)
    if run.hijack is not None:  # what a perfect hijack would give: the pilot autoencoder on the unseen images
        limits["hijack_pilot"] = hijack_ceiling(run.hijack, unseen_images, seed)
    query_seconds = time.perf_counter() - began

    fitted, timings = fit_attacks(names, knowledge, console)
    began = time.perf_counter()
    baseline = mean_image_baseline(public, 1)[0]
    cap = whitebox_images or run.config.whitebox_images
    scores, numbers, seconds = attack_sets(fitted, sets, baseline, run_dir, seed, cap)
    attack_seconds = time.perf_counter() - began
    began = time.perf_counter()
    results = summarize_sets(scores, numbers, sets, seed)
    write_outputs(run_dir, results)
    summarize_seconds = time.perf_counter() - began
    for name, attack in fitted.items():
        timings[name] |= {"reconstruct_seconds": seconds[name], **attack.fit_summary()}
    meta = {
        "run": str(run_dir),
        "attacks": list(names),
        "first_attack": names[0],
        "refines_from": start_attack(fitted),
        "epochs": epochs,
        "surrogate": f"{surrogate}: {described}, {len(public)} images",
        "timings": timings,
        "ceiling_unseen": limits,
        "seconds": {
            "load_and_query": query_seconds,
            "fit": sum(t["train_seconds"] for t in timings.values()),
            "reconstruct": sum(seconds[name] for name in fitted),
            # per-image metrics and each set's intervals, then the client means and leakage.json / .csv
            "scoring": seconds["scoring"] + summarize_seconds,
            "writing_sets": seconds["writing"],
            "sets_total": attack_seconds,
        },
    }
    files.write_text(RunDir(run_dir).attack, json.dumps(meta, indent=2) + "\n")
    print_summary(console, results, names)
    return results


def write_set(
    run_dir: Path, s: EvalSet, recon: dict[str, tuple[np.ndarray, np.ndarray]], first: str, numbers: dict, seed: int
) -> None:
    """One set's ``reconstructions_<set>.npz`` (up to ``SAVE_PER_SET`` scored rows: originals, each method's
    reconstruction where it made one, uint8 0..255) and its figure (originals, the first attack, the best one, each
    with its re-id and SSIM and their 95 % intervals in the title). numbers: ``{method: summarize(...)}``."""
    best = best_attack(numbers)
    rows = s.scored
    keep = rows[pick(len(rows), SAVE_PER_SET, seed)] if len(rows) > SAVE_PER_SET else rows
    arrays = {"rows": keep, "originals": _uint8(s.originals_of(keep))}
    for name, (r, rec) in recon.items():
        if name == "baseline":
            continue
        where = np.searchsorted(r, keep)
        found = (where < len(r)) & (r[np.minimum(where, len(r) - 1)] == keep)
        arrays[f"rows_{name}"] = keep[found]
        arrays[f"reconstructions_{name}"] = _uint8(rec[where[found]])
    if s.files is not None:
        arrays["files"] = np.asarray([s.files[i] for i in keep])
    files.savez(run_dir / f"reconstructions_{s.name}.npz", **arrays)
    if s.figure is None:
        return
    drawn = [first, best] if first in recon and first != best else [best]
    common = recon[best][0]  # the figure shows rows every drawn method reconstructed
    for name in drawn:
        common = np.intersect1d(common, recon[name][0])
    shown = common[pick(len(common), FIGURE_IMAGES, seed)]
    panels = {
        (f"{name} (best)" if name == best else name): recon[name][1][np.searchsorted(recon[name][0], shown)]
        for name in drawn
    }
    stats = "; ".join(
        f"{name}{' (best)' if name == best else ''} re-id {_interval(numbers[name], 'reid_top1', 3)}, "
        f"SSIM {_interval(numbers[name], 'ssim', 3)}"
        for name in drawn
    )
    baseline = f"mean image SSIM {numbers['baseline']['ssim']:.3f}"
    save_grid(s.originals_of(shown), panels, run_dir / s.figure, f"{s.name}: {stats}; {baseline}")


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def write_outputs(run_dir: Path, results: dict) -> None:
    """leakage.json and leakage.csv (docs/usage.md, "Output files")."""
    files.write_text(run_dir / "leakage.json", json.dumps(results, indent=2) + "\n")
    lines = [",".join(("set", "method", "attack", *CSV_KEYS))]
    for set_name, methods in results.items():
        for method, m in methods.items():
            cells = [f"{m[k]:.6g}" if k not in ("n", "pool") else str(m[k]) for k in CSV_KEYS]
            lines.append(",".join([set_name, method, m.get("attack", method), *cells]))
    files.write_text(run_dir / "leakage.csv", "\n".join(lines) + "\n")


def _interval(m: dict, key: str, digits: int) -> str:
    return f"{m[key]:.{digits}f} [{m[key + '_lo']:.{digits}f}, {m[key + '_hi']:.{digits}f}]"


def summary_table(results: dict, attacks: Sequence[str]) -> Table:
    """Rows for the small2 sets and the client means, each attack, the best and the baseline (per-client rows are
    in leakage.csv); re-id and SSIM with their 95 % intervals."""
    table = Table(title="Reconstruction leakage (lower MSE, higher SSIM / re-id = more leakage; [95 % interval])")
    for column in ("set", "method", "n", "MSE", "SSIM", "re-id top-1", "re-id top-5", "chance"):
        table.add_column(column, justify="left" if column in ("set", "method") else "right", no_wrap=True)
    for set_name in ("unseen", "seen", "clients_inference", "clients_train"):
        if set_name not in results:
            continue
        for method in (*attacks, "best", "baseline"):
            if method not in results[set_name]:  # an attack that skips this kind of set
                continue
            m = results[set_name][method]
            label = f"best: {m['attack']}" if method == "best" else method
            table.add_row(
                set_name,
                label,
                str(m["n"]),
                f"{m['mse']:.4f}",
                _interval(m, "ssim", 3),
                _interval(m, "reid_top1", 3),
                _interval(m, "reid_top5", 3),
                f"{m['reid_chance']:.4f}",
            )
        table.add_section()
    return table


def print_summary(console: Console, results: dict, attacks: Sequence[str]) -> None:
    """The summary table at its natural width, whatever the terminal, file or CI log (never cut or wrapped): drawn
    on a wide off-screen console, then written as plain lines when the target is narrower (or not a terminal)."""
    table = summary_table(results, attacks)
    wide = Console(width=1_000, file=io.StringIO(), record=True, color_system=None)
    wide.print(table)
    lines = [line.rstrip() for line in wide.export_text().splitlines()]
    if console.is_terminal and console.width >= max(map(len, lines)):
        console.print(table)
    else:
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True, crop=False)
