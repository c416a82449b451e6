"""SplitFedAvg: Flower's FedAvg over the split model, with the server-hosted head and a privacy ledger.

The global model is one ArrayRecord with keys ``device.*`` (the device convnet every client trains with DP-SGD) and
``head.*`` (the server's head; each client's round trains a copy of it on that client's activations). FedAvg
averages both, weighted by each client's number of training examples: SplitFed v1's "average the head copies at
round end" and FedAvg of the device parts in one step.

Unlike plain FedAvg, a failed client reply stops the run with the client's message: a client that silently drops
out would otherwise leave its privacy spend out of the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from strategy.interception import take_intercepted
from strategy.recorder import RunRecorder


class ClientFailed(RuntimeError):
    """A client's reply carried an error instead of a result."""


def _metrics(msg: Message) -> dict:
    return dict(next(iter(msg.content.metric_records.values())))


def _raise_on_errors(replies: list[Message], phase: str) -> None:
    for msg in replies:
        if msg.has_error():
            raise ClientFailed(f"client on node {msg.metadata.src_node_id} failed during {phase}: {msg.error.reason}")


class SplitFedAvg(FedAvg):
    """FedAvg that reports every round's replies to a RunRecorder and refuses to ignore failed clients."""

    def __init__(self, recorder: RunRecorder, **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        self.recorder = recorder
        self.intercepted_training: list = []  # (partition, activations, index) sent in the last round

    def configure_train(self, server_round, arrays, config, grid):
        self.recorder.start_round()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        _raise_on_errors(replies, f"training in round {server_round}")
        taken = [t for t in map(take_intercepted, replies) if t is not None]
        if taken:
            self.intercepted_training = taken
        self.recorder.record_train(server_round, [(m.metadata.src_node_id, _metrics(m)) for m in replies])
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        _raise_on_errors(replies, f"evaluation in round {server_round}")
        self.recorder.record_evaluate(server_round, [(m.metadata.src_node_id, _metrics(m)) for m in replies])
        return super().aggregate_evaluate(server_round, replies)
