"""How far the hijacking server gets, and how fast: its pilot's ceiling per warm-start epoch, then one client's
device under the hijack round by round, both scored on the 2,120 unseen images.

    python benchmarks/hijack_reach.py [--surrogate small1] [--hijack-epochs 10] [--rounds 10] [--images 600]
                                      [--noise 0] [--local-epochs 1] [--clients 1] [--cut 4]

Part 1 (only when the pilot is not cached yet, else its final ceiling only): after each epoch of the pilot
autoencoder's warm start (``split.hijack.initial_models``), its decoder on its pilot's activations of the unseen
images: top-1 re-id (chance 1/2,120) and pixel MSE. Part 2: ``--clients`` clients, each holding ``--images`` private
images (every ``--clients``-th of evenly spaced rows), train a fresh device with the run's DP-SGD settings
(``clients.train.train_local``) against the hijack's gradient for ``--rounds`` rounds; their devices and critics are
averaged after each round as a run's are (plain means); after each round the decoder on the averaged device's
activations of the unseen images. No Flower: the dynamics of ``--server hijack`` on its own. Prints one line per
epoch / round. Not a test: nothing here asserts a value.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attack.metrics import mse, reidentification  # noqa: E402
from clients.train import train_local  # noqa: E402
from core.config import RunConfig  # noqa: E402
from data.base import get_dataset, shared_files  # noqa: E402
from split.hijack import HijackModels, HijackRound, initial_models, pilot_features, public_images  # noqa: E402
from split.model import build_split, device_activations  # noqa: E402


def unseen_images(cfg: RunConfig) -> np.ndarray:
    """small2 minus its files in small1 (the attack's ``unseen`` set): float32 [2120,1,105,105] in [0,1]."""
    dataset = get_dataset(cfg.dataset, cfg.data_dir or None)
    small1, small2 = dataset.load("surrogate"), dataset.load("unseen")
    return small2.as_float(np.flatnonzero(~shared_files(small1, small2)))


def score(models: HijackModels, encoder: torch.nn.Module, unseen: np.ndarray) -> str:
    rec = models.reconstruct(device_activations(encoder, unseen))
    return f"re-id {reidentification(unseen, rec):.4f}, MSE {mse(unseen, rec):.4f}"


def copied(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def averaged(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--surrogate", default="small1")
    parser.add_argument("--hijack-epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--cut", type=int, default=4)
    args = parser.parse_args()
    cfg = RunConfig(
        noise=args.noise,
        server="hijack",
        surrogate=args.surrogate,
        hijack_epochs=args.hijack_epochs,
        local_epochs=args.local_epochs,
        cut=args.cut,
    )
    unseen = unseen_images(cfg)
    began = time.perf_counter()

    def probe(models: HijackModels, epoch: int) -> None:
        print(
            f"pilot epoch {epoch}: ceiling {score(models, models.pilot, unseen)} ({time.perf_counter() - began:.0f} s)"
        )

    torch.manual_seed(cfg.training_seed)  # the run's initial device, as strategy.server_app builds it
    device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
    models = initial_models(cfg, after_epoch=probe)
    print(f"pilot after {cfg.hijack_epochs} epochs on {cfg.surrogate}: ceiling {score(models, models.pilot, unseen)}")
    torch.set_num_threads(1)
    real = pilot_features(models, np.asarray(public_images(cfg).images))
    private = get_dataset(cfg.dataset).load("private")
    rows = np.linspace(0, len(private) - 1, args.images * args.clients).astype(np.int64)
    print(f"round 0 (fresh device): hijack {score(models, device, unseen)}", flush=True)
    histories: list[list] = [[] for _ in range(args.clients)]
    warnings.simplefilter("ignore")
    for rnd in range(1, args.rounds + 1):
        start_device, start_head, start_critic = (copied(m) for m in (device, head, models.critic))
        devices, heads, critics, gaps = [], [], [], []
        for client in range(args.clients):
            for module, state in ((device, start_device), (head, start_head), (models.critic, start_critic)):
                module.load_state_dict(state)
            mine = rows[client :: args.clients]
            images, labels = torch.from_numpy(private.as_float(mine)), torch.from_numpy(private.alphabet[mine])
            server = HijackRound(models, real, seed=1000 * rnd + client)
            result = train_local(
                device, head, images, labels, cfg, histories[client], seed=rnd * 100 + client, server=server.gradient
            )
            histories[client] = result.history
            devices.append(copied(device))
            heads.append(copied(head))
            critics.append(copied(models.critic))
            gaps.append(server.last.get("wasserstein", float("nan")))
        for module, states in ((device, devices), (head, heads), (models.critic, critics)):
            module.load_state_dict(averaged(states))
        print(
            f"round {rnd}: hijack {score(models, device, unseen)}, critic's W estimate {np.mean(gaps):.3f} "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
