"""The curious server's records of what crossed the cut, saved as ``intercepted.npz`` in the run directory.

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
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from core import files
from core.protocol import ARRAYS_KEY, CONFIG_KEY, Intercepted, QueryReply

POINTS = ("inference", "train")


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


DEVICE_PREFIX = "train_device_"


def _stack(parts: list[Intercepted], point: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    parts = sorted(parts, key=lambda p: p.partition)
    if not parts:
        return {
            f"{point}_activations": np.zeros((0, *shape), np.float16),
            f"{point}_partition": np.zeros(0, np.int64),
            f"{point}_index": np.zeros(0, np.int64),
        }
    stacked = {
        f"{point}_activations": np.concatenate([p.activations for p in parts]).astype(np.float16),
        f"{point}_partition": np.concatenate([np.full(len(p.index), p.partition, np.int64) for p in parts]),
        f"{point}_index": np.concatenate([p.index for p in parts]).astype(np.int64),
    }
    for p in parts:
        for name, value in (p.device or {}).items():
            stacked[f"{DEVICE_PREFIX}{p.partition}/{name}"] = value
    return stacked


def local_devices(intercepted: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """The per-client device weights in the arrays of intercepted.npz: {partition: DeviceNet state}; empty for runs
    written before they were kept."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in intercepted.items():
        if key.startswith(DEVICE_PREFIX):
            pid, name = key[len(DEVICE_PREFIX) :].split("/", 1)
            out.setdefault(int(pid), {})[name] = value
    return out


def save_intercepted(
    run_dir: Path, inference: list[Intercepted], train: list[Intercepted], shape: tuple[int, ...]
) -> Path:
    """Write ``intercepted.npz`` atomically; returns its path. Each list: ``Intercepted`` records; shape: one row's
    activation shape (C,H,W), for a point with no record."""
    stacked = {**_stack(inference, "inference", shape), **_stack(train, "train", shape)}
    return files.savez(run_dir / "intercepted.npz", **stacked)
