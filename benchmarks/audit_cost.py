"""What ``--audit M`` adds to a run: one client's local DP-SGD round with and without its canaries, and the server's
scoring of a round's returned devices.

    python benchmarks/audit_cost.py [--audit 1000] [--clients 20] [--repeats 3]

Trains client 0's real shard (the main command's settings: 20 clients, alphabet shards, batch 32, sigma 0.5) for
one local round, alternating with and without canaries, and prints the median seconds of each and their ratio; then
the seconds the auditor takes for one round of 20 returned devices. Target (issue 24): <= 1.2x.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from audit.auditor import Auditor
from audit.canaries import plan_canaries
from clients.client_app import client_split
from clients.train import train_local
from core.config import RunConfig
from data.base import geometry
from split.model import build_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a simulated client (--cpus-per-client 1)
    cfg = RunConfig(clients=args.clients, audit=args.audit).validate()
    plan = plan_canaries(cfg)
    images, labels, _ = client_split(cfg, 0, "train")
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(args.repeats):
        for name, canaries in (("without", None), ("with", plan)):
            local, local_head = copy.deepcopy(device), copy.deepcopy(head)
            started = time.perf_counter()
            train_local(local, local_head, images, labels, cfg, [], repeat, canaries=canaries, partition=0)
            seconds[name].append(time.perf_counter() - started)
    plain, audited = (statistics.median(seconds[k]) for k in ("without", "with"))
    mine = int(((plan.client == 0) & plan.included).sum())
    print(f"client 0: {len(labels)} images, {mine} included canaries of {plan.m}")
    print(f"local round: {plain:.2f} s without, {audited:.2f} s with canaries: ratio {audited / plain:.3f}")
    state = {k: v.detach().numpy() for k, v in device.state_dict().items()}
    auditor = Auditor(plan)
    started = time.perf_counter()
    auditor.observe(state, {pid: state for pid in range(args.clients)})
    print(f"server: scoring one round of {args.clients} returned devices: {time.perf_counter() - started:.3f} s")


if __name__ == "__main__":
    main()
