"""The message protocol between the ServerApp (``strategy/``) and the ClientApp (``clients/``).

Every record name and metric key lives here, and each reply has one dataclass that both sides use: the client
builds it and calls ``to_message(reply_to=msg)``, the server reads it back with ``from_message(msg)``.

Messages:
- train: ``arrays`` (the global model, keys ``device.*`` / ``head.*``), ``config`` (the RunConfig in kebab-case
  plus ``server-round``, plus whatever the server strategy adds, e.g. FedProx's ``proximal-mu``) and, when the
  server holds one, ``privacy`` (the client's accountant history). Reply: ``TrainReply``.
- evaluate: ``arrays`` and ``config``. Reply: ``EvaluateReply``.
- query with ``config.query == "partition-id"``: reply ``PartitionReply`` (the node's partition id).
- query with ``config.query == "head-fit"`` (``--head-mode refit``): ``arrays`` and ``config``; reply
  ``HeadFitReply`` (a seeded sample of the client's training images through the device model, with labels).
- any other query: ``arrays`` and ``config``; reply ``QueryReply`` (every private image through the device model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from core.privacy import History, history_from_lists, history_to_lists

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PRIVACY_KEY = "privacy"  # the accountant history: core.privacy.history_to_lists
STATUS_KEY = "status"  # {"status": one of STATUSES, "message": str}
INTERCEPTED_KEY = "intercepted"  # {"activations": float16 [n,C,H,W], "index": int64 [n]}
QUERY_KEY = "query"  # in a query's config: what is asked
QUERY_PARTITION_ID = "partition-id"  # value of config["query"] for the start-up question
QUERY_HEAD_FIT = "head-fit"  # value of config["query"] when the server refits its head (--head-mode refit)
HEAD_FIT_KEY = "head-fit"  # {"activations": float32 [n,C,H,W], "labels": int64 [n]}
ROUND_KEY = "server-round"  # in the train / evaluate config
# In a train config: stop after this share of the round's steps and reply "failed" (set only by the test seam,
# clients/fault_injection.py; the steps taken are still accounted).
FAIL_AT_KEY = "fail-at"

STATUSES = ("trained", "failed", "over-budget")

# What the server records of a client's activations (``Intercepted.compact``): float16 always, and at most
# RECORD_ROWS rows (a seeded sample) where one row holds over RECORD_ALL_UP_TO values: cut 1's 32x33x33 rows are
# 70 KB each in float16, 1.7 GB for every image of 20 clients; cut 2's 32x13x13 (11 KB) are kept whole.
RECORD_ROWS, RECORD_ALL_UP_TO = 256, 8192

# Metric keys of each reply (MetricRecord values are int or float).
TRAIN_METRICS = (
    "num-examples",  # training images (FedAvg's weight)
    "partition-id",
    "train-loss",  # mean cross-entropy over the round's batches (nan when not trained)
    "train-acc",
    "epsilon",  # the client's composed spend after the round, at "delta"
    "delta",
    "sample-rate",  # Poisson rate q of its last DP-SGD step
    "noise-multiplier",
    "clip",  # per-sample L2 bound (inf without DP)
    "steps-round",  # DP-SGD steps taken this round
    "steps-total",  # every step the client ever took
    "seconds",  # wall time of the round on the client
    "detect-probes",  # --detect: label probes sent this round (clients.detector)
    "detect-score",  # their mean cosine (nan when none)
    "detect-alarm",  # 1 when the client's detector alarmed this round (score >= --detect-threshold), else 0
)
EVALUATE_METRICS = ("num-examples", "partition-id", "val-loss", "val-acc")


class Intercepted(NamedTuple):
    """What one client sent across the cut: activations [n,C,H,W] (float16 once ``compact``) and each row's image,
    int64 [n] (row in the evaluation set; for scoring only).

    device: for training-time records, the device weights (``DeviceNet`` state, numpy) the client sent back at the
    end of that round, which the server holds anyway: the model that produced these activations. The server fills
    it in from the reply's arrays; it does not travel inside the record.
    """

    partition: int
    activations: np.ndarray
    index: np.ndarray
    device: dict[str, np.ndarray] | None = None

    def compact(self, seed: int) -> Intercepted:
        """What the server keeps of this record: float16 activations, and where a row holds more than
        ``RECORD_ALL_UP_TO`` values a sample of ``RECORD_ROWS`` rows (in their order) drawn by (seed, partition)."""
        keep = np.arange(len(self.index))
        if int(np.prod(self.activations.shape[1:])) > RECORD_ALL_UP_TO and len(keep) > RECORD_ROWS:
            rng = np.random.default_rng([seed, self.partition, 5])
            keep = np.sort(rng.permutation(len(keep))[:RECORD_ROWS])
        return self._replace(activations=self.activations[keep].astype(np.float16), index=self.index[keep])

    def to_record(self) -> ArrayRecord:
        return ArrayRecord({"activations": Array(self.activations), "index": Array(self.index.astype(np.int64))})

    @classmethod
    def from_record(cls, record: ArrayRecord, partition: int) -> Intercepted:
        return cls(partition, record["activations"].numpy(), record["index"].numpy())


def history_record(history: History) -> ConfigRecord:
    """A ConfigRecord holding an accountant history [(sigma, q, steps)]."""
    return ConfigRecord(history_to_lists(history))


def read_history(content: RecordDict) -> History:
    """The accountant history in ``content`` (a message's content or a client's ``context.state``); [] if none."""
    record = content.config_records.get(PRIVACY_KEY)
    return history_from_lists(dict(record)) if record else []


def partition_query(config: ConfigRecord) -> RecordDict:
    """The content of the start-up query that asks a node for its partition id."""
    return RecordDict({CONFIG_KEY: ConfigRecord({**config, QUERY_KEY: QUERY_PARTITION_ID})})


def is_partition_query(content: RecordDict) -> bool:
    return content.config_records.get(CONFIG_KEY, {}).get(QUERY_KEY) == QUERY_PARTITION_ID


def head_fit_query(arrays: ArrayRecord, config: ConfigRecord, server_round: int) -> RecordDict:
    """The content of the query that asks for head-fitting activations through the global model in ``arrays``."""
    asked = ConfigRecord({**config, QUERY_KEY: QUERY_HEAD_FIT, ROUND_KEY: server_round})
    return RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: asked})


def is_head_fit_query(content: RecordDict) -> bool:
    return content.config_records.get(CONFIG_KEY, {}).get(QUERY_KEY) == QUERY_HEAD_FIT


@dataclass
class HeadFitReply:
    """A client's answer to the head-fit query: a seeded sample of its training images through the received device
    model and their labels (what the server's head is refitted on). activations float32 [n,C,H,W], labels int64 [n].
    """

    partition: int
    activations: np.ndarray
    labels: np.ndarray

    def to_message(self, reply_to: Message) -> Message:
        record = ArrayRecord({"activations": Array(self.activations), "labels": Array(self.labels.astype(np.int64))})
        content = RecordDict({HEAD_FIT_KEY: record, METRICS_KEY: MetricRecord({"partition-id": self.partition})})
        return Message(content, reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> HeadFitReply:
        record = msg.content[HEAD_FIT_KEY]
        partition = int(msg.content[METRICS_KEY]["partition-id"])
        return cls(partition, record["activations"].numpy(), record["labels"].numpy())


@dataclass
class TrainReply:
    """A client's answer to a train message.

    ``metrics``: the TRAIN_METRICS keys (int | float). ``history``: the client's whole accountant history after the
    round, [(sigma, q, steps)]. ``status``: one of STATUSES, ``message`` says why when not ``trained``.
    ``arrays``: the trained model (``device.*`` / ``head.*``), only when trained. ``intercepted``: the activations
    it sent across the cut, in its last training round only.
    """

    metrics: dict[str, int | float]
    history: History
    status: str = "trained"
    message: str = ""
    arrays: ArrayRecord | None = None
    intercepted: Intercepted | None = None

    @property
    def partition_id(self) -> int:
        return int(self.metrics["partition-id"])

    def to_content(self) -> RecordDict:
        assert set(self.metrics) == set(TRAIN_METRICS), sorted(set(self.metrics) ^ set(TRAIN_METRICS))
        assert self.status in STATUSES and (self.arrays is not None) == (self.status == "trained")
        content = RecordDict(
            {
                METRICS_KEY: MetricRecord(self.metrics),
                STATUS_KEY: ConfigRecord({"status": self.status, "message": self.message}),
                PRIVACY_KEY: history_record(self.history),
            }
        )
        if self.arrays is not None:
            content[ARRAYS_KEY] = self.arrays
        if self.intercepted is not None:
            content[INTERCEPTED_KEY] = self.intercepted.to_record()
        return content

    def to_message(self, reply_to: Message) -> Message:
        return Message(self.to_content(), reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> TrainReply:
        """Read a reply (one without an error). A reply without ``status`` counts as ``trained``."""
        content = msg.content
        metrics = dict(content[METRICS_KEY])
        status = content.config_records.get(STATUS_KEY)
        intercepted = content.array_records.get(INTERCEPTED_KEY)
        return cls(
            metrics=metrics,
            history=history_from_lists(dict(content[PRIVACY_KEY])),
            status=str(status["status"]) if status else "trained",
            message=str(status["message"]) if status else "",
            arrays=content.array_records.get(ARRAYS_KEY),
            intercepted=Intercepted.from_record(intercepted, int(metrics["partition-id"])) if intercepted else None,
        )

    def aggregation_content(self) -> RecordDict:
        """What a Flower strategy's ``aggregate_train`` takes: exactly one ArrayRecord and one MetricRecord."""
        assert self.arrays is not None, "only a trained reply is aggregated"
        return RecordDict({ARRAYS_KEY: self.arrays, METRICS_KEY: MetricRecord(self.metrics)})


@dataclass
class EvaluateReply:
    """A client's validation of the global model: ``metrics`` with the EVALUATE_METRICS keys."""

    metrics: dict[str, int | float]

    @property
    def partition_id(self) -> int:
        return int(self.metrics["partition-id"])

    def to_message(self, reply_to: Message) -> Message:
        assert set(self.metrics) == set(EVALUATE_METRICS), sorted(set(self.metrics) ^ set(EVALUATE_METRICS))
        return Message(RecordDict({METRICS_KEY: MetricRecord(self.metrics)}), reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> EvaluateReply:
        return cls(dict(msg.content[METRICS_KEY]))


@dataclass
class PartitionReply:
    """A node's answer to the partition-id query: its partition id and the number of partitions it was told of."""

    partition_id: int
    num_partitions: int

    def to_message(self, reply_to: Message) -> Message:
        ids = MetricRecord({"partition-id": self.partition_id, "num-partitions": self.num_partitions})
        return Message(RecordDict({METRICS_KEY: ids}), reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> PartitionReply:
        ids = msg.content[METRICS_KEY]
        return cls(int(ids["partition-id"]), int(ids["num-partitions"]))


@dataclass
class QueryReply:
    """A client's answer to the inference query: every private image of it through the received device model."""

    intercepted: Intercepted

    def to_message(self, reply_to: Message) -> Message:
        content = RecordDict(
            {
                INTERCEPTED_KEY: self.intercepted.to_record(),
                METRICS_KEY: MetricRecord({"partition-id": self.intercepted.partition}),
            }
        )
        return Message(content, reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> QueryReply:
        partition = int(msg.content[METRICS_KEY]["partition-id"])
        return cls(Intercepted.from_record(msg.content[INTERCEPTED_KEY], partition))
