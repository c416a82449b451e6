"""The Flower ClientApp (Message API): local DP-SGD training and validation on this node's alphabet shard.

A train message carries ``arrays`` (the global device convnet and the server's head, keys ``device.*`` / ``head.*``)
and ``config`` (the RunConfig in kebab-case, plus ``server-round``). The reply carries the updated arrays and a
MetricRecord with the round's privacy figures. The client's accountant history lives in ``context.state`` so that
epsilon composes over every round this client ever trained in.
"""

from __future__ import annotations

import functools
import time
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.config import RunConfig
from clients.data import EVALUATION, OmniglotSet, load_set
from clients.privacy import epsilon, history_from_lists, history_to_lists, total_steps
from clients.shards import ClientShard, build_shards
from clients.train import evaluate, train_local
from split.model import build_split, device_activations, joined_state, load_joined

PRIVACY_KEY = "privacy"
INTERCEPTED_KEY = "intercepted"  # strategy.interception reads it under the same name

app = ClientApp()


@functools.lru_cache(maxsize=2)  # a simulation worker serves many clients and rounds: partition once per run
def _shards(cfg_key: tuple) -> tuple[OmniglotSet, list[ClientShard]]:
    cfg = RunConfig(**dict(cfg_key))
    data = load_set(EVALUATION, cfg.data_dir or None)
    return data, build_shards(data.alphabet, cfg)


def client_split(cfg: RunConfig, partition_id: int, part: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """This client's ``part`` ("train" | "val" | "indices" = both): images float32 [n,1,105,105] in [0,1],
    labels int64 [n], and the images' int64 [n] indices into the evaluation set."""
    key = tuple(
        (name, getattr(cfg, name))
        for name in ("data_dir", "clients", "partition", "alphabets_per_client", "alpha")
        + ("limit_per_client", "val_fraction", "seed")
    )
    data, shards = _shards(key)
    idx = getattr(shards[partition_id], part)
    return torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx]), idx


def _setup(msg: Message, context: Context) -> tuple[RunConfig, int, torch.nn.Module, torch.nn.Module, torch.device]:
    """Config, partition id, and the split model loaded with the received global weights."""
    cfg = RunConfig.from_flwr(dict(msg.content["config"]))
    partition_id = int(context.node_config["partition-id"])
    n_partitions = int(context.node_config["num-partitions"])
    if n_partitions != cfg.clients:
        raise ValueError(f"the federation has {n_partitions} nodes but the run config says clients={cfg.clients}")
    torch.set_num_threads(max(1, int(cfg.cpus_per_client)))
    torch_device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    if cfg.device == "auto":
        torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device, head = build_split(cfg.dropout, cfg.norm_groups)
    load_joined(device, head, msg.content["arrays"].to_torch_state_dict())
    return cfg, partition_id, device, head, torch_device


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local DP-SGD round; reply with updated weights and this client's composed privacy spend."""
    started = time.perf_counter()
    cfg, pid, device, head, torch_device = _setup(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    images, labels, indices = client_split(cfg, pid, "train")
    last_round = server_round == cfg.rounds
    state = context.state.config_records.get(PRIVACY_KEY)
    history = history_from_lists(dict(state)) if state else []
    seed = int(np.random.SeedSequence([cfg.seed, pid, server_round]).generate_state(1)[0])
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # Opacus warns about secure RNG and the optimizer's closure: known, harmless
        warnings.simplefilter("ignore")
        result = train_local(device, head, images, labels, cfg, history, seed, torch_device, record_cut=last_round)
    context.state.config_records[PRIVACY_KEY] = ConfigRecord(history_to_lists(result.history))
    last_sigma, last_q, _ = result.history[-1]
    metrics = MetricRecord(
        {
            "num-examples": result.n_train,
            "partition-id": pid,
            "train-loss": result.loss,
            "train-acc": result.accuracy,
            "epsilon": epsilon(result.history, cfg.delta, cfg.accountant),
            "delta": cfg.delta,
            "sample-rate": last_q,
            "noise-multiplier": last_sigma,
            "clip": cfg.clip if cfg.noise > 0 else float("inf"),
            "steps-round": result.steps,
            "steps-total": total_steps(result.history),
            "seconds": time.perf_counter() - started,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(joined_state(device, head)), "metrics": metrics})
    if last_round:  # the activations this client sent across the cut in the final round, with their image ids
        content[INTERCEPTED_KEY] = ArrayRecord(
            {
                "activations": Array(result.cut_activations.numpy()),
                "index": Array(indices[result.cut_positions.numpy()].astype(np.int64)),
            }
        )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_client(msg: Message, context: Context) -> Message:
    """Validation loss and accuracy of the global split model on this client's validation split."""
    cfg, pid, device, head, torch_device = _setup(msg, context)
    images, labels, _ = client_split(cfg, pid, "val")
    loss, accuracy = evaluate(device.to(torch_device), head.to(torch_device), images, labels)
    metrics = MetricRecord({"num-examples": len(labels), "partition-id": pid, "val-loss": loss, "val-acc": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Inference: send every private image of this client (train and validation) through the received device model.

    The reply is what the server sees when the client uses the deployed model: activations float32 [n,32,1,1] and
    (for the study only) each image's index into the evaluation set, so reconstructions can be scored.
    """
    cfg, pid, device, _, torch_device = _setup(msg, context)
    shard_images, _, train_idx = client_split(cfg, pid, "train")
    val_images, _, val_idx = client_split(cfg, pid, "val")
    activations = device_activations(device.to(torch_device), torch.cat([shard_images, val_images]))
    record = ArrayRecord(
        {
            "activations": Array(activations.numpy()),
            "index": Array(np.concatenate([train_idx, val_idx]).astype(np.int64)),
        }
    )
    return Message(
        content=RecordDict({INTERCEPTED_KEY: record, "metrics": MetricRecord({"partition-id": pid})}), reply_to=msg
    )
