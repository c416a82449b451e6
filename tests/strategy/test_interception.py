"""strategy/interception.py: what crossed the cut is read from replies exactly and saved as intercepted.npz."""

from __future__ import annotations

import numpy as np
import pytest
from fake_grid import NODES, FakeClients, FakeGrid, initial_arrays, set_task_identity
from flwr.app import ConfigRecord, Error, Message, RecordDict

from core.protocol import RECORD_ROWS, Intercepted, QueryReply, TrainReply
from core.rundir import RunDir
from strategy.interception import latest_per_client, query_activations


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch) -> None:
    set_task_identity(monkeypatch)


def _record(pid: int, rows: int, value: float) -> Intercepted:
    return Intercepted(pid, np.full((rows, 32, 1, 1), value, np.float32), np.arange(rows, dtype=np.int64) + 10 * pid)


def _instruction() -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=5, message_type="query")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_replies_carry_intercepted_records_exactly() -> None:
    record = Intercepted(2, np.random.default_rng(0).normal(size=(3, 32, 1, 1)).astype(np.float32), np.array([7, 1, 7]))
    back = QueryReply.from_message(QueryReply(record).to_message(_instruction())).intercepted
    assert back.partition == 2 and back.index.dtype == np.int64
    np.testing.assert_array_equal(back.activations, record.activations)
    np.testing.assert_array_equal(back.index, [7, 1, 7])
    # a train reply without the record (not the client's last round) has none
    metrics = dict.fromkeys(("num-examples", "partition-id", "train-loss", "train-acc", "epsilon", "delta"), 0)
    metrics.update(dict.fromkeys(("sample-rate", "noise-multiplier", "clip", "steps-round", "steps-total"), 0))
    metrics.update(dict.fromkeys(("detect-probes", "detect-score", "detect-alarm"), 0))
    reply = TrainReply({**metrics, "seconds": 0.0, "partition-id": 2}, [], "failed", "x")
    assert TrainReply.from_message(reply.to_message(_instruction())).intercepted is None
    reply.intercepted = record
    reply.status, reply.arrays = "trained", initial_arrays()
    parsed = TrainReply.from_message(reply.to_message(_instruction()))
    np.testing.assert_array_equal(parsed.intercepted.activations, record.activations)
    assert set(parsed.aggregation_content()) == {"arrays", "metrics"}  # what the inner strategy averages


def test_latest_per_client_keeps_each_clients_last_round() -> None:
    kept = [_record(0, 1, 1.0), _record(2, 2, 1.0)]
    merged = latest_per_client(kept, [_record(2, 3, 2.0), _record(1, 1, 2.0)])
    assert [(r.partition, len(r.index), float(r.activations[0, 0, 0, 0])) for r in merged] == [
        (0, 1, 1.0),
        (1, 1, 2.0),
        (2, 3, 2.0),
    ]


def test_save_intercepted_stacks_by_partition(tmp_path) -> None:
    path = RunDir(tmp_path).save_intercepted([_record(1, 2, 1.0), _record(0, 3, 0.5)], [], (32, 1, 1))
    with np.load(path) as z:
        assert z["inference_activations"].shape == (5, 32, 1, 1) and z["inference_activations"].dtype == np.float16
        np.testing.assert_array_equal(z["inference_partition"], [0, 0, 0, 1, 1])
        np.testing.assert_array_equal(z["inference_index"], [0, 1, 2, 10, 11])
        np.testing.assert_array_equal(z["inference_activations"][:, 0, 0, 0], [0.5, 0.5, 0.5, 1.0, 1.0])
        assert z["train_activations"].shape == (0, 32, 1, 1) and z["train_index"].dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["intercepted.npz"]  # no temporary file left behind


def test_compact_records_keep_every_row_in_float16_up_to_cut_2_and_a_seeded_sample_at_cut_1() -> None:
    rng = np.random.default_rng(0)
    small = Intercepted(3, rng.normal(size=(300, 32, 13, 13)).astype(np.float32), np.arange(300, dtype=np.int64))
    kept = small.compact(seed=0)
    assert kept.activations.dtype == np.float16 and len(kept.index) == 300  # cut 2: every row
    np.testing.assert_allclose(kept.activations, small.activations, rtol=1e-3, atol=1e-3)
    large = Intercepted(3, rng.normal(size=(300, 32, 33, 33)).astype(np.float32), np.arange(300, dtype=np.int64) * 2)
    sample = large.compact(seed=0)
    assert len(sample.index) == RECORD_ROWS == len(sample.activations) and np.all(np.diff(sample.index) > 0)
    np.testing.assert_array_equal(sample.index, large.compact(seed=0).index)  # seeded: a rerun keeps the same rows
    assert not np.array_equal(sample.index, large.compact(seed=1).index)
    row = int(sample.index[7]) // 2  # each kept row is still its own image's activations
    np.testing.assert_allclose(sample.activations[7], large.activations[row], rtol=1e-3, atol=1e-3)


def test_query_activations_asks_every_client() -> None:
    grid = FakeGrid(FakeClients())
    records = sorted(query_activations(grid, initial_arrays(), ConfigRecord({})), key=lambda r: r.partition)
    assert [(r.partition, r.index.tolist()) for r in records] == [(0, [0]), (1, [100, 101]), (2, [200, 201, 202])]
    assert sorted(pid for _, pid in grid.sent) == sorted(NODES.values())

    def failing(msg: Message, pid: int) -> Message:
        return Message(Error(code=0, reason="out of memory"), reply_to=msg)

    with pytest.raises(RuntimeError, match="failed to answer the query"):
        query_activations(FakeGrid(failing), initial_arrays(), ConfigRecord({}))
