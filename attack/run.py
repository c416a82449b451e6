"""The curious server's attack on a finished run directory, and the leakage report it writes.

Threat model (EXPERIMENT.md): the server holds the final global device model (query access) and a surrogate set
(small1). It trains decoders on (device(x), x) for x in small1, then applies them to activations it intercepted.

Evaluation sets:
- ``unseen``: small2 minus the 1,000 files also in small1 (2,120 images the attacker never saw): the honest number.
- ``seen``: those 1,000 shared files, reported separately.
- ``client_<k>_inference`` / ``client_<k>_train``: client k's private images from its intercepted activations at
  inference (final global model) and during its last training round (its local model, Poisson batches).
- ``clients_inference`` / ``clients_train``: the mean of the per-client metrics (each client weighted equally).

Every set is scored for each decoder and for the ``baseline`` that outputs small1's mean image (knowing nothing).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attack.decoders import DECODERS, build_decoder, reconstruct, train_decoder
from attack.figures import pick, save_grid
from attack.metrics import leakage_metrics, mean_image_baseline
from clients.data import EVALUATION, SMALL1, SMALL2, load_set, shared_files
from core import files
from core.config import RunConfig
from core.errors import UserError
from split.model import build_split, device_activations

METRIC_KEYS = ("n", "mse", "psnr", "ssim", "reid_top1", "reid_chance")
SAVE_PER_CLIENT = 100  # reconstructions kept per client set in its .npz (metrics use every image)
FIGURE_IMAGES = 10


def load_run(run_dir: Path) -> tuple[RunConfig, torch.nn.Module, dict[str, np.ndarray]]:
    """(config, final global device model, intercepted arrays) of a finished run; UserError if incomplete."""
    for name in ("model.pt", "intercepted.npz", "config.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished run: {name} is missing (train it first with sim.py)")
    saved = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    cfg = RunConfig.from_flwr(saved["config"])
    device, _ = build_split(cfg.dropout, cfg.norm_groups)
    device.load_state_dict(saved["device"])
    with np.load(run_dir / "intercepted.npz") as z:
        intercepted = {k: z[k] for k in z.files}
    return cfg, device.eval(), intercepted


def _mean_metrics(rows: list[dict]) -> dict:
    """Equal-weight mean over clients (n is the total)."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS if k != "n"}
    out["n"] = int(sum(r["n"] for r in rows))
    return out


def run_attack(
    run_dir: Path,
    data_dir: str | None = None,
    epochs: int = 100,
    decoders: tuple[str, ...] = tuple(DECODERS),
    seed: int = 0,
    console: Console | None = None,
) -> dict:
    """Train each decoder on small1 and score every evaluation set; writes the leakage files into ``run_dir``.

    Returns ``{set: {method: metrics}}`` (also written as leakage.json). The last decoder in ``decoders`` is the
    one whose reconstructions fill the figures and the ``reconstructions`` array of each .npz.
    """
    console = console or Console()
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise UserError(f"unknown decoder(s) {unknown}; choose from {', '.join(DECODERS)}")
    run_cfg, device, intercepted = load_run(run_dir)
    data_dir = data_dir or run_cfg.data_dir or None
    small1, small2, evaluation = (load_set(name, data_dir) for name in (SMALL1, SMALL2, EVALUATION))
    seen_mask = shared_files(small1, small2)
    surrogate = torch.from_numpy(small1.as_float())
    surrogate_act = device_activations(device, surrogate)  # computed once: 100 epochs then cost only the decoder
    baseline_image = mean_image_baseline(small1.as_float(), 1)[0]

    # (name, activations [n,32,1,1], originals [n,1,105,105], files or None)
    sets: list[tuple[str, torch.Tensor, np.ndarray, list[str] | None]] = []
    for name, mask in (("unseen", ~seen_mask), ("seen", seen_mask)):
        idx = np.flatnonzero(mask)
        originals = small2.as_float(idx)
        sets.append(
            (name, device_activations(device, torch.from_numpy(originals)), originals, [small2.files[i] for i in idx])
        )
    partitions = sorted(set(intercepted["inference_partition"].tolist()))
    for point in ("inference", "train"):
        for pid in partitions:
            rows = intercepted[f"{point}_partition"] == pid
            if rows.any():
                index = intercepted[f"{point}_index"][rows]
                act = torch.from_numpy(intercepted[f"{point}_activations"][rows])
                sets.append((f"client_{pid}_{point}", act, evaluation.as_float(index), None))

    results: dict[str, dict[str, dict]] = {name: {} for name, *_ in sets}
    recon: dict[str, dict[str, np.ndarray]] = {name: {} for name, *_ in sets}
    timings = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for name in decoders:
            torch.manual_seed(seed)
            decoder = build_decoder(name)
            task = progress.add_task(f"decoder {name}: epoch", total=epochs)
            started = time.perf_counter()

            def advance(epoch: int, loss: float, task=task, name=name) -> None:
                progress.advance(task)
                if not console.is_terminal and (epoch % 10 == 0 or epoch == epochs):
                    # Redirected output gets no live bar until the end: a line every 10 epochs instead.
                    console.print(f"decoder {name}: epoch {epoch}/{epochs}, train MSE {loss:.4f}")

            losses = train_decoder(decoder, surrogate_act, surrogate, epochs=epochs, seed=seed, progress=advance)
            timings[name] = {"train_seconds": time.perf_counter() - started, "final_train_mse": losses[-1]}
            for set_name, act, originals, _ in sets:
                rec = reconstruct(decoder, act)
                recon[set_name][name] = rec
                results[set_name][name] = leakage_metrics(originals, rec)
    for set_name, _, originals, _ in sets:
        results[set_name]["baseline"] = leakage_metrics(originals, np.broadcast_to(baseline_image, originals.shape))

    for point in ("inference", "train"):
        per_client = {k: v for k, v in results.items() if k.startswith("client_") and k.endswith(point)}
        if per_client:
            methods = next(iter(per_client.values())).keys()
            results[f"clients_{point}"] = {m: _mean_metrics([v[m] for v in per_client.values()]) for m in methods}

    _write_outputs(run_dir, results, sets, recon, decoders[-1], seed)
    meta = {
        "run": str(run_dir),
        "decoders": list(decoders),
        "primary_decoder": decoders[-1],
        "epochs": epochs,
        "surrogate": f"{SMALL1} ({len(small1)} images)",
        "timings": timings,
    }
    files.write_text(run_dir / "attack.json", json.dumps(meta, indent=2) + "\n")
    # Redirected to a file, rich would use 80 columns and cut the numbers.
    console.print(summary_table(results, decoders), width=None if console.is_terminal else 120)
    return results


def _write_outputs(run_dir: Path, results: dict, sets: list, recon: dict, primary: str, seed: int) -> None:
    files.write_text(run_dir / "leakage.json", json.dumps(results, indent=2) + "\n")
    lines = [",".join(("set", "method", *METRIC_KEYS))]
    for set_name, methods in results.items():
        for method, m in methods.items():
            lines.append(",".join([set_name, method] + [f"{m[k]:.6g}" if k != "n" else str(m[k]) for k in METRIC_KEYS]))
    files.write_text(run_dir / "leakage.csv", "\n".join(lines) + "\n")
    for set_name, _, originals, set_files in sets:
        keep = np.arange(len(originals))
        if set_name.startswith("client_") and len(keep) > SAVE_PER_CLIENT:
            keep = pick(len(originals), SAVE_PER_CLIENT, seed)
        arrays = {"originals": originals[keep].astype(np.float16), "kept": keep}
        arrays["reconstructions"] = recon[set_name][primary][keep].astype(np.float16)
        for name, rec in recon[set_name].items():
            arrays[f"reconstructions_{name}"] = rec[keep].astype(np.float16)
        if set_files is not None:
            arrays["files"] = np.asarray([set_files[i] for i in keep])
        files.savez(run_dir / f"reconstructions_{set_name}.npz", **arrays)
        if set_name == "unseen" or set_name.endswith("_inference"):
            shown = pick(len(originals), min(FIGURE_IMAGES, len(originals)), seed)
            figure = "reconstructions_unseen.png" if set_name == "unseen" else f"reconstructions_{set_name[:-10]}.png"
            m = results[set_name][primary]
            title = f"{set_name} ({primary} decoder): SSIM {m['ssim']:.3f}, re-id {m['reid_top1']:.3f}"
            save_grid(originals[shown], recon[set_name][primary][shown], run_dir / figure, title)


def summary_table(results: dict, decoders: tuple[str, ...]) -> Table:
    """Rows for the small2 sets and the client means (per-client rows are in leakage.csv)."""
    table = Table(title="Reconstruction leakage (lower MSE, higher PSNR / SSIM / re-id = more leakage)")
    for column in ("set", "method", "n", "MSE", "PSNR dB", "SSIM", "re-id top-1", "chance"):
        table.add_column(column, justify="left" if column in ("set", "method") else "right", no_wrap=True)
    for set_name in ("unseen", "seen", "clients_inference", "clients_train"):
        if set_name not in results:
            continue
        for method in (*decoders, "baseline"):
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
