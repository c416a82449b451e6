"""What the hijacking server adds to a client's local round: honest and hijack rounds of one client, interleaved.

    python benchmarks/hijack_cost.py [--noise 0.5] [--images 600] [--repeats 3] [--cut 4] [--surrogate small1]
                                     [--hijack-epochs 10] [--detect 0]

One client's ``train_local`` (the run's defaults: DP-SGD at --noise, batch 32, 1 thread as a simulation worker
has) on ``--images`` private images, alternately with the task's gradient and with the hijack's critic
(``split.hijack.HijackRound``, its real side the pilot's activations of the public images, computed once per
worker and not counted, as in a run). Prints each round's seconds and the ratio of the medians; the issue's target
is at most 1.5. With ``--detect P`` each repeat also runs both with the client's label probe (``clients.detector``)
and prints what the probe adds under each server. The server's one-off work (the pilot's warm start, cached; the
workers' pilot features) is printed apart. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.train import train_local  # noqa: E402
from core.config import RunConfig  # noqa: E402
from data.base import get_dataset  # noqa: E402
from split.hijack import HijackRound, initial_models, pilot_features, public_images  # noqa: E402
from split.model import build_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cut", type=int, default=4)
    parser.add_argument("--surrogate", default="small1")
    parser.add_argument("--hijack-epochs", type=int, default=10)
    parser.add_argument("--detect", type=float, default=0.0)
    args = parser.parse_args()
    cfg = RunConfig(
        noise=args.noise, server="hijack", cut=args.cut, surrogate=args.surrogate, hijack_epochs=args.hijack_epochs
    ).validate()
    probed = dataclasses.replace(cfg, detect=args.detect).validate()
    began = time.perf_counter()
    models = initial_models(cfg)
    warm = time.perf_counter() - began
    torch.set_num_threads(1)
    began = time.perf_counter()
    real = pilot_features(models, np.asarray(public_images(cfg).images))
    features = time.perf_counter() - began
    private = get_dataset(cfg.dataset).load("private")
    rows = np.linspace(0, len(private) - 1, args.images).astype(np.int64)
    images, labels = torch.from_numpy(private.as_float(rows)), torch.from_numpy(private.alphabet[rows])
    kinds = ["honest", "hijack"] + (["honest+probe", "hijack+probe"] if args.detect > 0 else [])
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    warnings.simplefilter("ignore")
    for repeat in range(args.repeats):
        for kind in kinds:
            torch.manual_seed(repeat)
            device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
            server = HijackRound(models, real, seed=repeat).gradient if kind.startswith("hijack") else None
            setting = probed if kind.endswith("+probe") else cfg
            began = time.perf_counter()
            train_local(device, head, images, labels, setting, [], seed=repeat, server=server)
            seconds[kind].append(time.perf_counter() - began)
            print(f"{kind} round {repeat + 1}: {seconds[kind][-1]:.2f} s", flush=True)
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    print(f"one-off: pilot warm start or cache {warm:.1f} s; pilot features of the public images {features:.1f} s")
    print(f"hijack / honest client round (medians): {median['hijack'] / median['honest']:.2f}")
    if args.detect > 0:
        for server in ("honest", "hijack"):
            print(f"with the probe / without, {server} server: {median[server + '+probe'] / median[server]:.2f}")


if __name__ == "__main__":
    main()
