"""The Flower ClientApp (Message API): local DP-SGD training and validation on this node's alphabet shard.

A train message carries ``arrays`` (the global device convnet and the server's head, keys ``device.*`` / ``head.*``)
and ``config`` (the RunConfig in kebab-case, plus ``server-round``). The reply (``core.protocol.TrainReply``)
carries the updated arrays, the round's privacy figures, a status and the client's whole accountant history. The
history lives in ``context.state`` so that epsilon composes over every round this client ever trained in; the
server keeps a copy for its checkpoints and sends it back, which restores it after ``--resume``.

``build_client_app(mods)`` builds the ClientApp (``flwr run .`` loads ``simulation.apps.client_app``), with Flower
client mods around every handler (the test seam of ``clients/fault_injection.py``).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from audit.canaries import plan_canaries
from clients.detector import alarm
from clients.shards import ClientShard, build_shards
from clients.train import LocalResult, evaluate, train_local
from core.config import RunConfig
from core.privacy import History, epsilon, sample_rate, steps_per_epoch, total_steps
from core.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    FAIL_AT_KEY,
    PRIVACY_KEY,
    ROUND_KEY,
    EvaluateReply,
    HeadFitReply,
    Intercepted,
    PartitionReply,
    QueryReply,
    TrainReply,
    history_record,
    is_head_fit_query,
    is_partition_query,
    read_history,
)
from data.base import ImageSet, geometry, get_dataset
from split.cut import Cut, cut_for
from split.head import head_fit_sample
from split.model import build_split, device_activations, joined_state, load_joined
from split.server import build_server


@functools.lru_cache(maxsize=2)  # a simulation worker serves many clients and rounds: partition once per run
def _shards(cfg_key: tuple) -> tuple[ImageSet, list[ClientShard]]:
    cfg = RunConfig(**dict(cfg_key))
    data = get_dataset(cfg.dataset, cfg.data_dir or None).load("private")
    return data, build_shards(data.alphabet, cfg)


def client_split(cfg: RunConfig, partition_id: int, part: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """This client's ``part`` ("train" | "val" | "indices" = both): images float32 [n,1,105,105] in [0,1],
    labels int64 [n], and the images' int64 [n] indices into the evaluation set."""
    key = tuple(
        (name, getattr(cfg, name))
        for name in ("dataset", "data_dir", "clients", "partition", "alphabets_per_client", "alpha")
        + ("limit_per_client", "val_fraction", "seed")
    )
    data, shards = _shards(key)
    idx = getattr(shards[partition_id], part)
    return torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx]), idx


def local_round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The torch seed of one client's local round (weights' dropout, batches, noise): fixed by (seed, client,
    round), so a resumed run and the benchmark's plain loop draw exactly what the simulation draws."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])


def query_cut(cfg: RunConfig, partition_id: int, server_round: int) -> Cut:
    """The run's cut for one of this client's queries. A noisy cut draws from torch's generator, seeded here by
    (training seed, client, round, 2) (training uses (training seed, client, round), failures ``[..., 1]``), so a
    query and its rerun after a resume send the same activations."""
    seed = np.random.SeedSequence([cfg.training_seed, partition_id, server_round, 2]).generate_state(1)[0]
    torch.manual_seed(int(seed))
    return cut_for(cfg)


def _setup(msg: Message, context: Context) -> tuple[RunConfig, int, torch.nn.Module, torch.nn.Module, torch.device]:
    """Config, partition id, and the split model loaded with the received global weights."""
    cfg = RunConfig.from_flwr(dict(msg.content[CONFIG_KEY]))
    partition_id = int(context.node_config["partition-id"])
    n_partitions = int(context.node_config["num-partitions"])
    if n_partitions != cfg.clients:
        raise ValueError(f"the federation has {n_partitions} nodes but the run config says clients={cfg.clients}")
    torch.set_num_threads(max(1, int(cfg.cpus_per_client)))
    torch_device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    if cfg.device == "auto":
        torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device, head = build_split(**cfg.model_options(), **geometry(cfg.dataset))
    load_joined(device, head, msg.content[ARRAYS_KEY].to_torch_state_dict())
    return cfg, partition_id, device, head, torch_device


def _history(msg: Message, context: Context) -> History:
    """This client's accountant history before the round: its own ``context.state``, or the server's copy.

    The node's state is lost when the run restarts (``--resume``), so the server keeps every client's history in
    its checkpoint and sends it along; the longer of the two is used, so a client never under-counts.
    """
    mine, theirs = read_history(context.state), read_history(msg.content)
    return theirs if total_steps(theirs) > total_steps(mine) else mine


def train(msg: Message, context: Context) -> Message:
    """Local DP-SGD round; reply with updated weights and this client's composed privacy spend.

    The reply's ``status`` is ``trained``; ``over-budget`` when this round would take the client past
    ``--max-epsilon`` (nothing is trained); or ``failed`` for a failure the test seam injected after some steps,
    whose steps are in the accountant (no weights are returned).
    """
    started = time.perf_counter()
    cfg, pid, device, head, torch_device = _setup(msg, context)
    server_round = int(msg.content[CONFIG_KEY][ROUND_KEY])
    images, labels, indices = client_split(cfg, pid, "train")
    history = _history(msg, context)
    q = sample_rate(len(labels), cfg.batch_size)
    planned = cfg.local_epochs * steps_per_epoch(len(labels), cfg.batch_size)
    if cfg.max_epsilon and epsilon(history + [(cfg.noise, q, planned)], cfg.delta, cfg.accountant) > cfg.max_epsilon:
        message = f"not trained: {planned} more steps would take epsilon past --max-epsilon {cfg.max_epsilon:g}"
        reply = _train_reply(cfg, pid, history, len(labels), 0, started, q, status="over-budget", message=message)
        return reply.to_message(msg)
    fail_at = float(msg.content[CONFIG_KEY].get(FAIL_AT_KEY, 0.0))  # the test seam's injected failure
    fails = fail_at > 0
    max_steps = 1 + int(fail_at * (max(2, planned) - 1)) if fails else None  # part-way through the round
    seed = local_round_seed(cfg.training_seed, pid, server_round)
    torch.manual_seed(seed)
    # This client's last training round: the final round, or the last one its --max-epsilon budget allows.
    two_more = history + [(cfg.noise, q, 2 * planned)]
    budget_ends = bool(cfg.max_epsilon) and epsilon(two_more, cfg.delta, cfg.accountant) > cfg.max_epsilon
    last_round = (server_round == cfg.rounds or budget_ends) and not fails
    # --server hijack: the server's side of this round (its own draws: [seed, partition, round, 4]).
    hijack_seed = int(np.random.SeedSequence([cfg.training_seed, pid, server_round, 4]).generate_state(1)[0])
    server = build_server(cfg.server).round(cfg, msg.content[ARRAYS_KEY], hijack_seed)
    with warnings.catch_warnings():  # Opacus warns about secure RNG and the optimizer's closure: known, harmless
        warnings.simplefilter("ignore")
        result = train_local(
            device,
            head,
            images,
            labels,
            cfg,
            history,
            seed,
            torch_device,
            record_cut=last_round,
            max_steps=max_steps,
            canaries=plan_canaries(cfg) if cfg.audit else None,  # --audit: this client's canaries join its steps
            partition=pid,
            server=server.gradient if server is not None else None,
        )
    # Persisted before replying: a client that fails mid-round still carries the steps it took.
    context.state.config_records[PRIVACY_KEY] = history_record(result.history)
    if fails:
        message = f"simulated failure (test seam) after {result.steps} of {planned} steps"
        reply = _train_reply(cfg, pid, result.history, result.n_train, result.steps, started, q, "failed", message)
        return reply.to_message(msg)
    reply = _train_reply(cfg, pid, result.history, result.n_train, result.steps, started, q, result=result)
    server_arrays = server.returned() if server is not None else {}  # the server's own copy it trained
    reply.arrays = ArrayRecord({**joined_state(device, head), **server_arrays})
    if last_round:  # the activations this client sent across the cut in its last round, with their image ids
        positions = result.cut_positions.numpy()
        sent = Intercepted(pid, result.cut_activations.numpy(), indices[positions].astype(np.int64))
        reply.intercepted = sent.compact(cfg.training_seed)
    return reply.to_message(msg)


def _train_reply(
    cfg: RunConfig,
    pid: int,
    history: History,
    n_train: int,
    steps: int,
    started: float,
    q: float,
    status: str = "trained",
    message: str = "",
    result: LocalResult | None = None,
) -> TrainReply:
    """A train reply without arrays: the privacy figures after the round, the status and the whole history."""
    sigma = history[-1][0] if history else cfg.noise
    score = statistics.fmean(result.probe_scores) if result and result.probe_scores else math.nan
    return TrainReply(
        {
            "num-examples": n_train,
            "partition-id": pid,
            "train-loss": result.loss if result else math.nan,
            "train-acc": result.accuracy if result else math.nan,
            "epsilon": epsilon(history, cfg.delta, cfg.accountant),
            "delta": cfg.delta,
            "sample-rate": history[-1][1] if history else q,
            "noise-multiplier": sigma,
            "clip": cfg.clip if cfg.noise > 0 else float("inf"),
            "steps-round": steps,
            "steps-total": total_steps(history),
            "seconds": time.perf_counter() - started,
            "detect-probes": len(result.probe_scores) if result else 0,
            "detect-score": score,
            "detect-alarm": int(alarm(score, cfg.detect_threshold)),
        },
        history,
        status,
        message,
    )


def evaluate_client(msg: Message, context: Context) -> Message:
    """Validation loss and accuracy of the global split model on this client's validation split."""
    cfg, pid, device, head, torch_device = _setup(msg, context)
    images, labels, _ = client_split(cfg, pid, "val")
    loss, accuracy = evaluate(device.to(torch_device), head.to(torch_device), images, labels)
    metrics = {"num-examples": len(labels), "partition-id": pid, "val-loss": loss, "val-acc": accuracy}
    return EvaluateReply(metrics).to_message(msg)


def query(msg: Message, context: Context) -> Message:
    """Inference: send every private image of this client (train and validation) through the received device model.

    The reply is what the server sees when the client uses the deployed model: activations [n,C,H,W] and (for the
    study only) each image's index into the evaluation set, so reconstructions can be scored. The reply carries
    what the server records of them (``Intercepted.compact``: float16; a sample of rows at cut 1).
    A query whose config says ``query = "partition-id"`` only answers with this node's partition id (the server
    maps Flower's node ids to partitions with it, so sampling and checkpoints do not depend on node ids).
    """
    if is_partition_query(msg.content):
        node = context.node_config
        return PartitionReply(int(node["partition-id"]), int(node["num-partitions"])).to_message(msg)
    if is_head_fit_query(msg.content):
        return _head_fit(msg, context)
    cfg, pid, device, _, torch_device = _setup(msg, context)
    shard_images, _, train_idx = client_split(cfg, pid, "train")
    val_images, _, val_idx = client_split(cfg, pid, "val")
    images = torch.cat([shard_images, val_images])
    activations = device_activations(device.to(torch_device), images, cut=query_cut(cfg, pid, cfg.rounds + 1))
    index = np.concatenate([train_idx, val_idx]).astype(np.int64)
    return QueryReply(Intercepted(pid, activations.numpy(), index).compact(cfg.training_seed)).to_message(msg)


def _head_fit(msg: Message, context: Context) -> Message:
    """``--head-mode refit``: a seeded ``--head-fit-fraction`` of this client's training images through the new
    global device model (and the run's cut), with their labels, for the server to refit its head on."""
    cfg, pid, device, _, torch_device = _setup(msg, context)
    images, labels, _ = client_split(cfg, pid, "train")
    server_round = int(msg.content[CONFIG_KEY][ROUND_KEY])
    keep = head_fit_sample(cfg.training_seed, pid, server_round, len(labels), cfg.head_fit_fraction)
    activations = device_activations(device.to(torch_device), images[keep], cut=query_cut(cfg, pid, server_round))
    return HeadFitReply(pid, activations.numpy(), labels[keep].numpy()).to_message(msg)


def build_client_app(mods: list[Mod] | None = None) -> ClientApp:
    """The ClientApp: ``train``, ``evaluate_client`` and ``query`` as its handlers, with ``mods`` around each."""
    client_app = ClientApp(mods=mods)
    client_app.train()(train)
    client_app.evaluate()(evaluate_client)
    client_app.query()(query)
    return client_app
