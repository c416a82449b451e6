"""SplitFedAvg: Flower's FedAvg over the split model, with the server-hosted head and a privacy ledger.

The global model is one ArrayRecord with keys ``device.*`` (the device convnet every client trains with DP-SGD) and
``head.*`` (the server's head; each client's round trains a copy of it on that client's activations). FedAvg
averages both, weighted by each client's number of training examples: SplitFed v1's "average the head copies at
round end" and FedAvg of the device parts in one step.

What differs from plain FedAvg, and why:
- Clients are addressed by partition id, not Flower node id (node ids change every run): the server asks each node
  for its partition id once, samples partitions with an RNG seeded by (seed, round), and averages replies in
  partition order, so the same seed gives the same run, and a resumed run continues the same sequence.
- The server keeps every client's accountant history (each reply carries it) for its checkpoints, and sends it
  back with each train message.
- A train reply has a status: ``trained`` (averaged), ``over-budget`` (``--max-epsilon``: the client did not
  train) or ``failed`` (``--fail-rate``: its steps are accounted, its weights dropped). Both are in the ledger.
- A reply that carries an *error* (an exception in the ClientApp, a dead worker) stops the run with the client's
  message: a client that silently drops out would otherwise leave its privacy spend out of the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from core.privacy import History, history_from_lists, history_to_lists, total_steps
from core.protocol import PRIVACY_KEY, STATUS_KEY
from strategy.interception import take_intercepted
from strategy.recorder import RunRecorder


class ClientFailed(RuntimeError):
    """A client's reply carried an error instead of a result. ``details``: the error as Flower reported it."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


def _metrics(msg: Message) -> dict:
    return dict(next(iter(msg.content.metric_records.values())))


def error_line(reason: str) -> str:
    """The client's own exception message out of Flower's error reason (which wraps Ray's remote traceback)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:  # "Exception ClientAppException occurred. Message: <the client's message>"
            return line.split("Message:", 1)[1].strip().removesuffix("'>").strip()
    return lines[-1] if lines else "(no reason given)"


def _raise_on_errors(replies: list[Message], phase: str, partition_of: dict[int, int] | None = None) -> None:
    for msg in replies:
        if msg.has_error():
            node = msg.metadata.src_node_id
            who = f"client {partition_of[node]}" if partition_of and node in partition_of else f"client on node {node}"
            raise ClientFailed(f"{who} failed during {phase}: {error_line(msg.error.reason)}", msg.error.reason)


def _status(msg: Message) -> tuple[str, str]:
    record = msg.content.config_records.get(STATUS_KEY)
    return (str(record["status"]), str(record["message"])) if record else ("trained", "")


class SplitFedAvg(FedAvg):
    """FedAvg by partition id, with accountant histories kept on the server and failed clients never ignored.

    ``seed`` seeds client sampling; ``clients`` is the number of partitions expected in the federation.
    """

    def __init__(self, recorder: RunRecorder, seed: int, clients: int, **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        self.recorder = recorder
        self.seed = seed
        self.clients = clients
        self.partition_of: dict[int, int] = {}  # Flower node id -> partition id
        self.histories: dict[int, History] = {}  # partition id -> accountant history (the server's copy)
        self.over_budget: set[int] = set()  # partitions whose next round would pass --max-epsilon
        self.asked: list[int] = []  # partitions sent a train message this round
        self.intercepted_training: list = []  # (partition, activations, index) sent in each client's last round

    # --- who is who ------------------------------------------------------------------------------------------

    def identify(self, grid: Grid, config: ConfigRecord, wait_s: float = 600.0) -> dict[int, int]:
        """Wait for ``clients`` nodes and ask each for its partition id; checks that they are exactly 0..clients-1."""
        deadline = time.monotonic() + wait_s
        while len(nodes := sorted(grid.get_node_ids())) < self.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {self.clients} clients connected within {wait_s:.0f} s")
            time.sleep(1.0)
        ask = ConfigRecord({**config, "query": "partition-id"})
        messages = [
            Message(RecordDict({"config": ask}), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=wait_s))
        _raise_on_errors(replies, "start-up (partition id query)")
        self.partition_of = {m.metadata.src_node_id: int(_metrics(m)["partition-id"]) for m in replies}
        found = sorted(self.partition_of.values())
        if found != list(range(self.clients)):
            raise RuntimeError(f"the nodes report partition ids {found}; expected each of 0..{self.clients - 1} once")
        return self.partition_of

    def sample(self, server_round: int) -> list[int]:
        """The partition ids that train in ``server_round``: FedAvg's count, drawn by an RNG seeded (seed, round)."""
        count = max(int(self.clients * self.fraction_train), self.min_train_nodes)
        rng = np.random.default_rng([self.seed, server_round])
        return sorted(int(p) for p in rng.choice(self.clients, size=min(count, self.clients), replace=False))

    # --- one round ---------------------------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.recorder.start_round()
        node_of = {pid: node for node, pid in self.partition_of.items()}
        config = ConfigRecord({**config, "server-round": server_round})
        messages = []
        self.asked = self.sample(server_round)
        for pid in self.asked:
            content = RecordDict({"arrays": arrays, "config": config})
            if self.histories.get(pid):
                content[PRIVACY_KEY] = ConfigRecord(history_to_lists(self.histories[pid]))
            messages.append(Message(content, dst_node_id=node_of[pid], message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        _raise_on_errors(replies, f"training in round {server_round}", self.partition_of)
        replies.sort(key=lambda m: _metrics(m)["partition-id"])  # float sums in a fixed order: same seed, same bits
        missing = sorted(set(self.asked) - {int(_metrics(m)["partition-id"]) for m in replies})
        if missing:  # Flower drops replies that time out; their steps would be missing from the ledger
            raise ClientFailed(f"client(s) {missing} sent no reply in round {server_round} (timed out)", "")
        latest = {t[0]: t for t in self.intercepted_training}  # each client's last training round
        latest.update({t[0]: t for t in map(take_intercepted, replies) if t is not None})
        self.intercepted_training = [latest[pid] for pid in sorted(latest)]
        rows = []
        for msg in replies:
            metrics, (status, message) = _metrics(msg), _status(msg)
            pid = int(metrics["partition-id"])
            history = history_from_lists(dict(msg.content[PRIVACY_KEY]))
            assert total_steps(history) >= total_steps(self.histories.get(pid, [])), "a client's history shrank"
            self.histories[pid] = history
            if status == "over-budget":
                self.over_budget.add(pid)
            rows.append((msg.metadata.src_node_id, dict(metrics, status=status, message=message)))
        self.recorder.record_train(server_round, rows)
        trained = [m for m in replies if _status(m)[0] == "trained"]
        for msg in trained:  # FedAvg wants exactly one ArrayRecord and one MetricRecord per reply
            for key in (PRIVACY_KEY, STATUS_KEY):
                if key in msg.content:
                    del msg.content[key]
        return super().aggregate_train(server_round, trained)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        _raise_on_errors(replies, f"evaluation in round {server_round}", self.partition_of)
        self.recorder.record_evaluate(server_round, [(m.metadata.src_node_id, _metrics(m)) for m in replies])
        return super().aggregate_evaluate(server_round, replies)

    # --- the rounds --------------------------------------------------------------------------------------------

    def run_rounds(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        first_round: int,
        num_rounds: int,
        config: ConfigRecord,
        on_round_end: Callable[[int, ArrayRecord], None],
        timeout: float = 3600,
    ) -> tuple[ArrayRecord, int]:
        """Rounds ``first_round..num_rounds`` (train, then evaluate every client); returns (arrays, last round run).

        ``on_round_end(round, arrays)`` runs after each complete round (the checkpoint). Stops early, before
        ``num_rounds``, once every client has answered ``over-budget``: none of them can train any more.
        """
        for server_round in range(first_round, num_rounds + 1):
            if len(self.over_budget) == self.clients:  # a resumed run that had already stopped
                return arrays, server_round - 1
            replies = grid.send_and_receive(self.configure_train(server_round, arrays, config, grid), timeout=timeout)
            new_arrays, _ = self.aggregate_train(server_round, replies)
            arrays = new_arrays if new_arrays is not None else arrays
            replies = grid.send_and_receive(
                self.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid), timeout=timeout
            )
            self.aggregate_evaluate(server_round, replies)
            on_round_end(server_round, arrays)
            if len(self.over_budget) == self.clients:
                return arrays, server_round
        return arrays, num_rounds
