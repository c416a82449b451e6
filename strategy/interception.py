"""The curious server's records of what crossed the cut (``core.rundir.RunDir.save_intercepted`` writes them).

Two interception points:
- ``inference``: after training, every client sends all its private images (train and validation) through the final
  global device model; the server sees those activations (``query`` messages to every client).
- ``train``: the activations each client sent during the last training round, from its *local* model mid-training
  (Poisson-sampled batches, so an image can appear several times or not at all).

Arrays in the file (N rows for inference, M for train): ``<point>_activations`` float16 [.,C,H,W] (the cut's
shape; at cut 1 a seeded 256 rows per client, ``core.protocol.Intercepted.compact``),
``<point>_partition`` int64 (client partition id), ``<point>_index`` int64 (row in the evaluation set, sorted
file order). The index is the experimenter's ground truth for scoring; the attack never uses it to reconstruct.
For the ``train`` point, ``train_device_<partition>/<name>`` holds the device weights that client sent back at the
end of that round (the server's copy of the model that produced the activations).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from core.protocol import ARRAYS_KEY, CONFIG_KEY, Intercepted, QueryReply


def latest_per_client(kept: list[Intercepted], new: Iterable[Intercepted]) -> list[Intercepted]:
    """Each client's most recent record, sorted by partition: ``new`` replaces a client's entry in ``kept``."""
    latest = {record.partition: record for record in kept}
    latest.update({record.partition: record for record in new})
    return [latest[pid] for pid in sorted(latest)]


def query_every_client(grid: Grid, content: RecordDict, what: str, timeout: float = 3600) -> list[Message]:
    """Send the query ``content`` to every node and return the replies; raises if a client failed to answer
    (``what`` names the query in that message)."""
    messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"client on node {reply.metadata.src_node_id} failed to answer {what}: {reply.error}")
    return replies


def query_activations(
    grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float = 3600
) -> list[Intercepted]:
    """Ask every client for its images' activations through the model in ``arrays``; raises if a client failed."""
    content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
    return [QueryReply.from_message(r).intercepted for r in query_every_client(grid, content, "the query", timeout)]
