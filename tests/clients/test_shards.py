"""clients/shards.py on the real evaluation labels: every scheme is complete, disjoint and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from clients.shards import build_shards, partition_indices
from core.config import PARTITIONS, RunConfig
from core.errors import UserError
from data.base import ImageSet

N_IMAGES = 13_180
CASES = [(scheme, k) for scheme in PARTITIONS for k in (20, 4)]
SEEDED = ("shards", "dirichlet", "iid")


@pytest.fixture(scope="module")
def labels(evaluation: ImageSet) -> np.ndarray:
    return np.asarray(evaluation.alphabet)


def parts_for(labels: np.ndarray, scheme: str, k: int, seed: int = 0) -> list[np.ndarray]:
    return partition_indices(labels, RunConfig(clients=k, partition=scheme, seed=seed).validate())


@pytest.mark.parametrize(("scheme", "k"), CASES)
def test_partition_complete_disjoint_deterministic(labels: np.ndarray, scheme: str, k: int) -> None:
    parts = parts_for(labels, scheme, k)
    assert len(parts) == k
    for p in parts:
        assert p.dtype == np.int64
        assert len(p) > 0
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
    joined = np.concatenate(parts)
    assert len(joined) == N_IMAGES  # disjoint: no index twice...
    assert np.array_equal(np.sort(joined), np.arange(N_IMAGES))  # ...and complete
    again = parts_for(labels, scheme, k)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(("scheme", "k"), [c for c in CASES if c[0] in SEEDED])
def test_partition_seed_changes_assignment(labels: np.ndarray, scheme: str, k: int) -> None:
    zero, one = parts_for(labels, scheme, k, seed=0), parts_for(labels, scheme, k, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(zero, one, strict=True))


def test_alphabet_one_per_client(evaluation: ImageSet, labels: np.ndarray) -> None:
    parts = parts_for(labels, "alphabet", 20)
    owned = [np.unique(labels[p]).tolist() for p in parts]
    assert owned == [[a] for a in range(20)]  # client i holds exactly alphabet i, all of it
    assert [len(p) for p in parts] == np.bincount(labels).tolist()
    assert len(parts[evaluation.alphabet_names.index("Angelic")]) == 400  # 20 characters x 20 drawers


def test_alphabet_four_clients_whole_alphabets(labels: np.ndarray) -> None:
    parts = parts_for(labels, "alphabet", 4)
    owners = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert all(len(o) == 5 for o in owners)
    assert set().union(*owners) == set(range(20))
    # Whole alphabets: a client holding an alphabet holds every image of it.
    for p, o in zip(parts, owners, strict=True):
        assert len(p) == int(np.isin(labels, list(o)).sum())


def test_iid_every_client_all_alphabets(labels: np.ndarray) -> None:
    for k in (20, 4):
        parts = parts_for(labels, "iid", k)
        assert all(len(np.unique(labels[p])) == 20 for p in parts)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_shards_few_alphabets_per_client(labels: np.ndarray) -> None:
    # 20 clients x 2 shards of a sorted-by-alphabet table: each client sees a handful of alphabets, not all 20.
    parts = parts_for(labels, "shards", 20)
    per_client = [len(np.unique(labels[p])) for p in parts]
    assert max(per_client) <= 4
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2 * 330  # shard size ceil(13,180 / 40) = 330


def test_dirichlet_is_skewed(labels: np.ndarray) -> None:
    parts = parts_for(labels, "dirichlet", 20)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 2
    assert sizes.max() > 1.3 * sizes.min()  # alpha 0.5: unequal clients, unlike iid


@pytest.mark.parametrize(("scheme", "k"), CASES)
def test_build_shards_train_val(labels: np.ndarray, scheme: str, k: int) -> None:
    cfg = RunConfig(clients=k, partition=scheme).validate()
    shards = build_shards(labels, cfg)
    parts = partition_indices(labels, cfg)
    assert [s.partition_id for s in shards] == list(range(k))
    for shard, part in zip(shards, parts, strict=True):
        assert len(np.intersect1d(shard.train, shard.val)) == 0
        assert len(shard.train) + len(shard.val) == len(part)
        assert np.array_equal(shard.indices, part)
        assert np.all(np.diff(shard.train) > 0) and np.all(np.diff(shard.val) > 0)
        assert len(shard.val) == max(1, round(0.1 * len(part)))
    n_val = sum(len(s.val) for s in shards)
    assert sum(len(s.train) for s in shards) + n_val == N_IMAGES
    assert 0.095 < n_val / N_IMAGES < 0.105


def test_build_shards_deterministic(labels: np.ndarray) -> None:
    cfg = RunConfig(clients=20, partition="iid", seed=3).validate()
    a, b = build_shards(labels, cfg), build_shards(labels, cfg)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.train, y.train) and np.array_equal(x.val, y.val)


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_limit_per_client(labels: np.ndarray, scheme: str) -> None:
    cfg = RunConfig(clients=20, partition=scheme, limit_per_client=50).validate()
    parts = partition_indices(labels, cfg)
    for shard, part in zip(build_shards(labels, cfg), parts, strict=True):
        assert len(shard.train) + len(shard.val) == min(50, len(part))
        assert len(shard.val) == 5
        assert np.all(np.isin(shard.indices, part))  # a subset of the client's own images


def test_alphabet_more_clients_than_alphabets_rejected(labels: np.ndarray) -> None:
    # The number of alphabets is the dataset's, so partitioning (not the config) refuses more clients than that.
    with pytest.raises(UserError, match=r"--clients <= 20 \(the alphabets\), got 25"):
        partition_indices(labels, RunConfig(clients=25, partition="alphabet"))


def test_more_clients_than_images_rejected() -> None:
    with pytest.raises(UserError, match="more than the 3 images"):
        partition_indices(np.array([0, 1, 2]), RunConfig(clients=4, partition="iid"))
