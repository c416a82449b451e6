"""Accuracy levers under alphabet shards, measured in a plain loop: ``python benchmarks/levers.py [--set k=v ...]``.

The loop does the simulation's client work without Flower, with the same seeds (``local_round_seed``) and the
same local step (``clients.train.train_local``), so a lever can be tried in minutes and then confirmed with
``sim.py``. Per round: every client trains from the global model, FedAvg of the device convnets (weighted by
training examples), then the head by ``--head-mode``:
- ``copies``: FedAvg of the clients' head copies (SplitFed v1);
- ``server``: the head stays fixed during the round and is then trained (``split.head.fit_head``) on every
  (activation, label) pair received in the round, pooled over clients;
- ``refit`` (probe only): like ``server``, but on every training image's activation through the *new* global
  device model (one extra forward pass per client per round).
Prints the weighted validation accuracy of the global model after each round, the worst client, and the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.run import client_round, fedavg, refit_head  # noqa: E402
from clients.client_app import client_split  # noqa: E402
from clients.train import evaluate  # noqa: E402
from core.config import RunConfig, settings  # noqa: E402
from data.base import geometry  # noqa: E402
from split.head import fit_head, head_fit_seed  # noqa: E402
from split.model import build_split, joined_state, load_joined  # noqa: E402


def run(
    cfg: RunConfig, head_mode: str, refit_fraction: float = 1.0, local_head: str = "", momentum: float = 0.0
) -> list[dict]:
    """Train as described in the module docstring; returns one row per round."""
    torch.manual_seed(cfg.seed)
    state = joined_state(*build_split(**cfg.model_options(), **geometry(cfg.dataset)))
    train_mode = local_head or ("copies" if head_mode == "copies" else "server")
    rows, started, velocity = [], time.perf_counter(), {}
    for server_round in range(1, cfg.rounds + 1):
        states, weights, pooled_x, pooled_y = [], [], [], []
        for pid in range(cfg.clients):
            device, head, labels, result = client_round(
                cfg, state, pid, server_round, record_cut=head_mode == "server", freeze_head=train_mode == "server"
            )
            states.append(joined_state(device, head))
            weights.append(result.n_train)
            if head_mode == "server":
                pooled_x.append(result.cut_activations)
                pooled_y.append(labels[result.cut_positions])
        new_state = fedavg(states, weights, "device.")
        if head_mode == "copies" or train_mode == "copies":
            new_state.update(fedavg(states, weights, "head."))
        else:
            new_state.update({k: v for k, v in state.items() if k.startswith("head.")})
        if momentum:  # FedAvgM (Hsu et al. 2019): v <- beta v + (w - w_avg); w <- w - v  (server lr 1)
            for k in new_state:
                delta = state[k] - new_state[k]
                velocity[k] = momentum * velocity.get(k, 0) + delta
                new_state[k] = state[k] - velocity[k]
        device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
        load_joined(device, head, new_state)
        if head_mode == "refit":
            refit_head(cfg, device, head, server_round, refit_fraction)
            new_state = joined_state(device, head)
        elif head_mode == "server":
            seed = head_fit_seed(cfg.seed, server_round)
            fit_head(head, torch.cat(pooled_x), torch.cat(pooled_y), cfg.head_epochs, cfg.head_lr, seed)
            new_state = joined_state(device, head)
        state = new_state
        accs, ns = [], []
        for pid in range(cfg.clients):
            images, labels, _ = client_split(cfg, pid, "val")
            accs.append(evaluate(device, head, images, labels)[1])
            ns.append(len(labels))
        row = {
            "round": server_round,
            "val_acc": float(np.average(accs, weights=ns)),
            "worst": float(min(accs)),
            "median": float(np.median(accs)),
            "train_acc": result.accuracy,
            "seconds": time.perf_counter() - started,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="RunConfig settings, e.g. lr=0.001")
    p.add_argument("--head", default="copies", choices=("copies", "server", "refit"), help="head mode (see above)")
    p.add_argument("--refit-fraction", type=float, default=1.0, help="refit: share of each client's train images")
    p.add_argument(
        "--local-head", default="", choices=("", "copies", "server"), help="override: head during local training"
    )
    p.add_argument("--momentum", type=float, default=0.0, help="server momentum (FedAvgM, server lr 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--json", type=Path, default=None, help="write the rows and settings here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    types = {f.name: type(f.default) for f in settings()}
    values = {}
    for item in args.set:
        key, value = item.split("=", 1)
        key = key.replace("-", "_")
        values[key] = types[key](value)
    cfg = RunConfig(**values).validate()
    rows = run(cfg, args.head, args.refit_fraction, args.local_head, args.momentum)
    if args.json:
        args.json.write_text(json.dumps({"settings": cfg.settings_dict(), "head": args.head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
