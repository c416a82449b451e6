"""Performance benchmarks that print ratios: ``python benchmarks/run.py [--quick] [--json FILE]``.

Every target is a ratio of two things measured side by side in this one run, so it holds on any machine:

- ``dp_step_ratio``: DP-SGD split step / plain split step (device convnet + head, batch 32), timed interleaved;
  ``dp_step_ratio_cut<N>`` the same with the model split after block N (``--cut``; the plain ratio is cut 4's).
- ``sim_overhead_ratio``: Flower simulation wall time / the same client work in a plain Python loop.
- ``gemm_fraction``: DP training images/s / the images/s this machine's fp32 matrix multiply would allow for the
  model's training FLOPs per image (counted from the architecture).
- ``attack_seconds``, ``attack_scoring_fraction``, ``attack_peak_rss_gb``: the whole attack of a finished run
  (``--attack-run``, default runs/s0: the default training at sigma 0), as ``python sim.py attack`` runs it.
- ``per_client_round_overhead_s``: (simulation - plain loop) / (clients x rounds), 100 clients with tiny shards.
- ``main_seconds``, ``main_peak_rss_gb``: the main command, ``python sim.py --clients 20 --noise 0.5``, end to end
  (training and attack) in a child process: its wall time and the largest peak RSS of any one process it started
  (the driver, a Ray worker, ...; ``VmHWM``); ``main_tree_peak_rss_gb`` (a lever) is the largest sum of the
  process tree's RSS, sampled every 0.5 s.
- ``study_seconds`` (only with ``--only study``: about 80 minutes): ``python sim.py study --seeds 1``, one training
  run of each cell of the default grid, end to end into a temporary directory; ``study_peak_rss_gb`` beside it. (The
  default, 3 seeds, is 3 such passes; its time is measured from a study directory's run times, docs/performance.md.)

The levers behind each figure are measured too and reported under ``levers``. Benchmarks are not tests: nothing here
asserts a time. Needs the Omniglot data (``--data-dir`` or ``$OMNIGLOT_ROOT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from opacus.grad_sample import wrap_model
from opacus.optimizers import DPOptimizer
from rich.console import Console
from rich.table import Table
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from clients import grad_samplers  # noqa: E402
from clients.client_app import client_split, local_round_seed  # noqa: E402
from clients.grad_samplers import SAMPLERS  # noqa: E402
from clients.train import LocalResult, evaluate, split_step, train_local  # noqa: E402
from core import files  # noqa: E402
from core.config import RunConfig  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.rundir import RunDir  # noqa: E402
from core.runtime import keep_freed_memory  # noqa: E402
from data.base import geometry  # noqa: E402
from data.omniglot import EVALUATION, load_set  # noqa: E402
from split.head import fit_head, head_fit_sample, head_fit_seed  # noqa: E402
from split.model import build_split, device_activations, joined_state, load_joined  # noqa: E402

TARGETS = {  # metric -> (comparison, target)
    "dp_step_ratio": ("<=", 1.25),
    "dp_step_ratio_cut1": ("<=", 1.25),
    "dp_step_ratio_cut2": ("<=", 1.25),
    "dp_step_ratio_cut3": ("<=", 1.25),
    "sim_overhead_ratio": ("<=", 1.10),
    "gemm_fraction": (">=", 0.50),
    "attack_seconds": ("<=", 180.0),
    "attack_scoring_fraction": ("<=", 0.10),
    "attack_peak_rss_gb": ("<=", 3.0),
    "per_client_round_overhead_s": ("<=", 0.2),
    "main_seconds": ("<=", 600.0),
    "main_peak_rss_gb": ("<=", 3.0),
    "study_seconds": ("<=", 5400.0),
}
BATCH = 32
DEFAULT_SAMPLER = RunConfig().grad_sampler  # what sim.py trains with: the headline figures use it


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each function, calling them round-robin so that load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _real_batch(n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """n evaluation-set images spread evenly over its alphabets, and their alphabet labels."""
    data = load_set(EVALUATION)
    idx = np.linspace(0, len(data) - 1, n).astype(np.int64)
    return torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx])


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronize when timing on the GPU (kernels run asynchronously)."""
    if device == "cpu":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())


def _step_fn(
    kind: str, images: torch.Tensor, labels: torch.Tensor, on: str = "cpu", cut: int = 4
) -> Callable[[], object]:
    """One split step of ``kind``: plain, or DP-SGD with a per-sample-gradient method (fused, fast, opacus,
    functorch), the model split after block ``cut``."""
    torch.manual_seed(0)
    device, head = (m.to(on) for m in build_split(cut=cut, **geometry("omniglot")))
    images, labels = images.to(on), labels.to(on)
    head_opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    device_opt = torch.optim.Adam(device.parameters(), lr=1e-3)
    model: nn.Module = device
    if kind != "plain":
        model = wrap_model(device, grad_sample_mode="functorch" if kind == "functorch" else "hooks")
        if kind in SAMPLERS:
            model = grad_samplers.install(model, kind)
        device_opt = DPOptimizer(device_opt, noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=BATCH)
    return _synced(lambda: split_step(model, head, device_opt, head_opt, images, labels), on)


def _steps_ms(
    kinds: tuple[str, ...], images: torch.Tensor, labels: torch.Tensor, repeats: int, on: str = "cpu", cut: int = 4
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return interleaved_ms({k: _step_fn(k, images, labels, on, cut) for k in kinds}, repeats)


def bench_dp_step(repeats: int) -> dict:
    images, labels = _real_batch()
    kinds = ("plain", *SAMPLERS, "functorch")
    # Lever: glibc's default allocator settings, measured first while this process's heap is still small.
    keep_freed_memory(False)
    glibc = _steps_ms(("plain", DEFAULT_SAMPLER), images, labels, max(repeats // 3, 5))
    keep_freed_memory(True)
    levers = {f"step_ms_glibc_default_{k}": ms for k, ms in glibc.items()}
    threads = {}
    for n in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(n)
        threads[n] = _steps_ms(kinds, images, labels, repeats)
    torch.set_num_threads(max(threads))
    main = threads[max(threads)]
    levers |= {f"step_ms_threads{n}_{k}": ms for n, by_kind in threads.items() for k, ms in by_kind.items()}
    levers |= {f"dp_step_ratio_{k}": main[k] / main["plain"] for k in kinds[1:]}
    if torch.cuda.is_available():
        gpu = _steps_ms(kinds, images, labels, repeats, "cuda")
        levers |= {f"step_ms_cuda_{k}": ms for k, ms in gpu.items()}
        levers |= {f"dp_step_ratio_cuda_{k}": gpu[k] / gpu["plain"] for k in kinds[1:]}
    results = {"dp_step_ratio": main[DEFAULT_SAMPLER] / main["plain"], "levers": levers}
    for cut in (1, 2, 3):  # the default sampler against the plain step at the other cuts
        by_kind = _steps_ms(("plain", DEFAULT_SAMPLER), images, labels, repeats, cut=cut)
        results[f"dp_step_ratio_cut{cut}"] = by_kind[DEFAULT_SAMPLER] / by_kind["plain"]
        levers |= {f"step_ms_cut{cut}_{k}": ms for k, ms in by_kind.items()}
    return results


def training_flops_per_image(device: nn.Module, head: nn.Module) -> int:
    """FLOPs of one training image: 2 per multiply-add, for the forward pass, the weight gradient and (except the
    first layer, whose input is the image) the input gradient, of every Conv2d and Linear. Elementwise ops excluded.
    """
    macs: list[int] = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs.append(output[0].numel() * k)
        elif isinstance(module, nn.Linear):
            macs.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in (*device.modules(), *head.modules())]
    with torch.no_grad():
        head(device(torch.zeros(1, 1, 105, 105)))
    for h in hooks:
        h.remove()
    return sum(2 * m * (2 if i == 0 else 3) for i, m in enumerate(macs))


def matmul_flops_per_s(side: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(side, side), torch.randn(side, side)
    ms = interleaved_ms({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * side**3 / (ms / 1e3)


def bench_gemm_fraction(n_images: int) -> dict:
    """DP training throughput of ``train_local`` (data loading, Poisson batches, clipping, noise included)."""
    images, labels = _real_batch(n_images)
    flops = training_flops_per_image(*build_split(**geometry("omniglot")))
    peak = matmul_flops_per_s()
    out = {"training_mflop_per_image": flops / 1e6, "matmul_gflop_per_s": peak / 1e9}
    for sampler in SAMPLERS:
        cfg = RunConfig(noise=0.5, grad_sampler=sampler)
        # Seed 1 is a warm-up round, untimed: the steady state of a simulation worker's later rounds (allocator
        # heap grown, oneDNN kernels created for the Poisson batch sizes seen).
        for seed in (1, 0):
            torch.manual_seed(0)
            device, head = build_split(**geometry("omniglot"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                result = train_local(device, head, images, labels, cfg, [], seed=seed)
            seconds = time.perf_counter() - started
        out[f"dp_images_per_s_{sampler}"] = result.steps * BATCH / seconds  # expected images per Poisson batch
    for sampler in SAMPLERS:
        out[f"gemm_fraction_{sampler}"] = out[f"dp_images_per_s_{sampler}"] / (peak / flops)
    return {"gemm_fraction": out[f"gemm_fraction_{DEFAULT_SAMPLER}"], "levers": out}


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            children.setdefault(int(text.rsplit(") ", 1)[1].split()[1]), []).append(int(text.split(" ", 1)[0]))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while being read
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _command(pid: int) -> str:
    """The first 80 characters of a process's command line (which process holds the peak)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80].strip()
    except OSError:
        return "?"


def bench_command(argv: list[str], name: str) -> dict:
    """``sim.py`` with ``argv`` (the main command, or ``study``) end to end in a child process, into a temporary
    ``--out``: wall time, the largest per-process peak RSS and the largest sampled RSS of the whole process tree,
    as ``<name>_seconds``, ``<name>_peak_rss_gb`` and levers."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "sim.py", *argv, "--out", str(Path(tmp) / "run")]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak_process, peak_name, peak_tree = 0, "", 0
        while proc.poll() is None:
            pids = _tree(proc.pid)
            peak_tree = max(peak_tree, sum(_status_kb(pid, "VmRSS") for pid in pids))
            for pid in pids:
                hwm = _status_kb(pid, "VmHWM")
                if hwm > peak_process:
                    peak_process, peak_name = hwm, _command(pid)
            time.sleep(0.5)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise UserError(f"sim.py {' '.join(argv)} failed: {proc.stderr.read().strip().splitlines()[-1:]}")
    return {
        f"{name}_seconds": wall,
        f"{name}_peak_rss_gb": peak_process / 2**20,
        "levers": {
            f"{name}_tree_peak_rss_gb": peak_tree / 2**20,
            f"{name}_peak_rss_process": peak_name,
            f"{name}_command": " ".join(["sim.py", *argv]),
        },
    }


def bench_study(quick: bool) -> dict:
    """``python sim.py study --seeds 1`` (the default grid, one seed) end to end; ``quick``: a two-cell grid of 2
    rounds on 64 images a client, a smoke test of the measurement only."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["study", "--seeds", "1"]
        if quick:
            grid = Path(tmp) / "grid.toml"
            base = "[base]\nrounds = 2\nlimit-per-client = 64\nattack-epochs = 3\n"
            cells = '[[cells]]\nname = "plain"\nfamily = "dp"\nnoise = 0.0\n'
            cells += '[[cells]]\nname = "eps8"\nfamily = "dp"\ntarget-epsilon = 8.0\n'
            grid.write_text(base + cells)
            argv += ["--grid", str(grid)]
        result = bench_command(argv, "study")
    result["levers"]["study_peak_rss_gb"] = result.pop("study_peak_rss_gb")  # no target: reported beside the time
    return result


def bench_attack(run_dir: Path | None, epochs: int | None) -> dict:
    """The whole attack of a finished run (every attack, every set, scoring, writing): ``python sim.py attack`` on a
    copy of ``run_dir`` in a child process. Reports its wall time, the share of it spent scoring (attack.json's
    ``seconds``) and the child's peak RSS. ``epochs`` caps decoder epochs (``--quick``); None: the run's own."""
    if run_dir is None or not (run_dir / "intercepted.npz").is_file():
        raise UserError(
            f"the attack benchmark needs a finished run (got {run_dir}); train one with "
            "python sim.py --clients 20 --noise 0 --skip-attack --out runs/s0, then pass --attack-run runs/s0"
        )
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        copy.mkdir()
        for name in ("model.pt", "intercepted.npz", "config.json", "metrics.csv", "ledger.csv"):
            shutil.copy2(run_dir / name, copy / name)
        defaults = RunConfig()  # today's default attack, whatever the run was attacked with before
        cmd = [sys.executable, "sim.py", "attack", str(copy), "--attacks", defaults.attacks]
        cmd += ["--surrogate", defaults.surrogate, "--whitebox-images", str(defaults.whitebox_images)]
        cmd += ["--attack-epochs", str(epochs)] if epochs else []
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise UserError(f"the attack failed: {done.stderr.strip().splitlines()[-1:]}")
        meta = RunDir(copy).read_json("attack.json")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    seconds = meta["seconds"]
    levers = {f"attack_{k}_s": v for k, v in seconds.items()}
    levers |= {f"attack_fit_{name}_s": t["train_seconds"] for name, t in meta["timings"].items()}
    levers |= {"attack_run": str(run_dir), "attack_names": ",".join(meta["attacks"]), "attack_epochs_cap": epochs}
    return {
        "attack_seconds": wall,
        "attack_scoring_fraction": seconds["scoring"] / wall,
        "attack_peak_rss_gb": peak_gb,
        "levers": levers,
    }


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """FedAvg of ``states`` weighted by ``weights`` (training examples): Flower's own aggregation, as FedAvg does."""
    replies = [
        RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": n})})
        for state, n in zip(states, weights, strict=True)
    ]
    return aggregate_arrayrecords(replies, "num-examples").to_torch_state_dict()


def client_round(
    cfg: RunConfig, state: dict[str, torch.Tensor], pid: int, server_round: int, **train_kwargs
) -> tuple[nn.Module, nn.Module, torch.Tensor, LocalResult]:
    """One client's local round as the ClientApp runs it (same seed, same step), from the global ``state``, with no
    earlier privacy history: (device, head, its training labels, the result). ``train_kwargs`` go to train_local."""
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    load_joined(device, head, state)
    images, labels, _ = client_split(cfg, pid, "train")
    seed = local_round_seed(cfg.training_seed, pid, server_round)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_local(device, head, images, labels, cfg, [], seed, **train_kwargs)
    return device, head, labels, result


def refit_head(cfg: RunConfig, device: nn.Module, head: nn.Module, server_round: int, fraction: float) -> None:
    """The server's head refit (``strategy.head_fit``) without Flower: ``head`` trained in place on the same seeded
    sample of every client's training images through ``device``."""
    xs, ys = [], []
    for pid in range(cfg.clients):
        images, labels, _ = client_split(cfg, pid, "train")
        keep = head_fit_sample(cfg.training_seed, pid, server_round, len(labels), fraction)
        xs.append(device_activations(device, images[keep]))
        ys.append(labels[keep])
    seed = head_fit_seed(cfg.training_seed, server_round)
    fit_head(head, torch.cat(xs), torch.cat(ys), cfg.head_epochs, cfg.head_lr, seed)


def plain_loop(cfg: RunConfig) -> float:
    """Seconds for the simulation's client work without Flower: per round every client trains (same seeds), FedAvg,
    the head refit (``--head-mode refit``), every client validates; then the final inference query. All cores to
    one process."""
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    torch.manual_seed(cfg.training_seed)
    state = joined_state(*build_split(**cfg.model_options(), **geometry(cfg.dataset)))
    for server_round in range(1, cfg.rounds + 1):
        states, weights = [], []
        for pid in range(cfg.clients):
            device, head, _, result = client_round(cfg, state, pid, server_round, record_cut=server_round == cfg.rounds)
            states.append(joined_state(device, head))
            weights.append(result.n_train)
        state = fedavg(states, weights)
        if cfg.head_mode == "refit":
            device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
            load_joined(device, head, state)
            refit_head(cfg, device, head, server_round, cfg.head_fit_fraction)
            state = joined_state(device, head)
        for pid in range(cfg.clients):
            device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
            load_joined(device, head, state)
            evaluate(device, head, *client_split(cfg, pid, "val")[:2])
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    load_joined(device, head, state)
    for pid in range(cfg.clients):
        device_activations(device, torch.cat([client_split(cfg, pid, p)[0] for p in ("train", "val")]))
    return time.perf_counter() - started


def simulation_seconds(cfg: RunConfig) -> float:
    """Wall time of a full ``sim.py`` training run (Ray start, rounds, query, ledger and figures), no attack."""
    from simulation.wiring import run_training

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run_training(cfg, Path(tmp))
        return time.perf_counter() - started


def bench_simulation(clients: int, rounds: int, limit: int, cpus_levers: tuple[float, ...] = ()) -> dict:
    """Simulation vs plain loop; ``cpus_levers`` adds simulations with other ``--cpus-per-client`` values."""
    cfg = RunConfig(clients=clients, rounds=rounds, limit_per_client=limit)
    loop = plain_loop(cfg)
    sim = simulation_seconds(cfg)
    out = {"clients": clients, "rounds": rounds, "limit_per_client": limit, "sim_s": sim, "loop_s": loop}
    for cpus in cpus_levers:
        out[f"sim_s_cpus_per_client{cpus:g}"] = simulation_seconds(dataclasses.replace(cfg, cpus_per_client=cpus))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads: a few minutes on 2 cores")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--data-dir", help="Omniglot root (default $OMNIGLOT_ROOT)")
    parser.add_argument(
        "--attack-run", type=Path, default=Path("runs/s0"), help="finished run the attack benchmark attacks"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("dp", "gemm", "attack", "sim", "overhead", "main", "study"),
        help="a subset (study, about 80 minutes, only when named)",
    )
    args = parser.parse_args(argv)
    if args.data_dir:
        os.environ["OMNIGLOT_ROOT"] = args.data_dir
    console = Console()
    quick = args.quick
    parts = args.only or ("dp", "gemm", "attack", "sim", "overhead", "main")
    results: dict = {"levers": {}}
    try:
        load_set(EVALUATION)
        if "dp" in parts:
            results |= _merge(results, bench_dp_step(repeats=10 if quick else 30))
        if "gemm" in parts:
            results |= _merge(results, bench_gemm_fraction(n_images=320 if quick else 1280))
        if "attack" in parts:
            try:
                results |= _merge(results, bench_attack(args.attack_run, epochs=3 if quick else None))
            except UserError as exc:  # the other benchmarks need no finished run: go on without this one
                console.print(f"attack: not measured: {exc}", markup=False, highlight=False)
        if "sim" in parts:
            cpus = () if quick else (float(os.cpu_count() or 1),)  # lever: one client at a time with every core
            # Full mode: 5 rounds, so the simulation's fixed start-up (Ray and its workers, about 12 s) weighs as in
            # real runs (the main command trains 10) rather than dominating a 2-round run.
            sim = bench_simulation(clients=20, rounds=1 if quick else 5, limit=64 if quick else 0, cpus_levers=cpus)
            results["sim_overhead_ratio"] = sim["sim_s"] / sim["loop_s"]
            results["levers"] |= {f"sim20_{k}": v for k, v in sim.items()}
        if "main" in parts:  # --quick: 2 rounds of 64 images a client, a smoke test of the measurement only
            tiny = ["--rounds", "2", "--limit-per-client", "64", "--attack-epochs", "3"] if quick else []
            results |= _merge(results, bench_command(["--clients", "20", "--noise", "0.5", *tiny], "main"))
        if "overhead" in parts:
            sim = bench_simulation(clients=100, rounds=1 if quick else 3, limit=4)
            results["per_client_round_overhead_s"] = (sim["sim_s"] - sim["loop_s"]) / (sim["clients"] * sim["rounds"])
            results["levers"] |= {f"sim100_{k}": v for k, v in sim.items()}
        if "study" in parts:
            results |= _merge(results, bench_study(quick))
    except UserError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    results["machine"] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": quick,
        "cuda": torch.cuda.is_available(),
    }
    console.print(_table(results))
    if args.json:
        files.write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def _merge(results: dict, part: dict) -> dict:
    levers = part.pop("levers", {})
    results["levers"] |= levers
    return part


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _table(results: dict) -> Table:
    table = Table(title="Benchmarks (ratios measured side by side in this run)")
    for column in ("metric", "value", "target", "met"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, (op, target) in TARGETS.items():
        if name not in results:
            continue
        value = results[name]
        met = value <= target if op == "<=" else value >= target
        table.add_row(name, f"{value:.3g}", f"{op} {target:g}", "yes" if met else "no")
    table.add_section()
    for name, value in results["levers"].items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value), "", "")
    return table


if __name__ == "__main__":
    sys.exit(main())
