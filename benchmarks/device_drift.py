"""How far, and in which direction, training moved the device from its starting weights.

    python benchmarks/device_drift.py START.pt runs/a runs/b ...

START.pt is a device state dict (the pretrained device in the cache, split/pretrain.py); each run directory's
model.pt holds the device it ended with. Prints, per run, ||w - w0|| / ||w0|| over the whole device and per weight
tensor, then the cosine between every two runs' displacements w - w0. Two DP runs whose displacements have a cosine
near 1 moved the same way whatever their data's gradients were: the noise drew the path.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch


def displacement(start: dict, run: Path) -> dict[str, torch.Tensor]:
    device = torch.load(run / "model.pt", weights_only=False)["device"]
    return {k: device[k].float() - start[k].float() for k in start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    start = torch.load(args.start, weights_only=True)
    norm0 = torch.cat([v.float().flatten() for v in start.values()]).norm()
    moved = {}
    for run in args.runs:
        d = displacement(start, run)
        moved[run.name] = torch.cat([v.flatten() for v in d.values()])
        layers = " ".join(
            f"{k}:{float(d[k].norm() / start[k].float().norm()):.3f}" for k in start if k.endswith("weight")
        )
        print(f"{run.name}: relative change {float(moved[run.name].norm() / norm0):.4f} ({layers})")
    for a, b in itertools.combinations(moved, 2):
        cos = torch.nn.functional.cosine_similarity(moved[a], moved[b], dim=0)
        print(f"cosine({a}, {b}) = {float(cos):.4f}")


if __name__ == "__main__":
    main()
