"""strategy/driver.py with the ledger around real Flower strategies, on an in-process grid with canned clients.

No Ray and no data: each test runs a few rounds of arithmetic clients (tests/fake_grid.py) in well under a second.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from fake_grid import NODES, FakeClients, FakeGrid, initial_arrays, set_task_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from rich.console import Console

from core.config import RunConfig
from core.protocol import TrainReply
from strategy.checkpoint import Checkpoint, load_checkpoint
from strategy.driver import Driver
from strategy.ledger import ClientFailed, LedgerStrategy
from strategy.recorder import RunRecorder
from strategy.registry import FedOptState, entry


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch) -> None:
    set_task_identity(monkeypatch)


class Spy(FedAvg):
    """FedAvg that notes the partition order of the replies it aggregates."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.orders: list[list[int]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.orders.append([int(m.content["metrics"]["partition-id"]) for m in replies])
        return super().aggregate_train(server_round, replies)


def _run(
    run_dir: Path,
    strategy: str,
    clients,
    rounds: int,
    stop_after: int | None = None,
    resume: Checkpoint | None = None,
    fraction_train: float = 1.0,
    inner=None,
) -> tuple[ArrayRecord, int, LedgerStrategy, FakeGrid]:
    """Rounds 1..stop_after (default: all) of a ``rounds``-round run, or from ``resume`` on; like run_server."""
    run_dir.mkdir(exist_ok=True)
    cfg = RunConfig(clients=len(NODES), rounds=rounds, strategy=strategy, fraction_train=fraction_train)
    recorder = RunRecorder(run_dir, cfg, Console(file=io.StringIO()), resume_after=resume.round if resume else None)
    chosen = entry(strategy)
    ledger = LedgerStrategy(inner or chosen.build(cfg), recorder, cfg.seed, cfg.clients, cfg.fraction_train)
    driver = Driver(ledger, chosen.state, run_dir, cfg.settings_dict())
    arrays, first = driver.restore(resume) if resume else (initial_arrays(), 1)
    grid = FakeGrid(clients)
    config = ConfigRecord(cfg.to_flwr())
    try:
        ledger.identify(grid, config)
        arrays, last = driver.run(grid, arrays, first, stop_after or rounds, config)
    finally:
        recorder.close()
    return arrays, last, ledger, grid


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _state(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in arrays.items()}


def test_rounds_run_average_in_partition_order_and_checkpoint_each_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fake, seen = FakeClients(), []

    def clients(msg: Message, pid: int) -> Message:
        if msg.metadata.message_type == MessageType.TRAIN and pid == 0:  # what is on disk when round r starts
            seen.append(load_checkpoint(run_dir).round if (run_dir / "checkpoint.pt").exists() else None)
        return fake(msg, pid)

    spy = Spy(min_available_nodes=3)
    arrays, last, ledger, _ = _run(run_dir, "fedavg", clients, rounds=3, inner=spy)
    assert last == 3 and seen == [None, 1, 2]  # a checkpoint after every complete round
    assert spy.orders == [[0, 1, 2]] * 3  # replies arrive reversed; the inner strategy gets them by partition
    # FedAvg weighted by training images (10, 20, 30), summed in partition order: the same bits as by hand
    expected = {"device.w": np.zeros(3, np.float32), "head.b": np.ones(2, np.float32)}
    for server_round in (1, 2, 3):
        for key, old in expected.items():
            terms = [(old * 0.5 + (p + 1) * server_round / 8) * (10 * (p + 1) / 60) for p in range(3)]
            expected[key] = terms[0] + terms[1] + terms[2]
    for key, value in _state(arrays).items():
        np.testing.assert_array_equal(value, expected[key])
    ckpt = load_checkpoint(run_dir)
    assert ckpt.round == 3 and ckpt.strategy_state == {} and ckpt.over_budget == []
    for key, value in ckpt.arrays.items():
        np.testing.assert_array_equal(value, expected[key])
    assert ckpt.histories == {p: [(1.0, 0.5, 2)] * 3 for p in range(3)}  # the server's copy of every history
    assert [(r.partition, r.index.tolist()) for r in ckpt.intercepted_training] == [(p, [3, 10 + p]) for p in range(3)]
    ledger_rows = _rows(run_dir / "ledger.csv")
    assert [(r["round"], r["partition_id"], r["steps_total"]) for r in ledger_rows][:3] == [
        ("1", "0", "2"),
        ("1", "1", "2"),
        ("1", "2", "2"),
    ]
    node_of = {pid: node for node, pid in NODES.items()}
    assert all(int(r["client"]) == node_of[int(r["partition_id"])] for r in ledger_rows)
    assert [r["round"] for r in _rows(run_dir / "metrics.csv")] == ["1", "2", "3"]


def _trained_replies(arrays: ArrayRecord, server_round: int) -> list[Message]:
    """Every client's trained reply to ``arrays`` in ``server_round``, as the ledger hands them to its strategy."""
    config = ConfigRecord({"server-round": server_round})
    sent = [
        Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node, message_type=MessageType.TRAIN)
        for node in NODES
    ]
    replies = sorted(
        FakeGrid(FakeClients()).send_and_receive(sent), key=lambda m: TrainReply.from_message(m).partition_id
    )
    for msg in replies:
        msg.content = TrainReply.from_message(msg).aggregation_content()
    return replies


def test_fedadam_state_dict_load_gives_the_identical_next_aggregate(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _, _, ledger, grid = _run(run_dir, "fedadam", FakeClients(), rounds=2)
    original = ledger.strategy
    ckpt = load_checkpoint(run_dir)
    assert set(ckpt.strategy_state) == {"current_arrays", "m_t", "v_t"}
    fresh = entry("fedadam").build(RunConfig(clients=3, strategy="fedadam"))
    FedOptState().load_state_dict(fresh, ckpt.strategy_state)
    for name in ("current_arrays", "m_t", "v_t"):
        for key, value in getattr(original, name).items():
            np.testing.assert_array_equal(getattr(fresh, name)[key], value)
    arrays = ckpt.array_record()
    outcomes = []
    blank = entry("fedadam").build(RunConfig(clients=3, strategy="fedadam"))
    for strategy in (original, fresh, blank):
        list(strategy.configure_train(3, arrays, ConfigRecord({}), grid))
        outcomes.append(_state(strategy.aggregate_train(3, _trained_replies(arrays, 3))[0]))
    for key, value in outcomes[0].items():
        np.testing.assert_array_equal(outcomes[1][key], value)
    assert not np.array_equal(outcomes[2]["device.w"], outcomes[0]["device.w"])  # the moments matter


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox"])
def test_resume_equals_the_uninterrupted_run(tmp_path: Path, strategy: str) -> None:
    # 2 of 3 clients per round (seed 0: {1,2} {0,1} {1,2} {0,2}); client 1 fails part-way in round 1
    kwargs = dict(rounds=4, fraction_train=0.67)
    whole, _, ledger, _ = _run(tmp_path / "whole", strategy, FakeClients(failing={(1, 1)}), **kwargs)
    _run(tmp_path / "killed", strategy, FakeClients(failing={(1, 1)}), stop_after=2, **kwargs)
    ckpt = load_checkpoint(tmp_path / "killed")
    assert ckpt.round == 2
    # a new federation: the clients' own histories are gone, the server's copy restores them
    resumed, last, _, _ = _run(tmp_path / "killed", strategy, FakeClients(), resume=ckpt, **kwargs)
    assert last == 4
    for key, value in _state(whole).items():
        np.testing.assert_array_equal(_state(resumed)[key], value)
    assert _rows(tmp_path / "whole" / "ledger.csv") == _rows(tmp_path / "killed" / "ledger.csv")
    drop = ("round_seconds", "elapsed_seconds")
    for name in ("metrics.csv", "client_metrics.csv"):
        a, b = _rows(tmp_path / "whole" / name), _rows(tmp_path / "killed" / name)
        assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
            {k: v for k, v in r.items() if k not in drop} for r in b
        ]
    steps = {int(r["partition_id"]): int(r["steps_total"]) for r in _rows(tmp_path / "whole" / "ledger.csv")}
    assert steps == {0: 4, 1: 1 + 2 + 2, 2: 6}  # failed steps count; histories survived the restart
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "killed")
    assert a.histories == b.histories and a.over_budget == b.over_budget
    assert a.strategy_state.keys() == b.strategy_state.keys()


def test_every_client_over_budget_stops_the_run_and_a_resume_runs_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    arrays, last, _, _ = _run(run_dir, "fedavg", FakeClients(budget=2), rounds=5)
    assert last == 3  # rounds 1 and 2 trained, round 3 every client refused
    ledger = _rows(run_dir / "ledger.csv")
    assert [r["status"] for r in ledger] == ["trained"] * 6 + ["over-budget"] * 3
    assert {r["steps_total"] for r in ledger if r["round"] == "3"} == {"4"} and len(_rows(run_dir / "metrics.csv")) == 3
    ckpt = load_checkpoint(run_dir)
    assert ckpt.round == 3 and ckpt.over_budget == [0, 1, 2]
    after_two, _, _, _ = _run(tmp_path / "two", "fedavg", FakeClients(budget=2), rounds=5, stop_after=2)
    for key, value in _state(after_two).items():  # no one trained in round 3: the model did not move
        np.testing.assert_array_equal(_state(arrays)[key], value)
    _, again, _, grid = _run(run_dir, "fedavg", FakeClients(budget=2), rounds=5, resume=ckpt)
    assert again == 3 and {kind for kind, _ in grid.sent} == {MessageType.QUERY}  # nothing trained after resume


def test_a_client_error_stops_the_run_before_its_round_is_checkpointed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ClientFailed, match=r"^client 1 failed during training in round 2: boom in 1$"):
        _run(run_dir, "fedavg", FakeClients(crash=(2, 1)), rounds=3)
    assert load_checkpoint(run_dir).round == 1
    assert {r["round"] for r in _rows(run_dir / "ledger.csv")} == {"1"}


def test_arrays_no_reply_carries_stay_as_they_were(tmp_path: Path, monkeypatch) -> None:
    """The hijacking server's fixed pilot (``server.pilot.*``) goes out every round and never comes back: it stays."""
    fake = FakeClients()
    pilot = np.arange(4, dtype=np.float32)

    def clients(msg: Message, pid: int) -> Message:
        reply = fake(msg, pid)
        if msg.metadata.message_type == MessageType.TRAIN:
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord({k: v for k, v in arrays.items() if not k.startswith("server.")})
        return reply

    with_pilot = ArrayRecord({**initial_arrays(), "server.pilot.w": Array(pilot)})
    monkeypatch.setattr("test_driver.initial_arrays", lambda: with_pilot)
    arrays, last, _, _ = _run(tmp_path / "run", "fedavg", clients, rounds=2)
    assert last == 2 and set(_state(arrays)) == {"device.w", "head.b", "server.pilot.w"}
    np.testing.assert_array_equal(_state(arrays)["server.pilot.w"], pilot)
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "run").arrays["server.pilot.w"], pilot)
