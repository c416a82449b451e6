"""Alphabet shards: which evaluation images each client holds, and its train / validation split.

Partitioning is done by flwr-datasets partitioners over a small in-memory ``datasets.Dataset`` with one row per
image (its alphabet label and its index into the set), so every image belongs to exactly one client.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    ShardPartitioner,
)

from core.config import RunConfig
from core.errors import UserError

datasets.disable_progress_bars()


@dataclass(frozen=True)
class ClientShard:
    """One client's images, as int64 indices into the evaluation set (sorted, disjoint)."""

    partition_id: int
    train: np.ndarray
    val: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val]))


def partition_indices(labels: np.ndarray, cfg: RunConfig) -> list[np.ndarray]:
    """Split image indices 0..N-1 among ``cfg.clients`` clients by ``cfg.partition``.

    labels: int [N] alphabet id per image. Returns one sorted int64 index array per client; together they cover
    0..N-1 exactly once. Deterministic for a given ``cfg.seed``.
    """
    n, k = len(labels), cfg.clients
    if k > n:
        raise UserError(f"--clients {k} is more than the {n} images to share out")
    table = datasets.Dataset.from_dict({"alphabet": np.asarray(labels, dtype=np.int64), "idx": np.arange(n)})
    partitioner: Partitioner
    if cfg.partition == "shards":
        # Rows sorted by alphabet, cut into clients x alphabets-per-client shards; ceil keeps the last images.
        size = math.ceil(n / (k * cfg.alphabets_per_client))
        partitioner = ShardPartitioner(
            k, partition_by="alphabet", shard_size=size, keep_incomplete_shard=True, seed=cfg.seed
        )
    elif cfg.partition == "alphabet":
        # Whole alphabets: alphabet a goes to client a mod k (one alphabet per client when k == 20).
        alphabets = np.unique(labels)
        if k > len(alphabets):
            raise UserError(f"--partition alphabet needs --clients <= {len(alphabets)} (the alphabets), got {k}")
        owner = {int(a): i % k for i, a in enumerate(alphabets)}
        table = table.add_column("client", [owner[int(a)] for a in labels])
        partitioner = NaturalIdPartitioner(partition_by="client")
    elif cfg.partition == "dirichlet":
        partitioner = DirichletPartitioner(
            k, partition_by="alphabet", alpha=cfg.alpha, min_partition_size=2, self_balancing=False, seed=cfg.seed
        )
    else:  # iid: the partitioner cuts contiguous blocks, so shuffle the alphabet-sorted rows first
        table = table.shuffle(seed=cfg.seed).flatten_indices()
        partitioner = IidPartitioner(k)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # pyarrow deprecation inside the partitioners; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            parts = [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(k)]
    except ValueError as exc:
        raise UserError(
            f"cannot partition {n} images into {k} clients with --partition {cfg.partition}: {exc}"
        ) from None
    if cfg.partition == "alphabet":
        # NaturalIdPartitioner numbers clients in order of first appearance; map back to our client ids.
        parts = sorted(parts, key=lambda idx: owner[int(labels[idx[0]])])
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise UserError(f"--partition {cfg.partition} left client(s) {empty} with no images; use fewer --clients")
    return parts


def build_shards(labels: np.ndarray, cfg: RunConfig) -> list[ClientShard]:
    """Partition, cap at ``--limit-per-client`` and split each client's images into train / validation.

    The cap takes a seeded random subset; the split puts ``round(val_fraction * n)`` images (at least 1) in
    validation. Seeded per client, so a client's shard does not depend on which other clients exist.
    """
    shards = []
    for pid, idx in enumerate(partition_indices(labels, cfg)):
        rng = np.random.default_rng([cfg.seed, pid])
        idx = rng.permutation(idx)
        if cfg.limit_per_client:
            idx = idx[: cfg.limit_per_client]
        if len(idx) < 2:
            raise UserError(f"client {pid} holds {len(idx)} image(s); it needs at least 2 (train + validation)")
        n_val = min(max(1, round(cfg.val_fraction * len(idx))), len(idx) - 1)
        shards.append(ClientShard(pid, train=np.sort(idx[n_val:]), val=np.sort(idx[:n_val])))
    return shards
