"""An in-process Grid with canned clients, for testing the ledger, the driver and interception without Ray or data.

``FakeGrid(clients)`` delivers each message at once to ``clients(msg, partition_id)`` and returns its reply, as
Flower's grid would (message ids set, replies addressed from the destination node). ``FakeClients`` answers every
message kind with the dataclasses of ``core.protocol``, like the real ClientApp but with arithmetic instead of
training: partition p adds ``(p + 1) * round / 8`` to every weight after halving it, takes 2 DP-SGD steps per round
(sigma 1.0, q 0.5) and holds ``10 * (p + 1)`` training images.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from core import protocol
from core.privacy import History, total_steps
from core.protocol import Intercepted, TrainReply

NODES = {17: 2, 5: 0, 42: 1}  # Flower node id -> partition id: node order is not partition order


def set_task_identity(monkeypatch) -> None:
    """Message() needs the run, node and task ids that run_simulation sets."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def initial_arrays() -> ArrayRecord:
    return ArrayRecord({"device.w": Array(np.zeros(3, np.float32)), "head.b": Array(np.ones(2, np.float32))})


class FakeGrid:
    """``nodes``: node id -> partition id. ``sent`` logs (message type, partition) of every message delivered."""

    def __init__(self, clients, nodes: dict[int, int] | None = None) -> None:
        self.clients = clients
        self.nodes = dict(nodes or NODES)
        self.sent: list[tuple[str, int]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            pid = self.nodes[msg.metadata.dst_node_id]
            self.sent.append((msg.metadata.message_type, pid))
            replies.append(self.clients(msg, pid))
        return replies[::-1]  # replies arrive in any order


class FakeClients:
    """Canned ClientApp for every partition. ``failing``: (round, partition) pairs that fail part-way (1 step);
    ``budget``: rounds each client may train before it answers over-budget; ``crash``: a (round, partition) whose
    train call replies with an error. ``histories`` is the clients' own state (lost when a new FakeClients is made,
    as a restarted federation loses ``context.state``)."""

    def __init__(self, failing=(), budget: int | None = None, crash: tuple[int, int] | None = None) -> None:
        self.failing = set(failing)
        self.budget = budget
        self.crash = crash
        self.histories: dict[int, History] = {}

    def __call__(self, msg: Message, pid: int) -> Message:
        kind = msg.metadata.message_type
        if kind == MessageType.QUERY and protocol.is_partition_query(msg.content):
            return protocol.PartitionReply(pid, len(NODES)).to_message(msg)
        arrays = {key: value.numpy() for key, value in msg.content[protocol.ARRAYS_KEY].items()}
        if kind == MessageType.QUERY:
            activations = np.full((pid + 1, 32, 1, 1), float(arrays["device.w"].sum()), np.float32)
            return protocol.QueryReply(Intercepted(pid, activations, np.arange(pid + 1) + 100 * pid)).to_message(msg)
        server_round = int(msg.content[protocol.CONFIG_KEY][protocol.ROUND_KEY])
        if kind == MessageType.EVALUATE:
            metrics = {
                "num-examples": 5,
                "partition-id": pid,
                "val-loss": float(arrays["device.w"].sum()),
                "val-acc": 0.1,
            }
            return protocol.EvaluateReply(metrics).to_message(msg)
        assert kind == MessageType.TRAIN
        if (server_round, pid) == self.crash:
            return Message(Error(code=0, reason=f"Exception occurred. Message: boom in {pid}"), reply_to=msg)
        own, sent = self.histories.get(pid, []), protocol.read_history(msg.content)
        history = sent if total_steps(sent) > total_steps(own) else own
        if self.budget is not None and len(history) >= self.budget:
            return self._reply(pid, history, 0, "over-budget", "not trained: budget").to_message(msg)
        steps = 1 if (server_round, pid) in self.failing else 2
        history = history + [(1.0, 0.5, steps)]
        self.histories[pid] = history
        if steps == 1:
            return self._reply(pid, history, steps, "failed", "simulated failure").to_message(msg)
        reply = self._reply(pid, history, steps, "trained", "")
        reply.arrays = ArrayRecord({k: Array(v * 0.5 + (pid + 1) * server_round / 8) for k, v in arrays.items()})
        activations = np.full((2, 32, 1, 1), server_round + pid, np.float32)
        reply.intercepted = Intercepted(pid, activations, np.array([server_round, 10 + pid]))
        return reply.to_message(msg)

    @staticmethod
    def _reply(pid: int, history: History, steps: int, status: str, message: str) -> TrainReply:
        metrics = {
            "num-examples": 10 * (pid + 1),
            "partition-id": pid,
            "train-loss": 1.0 + pid,
            "train-acc": 0.5,
            "epsilon": float(total_steps(history)),
            "delta": 1e-5,
            "sample-rate": 0.5,
            "noise-multiplier": 1.0,
            "clip": 1.0,
            "steps-round": steps,
            "steps-total": total_steps(history),
            "seconds": 0.0,
            "detect-probes": 0,
            "detect-score": float("nan"),
            "detect-alarm": 0,
        }
        return TrainReply(metrics, history, status, message)
