"""The server's head refit (``--head-mode refit``): training the averaged head on fresh activations of a sample of
every client's images, with their labels.

Pure torch: the ServerApp (``strategy.head_fit``) calls it at the end of a round with the pooled (activation, label)
pairs, shuffled, so the head sees all alphabets at once instead of one client's few (what makes averaged
per-client head copies poor under label skew).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def head_fit_sample(seed: int, partition: int, server_round: int, n: int, fraction: float) -> torch.Tensor:
    """Which of a client's ``n`` training images it sends for the head refit in ``server_round``: int64 [k],
    sorted, k = max(1, round(fraction n)); drawn by an RNG seeded (seed, partition, round), so resumes agree."""
    rng = np.random.default_rng([seed, partition, server_round, 2])
    return torch.from_numpy(np.sort(rng.permutation(n)[: max(1, round(fraction * n))]))


def head_fit_seed(seed: int, server_round: int) -> int:
    """The seed of the refit's batch order in ``server_round``."""
    return int(np.random.SeedSequence([seed, server_round, 3]).generate_state(1)[0])


def fit_head(
    head: nn.Module,
    activations: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> float:
    """Train ``head`` in place with Adam on activations float32 [N,C,H,W] and labels int64 [N]; batches reshuffled
    each epoch by a generator seeded with ``seed``. Returns the last epoch's mean cross-entropy (nats)."""
    if len(labels) == 0:
        return float("nan")
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    mean_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            loss = F.cross_entropy(head(activations[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        mean_loss = total / len(labels)
    head.eval()
    return mean_loss
