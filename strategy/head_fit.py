"""``--head-mode refit``: after each round's aggregation the server refits its head on fresh activations.

SplitFed v1 averages the clients' head copies, and under alphabet shards each copy has learned only its client's
few alphabets, so the average is a poor head for every client. Here the server then asks every client for the
activations of a seeded sample (``--head-fit-fraction``) of its training images through the *new* global device
model, with their labels, pools them over clients and trains the averaged head on them for ``--head-epochs``
(``split.head.fit_head``, Adam ``--head-lr``). It is the classifier calibration of CCVR (Luo et al., NeurIPS
2021) with real activations instead of sampled ones. What it costs: one forward pass over that sample per client
per round, and the server sees those activations and labels too (they cross the cut like any other).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from core.config import RunConfig
from core.protocol import HeadFitReply, head_fit_query
from data.base import geometry
from split.head import fit_head, head_fit_seed
from split.model import build_split, load_joined
from strategy.interception import query_every_client


class HeadFitter:
    """Callable ``(grid, arrays, config, server_round) -> arrays`` with the head (``head.*``) refitted."""

    def __init__(self, cfg: RunConfig, timeout: float = 3600) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.last_loss = float("nan")  # the head's training loss in the last refit (nats)

    def __call__(self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, server_round: int) -> ArrayRecord:
        content = head_fit_query(arrays, config, server_round)
        answers = query_every_client(grid, content, "the head-fit query", self.timeout)
        # pooled in partition order: same seed, same head
        replies = sorted((HeadFitReply.from_message(m) for m in answers), key=lambda r: r.partition)
        activations = torch.from_numpy(np.concatenate([r.activations for r in replies]))
        labels = torch.from_numpy(np.concatenate([r.labels for r in replies]))
        device, head = build_split(**self.cfg.model_options(), **geometry(self.cfg.dataset))
        load_joined(device, head, arrays.to_torch_state_dict())
        seed = head_fit_seed(self.cfg.training_seed, server_round)
        self.last_loss = fit_head(head, activations, labels, self.cfg.head_epochs, self.cfg.head_lr, seed)
        fitted = {f"head.{k}": v.detach().numpy() for k, v in head.state_dict().items()}
        return ArrayRecord({k: Array(fitted[k]) if k in fitted else v for k, v in arrays.items()})
