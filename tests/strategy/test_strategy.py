"""strategy/ledger.py and strategy/registry.py: the ledger around any Flower strategy, and the strategies by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fake_grid import NODES, FakeClients, FakeGrid, initial_arrays, set_task_identity
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from rich.console import Console

from core.config import RunConfig
from core.protocol import PRIVACY_KEY, read_history
from simulation.registries import choices
from strategy.ledger import ClientFailed, LedgerStrategy, error_line
from strategy.recorder import RunRecorder
from strategy.registry import REGISTRY, FedAvgMState, build_strategy


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch) -> None:
    set_task_identity(monkeypatch)


def _ledger(tmp_path, inner, clients: int = 2) -> LedgerStrategy:
    recorder = RunRecorder(tmp_path, RunConfig(clients=clients), Console(file=io.StringIO()))
    return LedgerStrategy(inner, recorder, seed=0, clients=clients)


def test_registry_has_every_strategy_the_config_offers() -> None:
    assert tuple(REGISTRY) == choices("strategy")  # the --strategy choices are the registry's own keys


@pytest.mark.parametrize(
    ("name", "kind", "flwr_default"),
    [("fedavgm", FedAvgM, 1.0), ("fedadam", FedAdam, 0.1), ("fedyogi", FedYogi, 0.01)],
)
def test_server_lr_zero_is_flowers_default(name: str, kind: type, flwr_default: float) -> None:
    lr = "server_learning_rate" if name == "fedavgm" else "eta"
    default = build_strategy(RunConfig(clients=4, strategy=name))
    assert type(default) is kind and getattr(default, lr) == flwr_default
    assert getattr(build_strategy(RunConfig(clients=4, strategy=name, server_lr=0.3)), lr) == 0.3


def test_builders_apply_their_settings() -> None:
    fedavgm = build_strategy(RunConfig(clients=4, strategy="fedavgm", server_momentum=0.5))
    assert fedavgm.server_momentum == 0.5 and fedavgm.server_opt
    fedprox = build_strategy(RunConfig(clients=4, strategy="fedprox", proximal_mu=0.2))
    assert type(fedprox) is FedProx and fedprox.proximal_mu == 0.2
    fedavg = build_strategy(RunConfig(clients=4, fraction_train=0.5))
    assert type(fedavg) is FedAvg and fedavg.fraction_train == 1.0  # the ledger samples, not the inner strategy
    assert fedavg.min_available_nodes == 4


def test_train_messages_carry_the_inner_strategys_config_and_the_servers_history(tmp_path) -> None:
    ledger = _ledger(tmp_path, build_strategy(RunConfig(clients=3, strategy="fedprox", proximal_mu=0.2)), clients=3)
    ledger.partition_of = dict(NODES)
    ledger.histories = {1: [(0.5, 0.25, 4)]}
    grid = FakeGrid(FakeClients())
    sent = list(ledger.configure_train(2, initial_arrays(), ConfigRecord({"lr": 0.005}), grid))
    node_of = {pid: node for node, pid in NODES.items()}
    assert [m.metadata.dst_node_id for m in sent] == [node_of[p] for p in range(3)]  # by partition, seeded
    for msg in sent:
        assert dict(msg.content["config"]) == {"lr": 0.005, "server-round": 2, "proximal-mu": 0.2}
        np.testing.assert_array_equal(msg.content["arrays"]["head.b"].numpy(), [1.0, 1.0])
    assert [read_history(m.content) for m in sent] == [[], [(0.5, 0.25, 4)], []]
    assert PRIVACY_KEY not in sent[0].content
    ledger.recorder.close()


def test_ledger_samples_by_seed_and_round() -> None:
    ledger = LedgerStrategy(FedAvg(), recorder=None, seed=0, clients=3, fraction_train=0.67)
    assert [ledger.sample(r) for r in (1, 2, 3, 4)] == [[1, 2], [0, 1], [1, 2], [0, 2]]
    assert LedgerStrategy(FedAvg(), None, seed=0, clients=3, fraction_train=0.1).sample(1) != []  # at least one


def _train_reply(node: int, pid: int, value: float, n: int, arrays: bool = True) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    instruction.metadata.__dict__["_message_id"] = f"m{node}"
    metrics = {
        "num-examples": n,
        "partition-id": pid,
        "train-loss": 1.0,
        "train-acc": 0.5,
        "epsilon": 1.0,
        "delta": 1e-5,
        "sample-rate": 0.5,
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "steps-round": 1,
        "steps-total": 1,
        "seconds": 0.1,
    }
    history = ConfigRecord({"noise": [1.0], "sample-rate": [0.5], "steps": [1]})
    content = RecordDict({"metrics": MetricRecord(metrics), "privacy": history})
    if arrays:
        content["arrays"] = ArrayRecord({"device.w": torch.full((2,), value), "head.b": torch.full((1,), 2 * value)})
    return Message(content, reply_to=instruction)


def test_fedavg_weights_by_train_examples(tmp_path) -> None:
    """Two clients with 1 and 3 examples: the average is (1*a + 3*b) / 4 for device and head keys alike."""
    ledger = _ledger(tmp_path, FedAvg(min_train_nodes=1, min_available_nodes=1))
    ledger.asked = [0, 1]
    arrays, _ = ledger.aggregate_train(1, [_train_reply(1, 0, 1.0, 1), _train_reply(2, 1, 5.0, 3)])
    state = arrays.to_torch_state_dict()
    torch.testing.assert_close(state["device.w"], torch.full((2,), 4.0))  # (1*1 + 3*5) / 4
    torch.testing.assert_close(state["head.b"], torch.full((1,), 8.0))
    ledger.recorder.close()
    assert len((tmp_path / "ledger.csv").read_text().strip().splitlines()) == 3  # header + 2 clients
    assert ledger.histories == {0: [(1.0, 0.5, 1)], 1: [(1.0, 0.5, 1)]}


def test_a_missing_train_reply_stops_the_run(tmp_path) -> None:
    """A client asked to train that never replies (Flower's timeout drops it) must not vanish from the ledger."""
    ledger = _ledger(tmp_path, FedAvg(min_train_nodes=1, min_available_nodes=1))
    ledger.partition_of = {11: 0, 12: 1}
    grid = FakeGrid(FakeClients(), nodes={11: 0, 12: 1})
    sent = ledger.configure_train(1, ArrayRecord({"device.w": torch.zeros(2)}), ConfigRecord({}), grid)
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]
    with pytest.raises(ClientFailed, match=r"client\(s\) \[1\] sent no reply in round 1"):
        ledger.aggregate_train(1, [_train_reply(11, 0, 1.0, 1)])
    ledger.recorder.close()


def test_fedavgm_state_round_trip() -> None:
    cfg = RunConfig(clients=2, strategy="fedavgm")
    first, second = build_strategy(cfg), build_strategy(cfg)
    first.current_arrays = ArrayRecord({"device.w": torch.arange(3.0), "head.b": torch.ones(1)})
    first.momentum_vector = [np.array([0.5, -1.0, 2.0], np.float32), np.array([0.25], np.float32)]
    FedAvgMState().load_state_dict(second, FedAvgMState().state_dict(first))
    assert list(second.current_arrays) == ["device.w", "head.b"]
    np.testing.assert_array_equal(second.current_arrays["device.w"].numpy(), [0.0, 1.0, 2.0])
    for a, b in zip(first.momentum_vector, second.momentum_vector, strict=True):
        np.testing.assert_array_equal(a, b)
    empty = FedAvgMState().state_dict(build_strategy(cfg))
    assert empty == {"current_arrays": None, "momentum_vector": None}


def test_error_line_is_the_clients_own_message() -> None:
    reason = (
        "Traceback ...\n  raise ClientAppException(str(ex))\nException ClientAppException occurred. Message: boom'>"
    )
    assert error_line(reason) == "boom"
    assert error_line("worker process has died\n") == "worker process has died"
    assert error_line("") == "(no reason given)"
