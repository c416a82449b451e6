"""LedgerStrategy: wraps any Flower strategy with the privacy ledger, partition-id addressing and failure handling.

In the spirit of Flower's ``DifferentialPrivacyClientSideFixedClipping(strategy, ...)``: the cross-cutting concern
wraps a strategy and delegates the aggregation, so FedAvg, FedAvgM, FedAdam or FedProx (strategy/registry.py)
aggregate the same split model. The global model is one ArrayRecord with keys ``device.*`` (the device convnet
every client trains with DP-SGD) and ``head.*`` (the server's head; each client's round trains a copy of it):
averaging both at round end is SplitFed v1's "average the head copies" and FedAvg of the device parts in one step.

What the wrapper owns, and why:
- Clients are addressed by partition id, not Flower node id (node ids change every run): the server asks each node
  for its partition id once (``identify``), samples partitions with an RNG seeded by (seed, round), and hands the
  replies to the inner strategy in partition order, so the same seed gives the same run (the same float sums),
  and a resumed run continues the same sequence.
- The server keeps every client's accountant history (each reply carries it) for its checkpoints, and sends it
  back with each train message.
- A train reply has a status: ``trained`` (aggregated), ``over-budget`` (``--max-epsilon``: the client did not
  train) or ``failed`` (``--fail-rate``: its steps are accounted, its weights dropped). All are in the ledger.
- A reply that carries an *error* (an exception in the ClientApp, a dead worker), or a missing reply, stops the run
  with the client's message: a client that silently drops out would leave its privacy spend out of the ledger.
- The activations each client sent across the cut in its last training round (the curious server's records).

What the inner strategy does: its ``configure_train`` output gives each round's train config and arrays (e.g.
FedProx adds ``proximal-mu``; FedAdam records the arrays it will step from), its ``aggregate_train`` aggregates the
trained replies, and ``configure_evaluate`` / ``aggregate_evaluate`` run the evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from core.privacy import History, total_steps
from core.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    PRIVACY_KEY,
    EvaluateReply,
    Intercepted,
    PartitionReply,
    TrainReply,
    history_record,
    partition_query,
)
from strategy.interception import latest_per_client
from strategy.recorder import RunRecorder


class ClientFailed(RuntimeError):
    """A client's reply carried an error instead of a result. ``details``: the error as Flower reported it."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


def error_line(reason: str) -> str:
    """The client's own exception message out of Flower's error reason (which wraps Ray's remote traceback)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:  # "Exception ClientAppException occurred. Message: <the client's message>"
            return line.split("Message:", 1)[1].strip().removesuffix("'>").strip()
    return lines[-1] if lines else "(no reason given)"


def raise_on_errors(replies: list[Message], phase: str, partition_of: dict[int, int] | None = None) -> None:
    """Raise ClientFailed for the first reply that carries an error; ``phase`` names what the client was doing."""
    for msg in replies:
        if msg.has_error():
            node = msg.metadata.src_node_id
            who = f"client {partition_of[node]}" if partition_of and node in partition_of else f"client on node {node}"
            raise ClientFailed(f"{who} failed during {phase}: {error_line(msg.error.reason)}", msg.error.reason)


def device_weights(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The ``device.*`` part of a joined model record, as a DeviceNet state dict of numpy arrays."""
    return {key[len("device.") :]: value.numpy() for key, value in arrays.items() if key.startswith("device.")}


class LedgerStrategy(Strategy):
    """Any Flower ``strategy`` by partition id, with accountant histories kept on the server, every train reply in
    the ledger, and failed clients never ignored.

    ``recorder`` writes the ledger and metrics; ``seed`` seeds client sampling; ``clients`` is the number of
    partitions expected in the federation; each round ``max(int(clients * fraction_train), min_train_nodes)`` of
    them train.
    """

    def __init__(
        self,
        strategy: Strategy,
        recorder: RunRecorder,
        seed: int,
        clients: int,
        fraction_train: float = 1.0,
        min_train_nodes: int = 1,
    ) -> None:
        self.strategy = strategy
        self.recorder = recorder
        self.seed = seed
        self.clients = clients
        self.fraction_train = fraction_train
        self.min_train_nodes = min_train_nodes
        self.partition_of: dict[int, int] = {}  # Flower node id -> partition id
        self.histories: dict[int, History] = {}  # partition id -> accountant history (the server's copy)
        self.over_budget: set[int] = set()  # partitions whose next round would pass --max-epsilon
        self.asked: list[int] = []  # partitions sent a train message this round
        self.intercepted_training: list[Intercepted] = []  # each client's last training round, by partition

    # --- who is who ------------------------------------------------------------------------------------------

    def identify(self, grid: Grid, config: ConfigRecord, wait_s: float = 600.0) -> dict[int, int]:
        """Wait for ``clients`` nodes and ask each for its partition id; checks that they are exactly 0..clients-1."""
        deadline = time.monotonic() + wait_s
        while len(nodes := sorted(grid.get_node_ids())) < self.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {self.clients} clients connected within {wait_s:.0f} s")
            time.sleep(1.0)
        messages = [
            Message(partition_query(config), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=wait_s))
        raise_on_errors(replies, "start-up (partition id query)")
        self.partition_of = {m.metadata.src_node_id: PartitionReply.from_message(m).partition_id for m in replies}
        found = sorted(self.partition_of.values())
        if found != list(range(self.clients)):
            raise RuntimeError(f"the nodes report partition ids {found}; expected each of 0..{self.clients - 1} once")
        return self.partition_of

    def sample(self, server_round: int) -> list[int]:
        """The partition ids that train in ``server_round``, drawn by an RNG seeded (seed, round)."""
        count = max(int(self.clients * self.fraction_train), self.min_train_nodes)
        rng = np.random.default_rng([self.seed, server_round])
        return sorted(int(p) for p in rng.choice(self.clients, size=min(count, self.clients), replace=False))

    # --- one round ---------------------------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per sampled partition: the inner strategy's records (arrays, config with
        ``server-round`` and whatever it adds) plus, when the server holds one, the client's accountant history."""
        self.recorder.start_round()
        # The inner strategy samples nodes its own way; only the records it would send are kept (the FedAvg family
        # sends every node the same). Calling it also lets a server optimiser note the arrays it steps from.
        inner = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
        assert inner, f"{type(self.strategy).__name__} sent no train message; build it with fraction_train=1.0"
        template = inner[0].content
        assert ARRAYS_KEY in template and CONFIG_KEY in template, sorted(template)
        node_of = {pid: node for node, pid in self.partition_of.items()}
        self.asked = self.sample(server_round)
        messages = []
        for pid in self.asked:
            content = RecordDict(dict(template.items()))
            if self.histories.get(pid):
                content[PRIVACY_KEY] = history_record(self.histories[pid])
            messages.append(Message(content, dst_node_id=node_of[pid], message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record every reply in the ledger, then let the inner strategy aggregate the trained ones, in partition
        order. Raises ClientFailed for an error reply or a client asked to train that did not reply."""
        replies = list(replies)
        raise_on_errors(replies, f"training in round {server_round}", self.partition_of)
        received = sorted(((TrainReply.from_message(m), m) for m in replies), key=lambda rm: rm[0].partition_id)
        missing = sorted(set(self.asked) - {reply.partition_id for reply, _ in received})
        if missing:  # Flower drops replies that time out; their steps would be missing from the ledger
            raise ClientFailed(f"client(s) {missing} sent no reply in round {server_round} (timed out)", "")
        # Each record keeps the device weights sent with it: the attacker decodes them with the model that made them.
        new = [
            reply.intercepted._replace(device=device_weights(reply.arrays))
            for reply, _ in received
            if reply.intercepted is not None and reply.arrays is not None
        ]
        self.intercepted_training = latest_per_client(self.intercepted_training, new)
        rows = []
        for reply, msg in received:
            pid = reply.partition_id
            assert total_steps(reply.history) >= total_steps(self.histories.get(pid, [])), "a client's history shrank"
            self.histories[pid] = reply.history
            if reply.status == "over-budget":
                self.over_budget.add(pid)
            rows.append((msg.metadata.src_node_id, dict(reply.metrics, status=reply.status, message=reply.message)))
        self.recorder.record_train(server_round, rows)
        trained = []
        for reply, msg in received:
            if reply.status == "trained":
                msg.content = reply.aggregation_content()  # Flower's strategies want one ArrayRecord, one MetricRecord
                trained.append(msg)
        return self.strategy.aggregate_train(server_round, trained)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Completes the round in the recorder (metrics.csv, the terminal table); raises ClientFailed on an error."""
        replies = list(replies)
        raise_on_errors(replies, f"evaluation in round {server_round}", self.partition_of)
        rows = [(m.metadata.src_node_id, EvaluateReply.from_message(m).metrics) for m in replies]
        self.recorder.record_evaluate(server_round, rows)
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Ledger: %d partitions, fraction_train %.2f, seed %d",
            self.clients,
            self.fraction_train,
            self.seed,
        )
        self.strategy.summary()

    # --- state for checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What the ledger must carry over a restart: histories {partition: [(sigma, q, steps)]}, the partitions
        over budget, and the intercepted training activations [(partition, activations, index)]."""
        return {
            "histories": {pid: list(h) for pid, h in self.histories.items()},
            "over_budget": sorted(self.over_budget),
            "intercepted_training": list(self.intercepted_training),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.histories = {int(pid): list(h) for pid, h in state["histories"].items()}
        self.over_budget = {int(pid) for pid in state["over_budget"]}
        self.intercepted_training = [Intercepted(*t) for t in state["intercepted_training"]]

    def all_over_budget(self) -> bool:
        """True once every client has answered ``over-budget``: none of them can train any more."""
        return len(self.over_budget) == self.clients
