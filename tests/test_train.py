"""The local split step with Opacus: equivalence to a plain step, per-sample clipping, FedAvg weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from clients.data import EVALUATION, load_set
from clients.train import split_step, train_local
from core.config import RunConfig
from core.privacy import epsilon
from split.model import build_split
from strategy.recorder import RunRecorder
from strategy.splitfed import SplitFedAvg


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_set(EVALUATION)
    idx = np.arange(0, 13_180, 1_650)[:8]  # 8 images from different alphabets
    return torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx])


def _models(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    device, head = build_split()
    return device.to(dtype), head.to(dtype)


def _private(device, images, labels, noise: float, clip: float):
    optimizer = torch.optim.SGD(device.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    model, optimizer, _ = PrivacyEngine().make_private(
        module=device,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    return model, optimizer


def test_dp_step_without_noise_or_clipping_equals_plain_step(batch):
    """In float64, so that summation order (per-sample vs batched gradients) cannot hide a real difference."""
    images, labels = batch[0].double(), batch[1]
    plain_device, plain_head = _models(dtype=torch.float64)
    split_step(
        plain_device,
        plain_head,
        torch.optim.SGD(plain_device.parameters(), lr=0.1),
        torch.optim.SGD(plain_head.parameters(), lr=0.1),
        images,
        labels,
    )
    dp_device, dp_head = _models(dtype=torch.float64)
    before = [p.detach().clone() for p in dp_device.parameters()]
    model, optimizer = _private(dp_device, images, labels, noise=0.0, clip=1e9)
    split_step(model, dp_head, optimizer, torch.optim.SGD(dp_head.parameters(), lr=0.1), images, labels)
    moved = sum(float((p.detach() - b).abs().max()) for p, b in zip(dp_device.parameters(), before, strict=True))
    assert moved > 1e-4  # the step did something
    for p, q in zip(plain_device.parameters(), dp_device.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)
    for p, q in zip(plain_head.parameters(), dp_head.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)


def test_per_sample_clipping_bounds_each_sample(batch):
    images, labels = batch
    clip = 0.05
    device, head = _models()
    model, optimizer = _private(device, images, labels, noise=0.0, clip=clip)
    activations = model(images)
    cut = activations.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(head(cut), labels).backward()
    activations.backward(cut.grad)
    params = [p for p in device.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.reshape(len(labels), -1) for p in params]
    norms = torch.cat(per_sample, dim=1).norm(dim=1)
    assert (norms > clip).all()  # clipping is active for every sample, so the test can fail
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    optimizer.clip_and_accumulate()
    for p, g in zip(params, per_sample, strict=True):
        expected = (factors[:, None] * g).sum(0).reshape(p.shape)
        torch.testing.assert_close(p.summed_grad, expected, atol=1e-6, rtol=1e-4)
    clipped = torch.cat([factors[:, None] * g for g in per_sample], dim=1).norm(dim=1)
    assert (clipped <= clip * (1 + 1e-4)).all()


def test_train_local_composes_history(batch):
    images, labels = batch
    images, labels = images.repeat(8, 1, 1, 1), labels.repeat(8)  # 64 images -> 2 steps per epoch at batch 32
    device, head = _models()
    cfg = RunConfig(noise=0.8, local_epochs=2)
    first = train_local(device, head, images, labels, cfg, [], seed=1)
    second = train_local(device, head, images, labels, cfg, first.history, seed=2)
    assert first.steps == 4 and second.steps == 4
    assert second.history == [(0.8, 0.5, 8)]
    assert epsilon(second.history, 1e-5) > epsilon(first.history, 1e-5) > 0
    no_dp = train_local(device, head, images, labels, RunConfig(noise=0.0), [], seed=3)
    assert no_dp.history == [(0.0, 0.5, 2)] and epsilon(no_dp.history, 1e-5) == float("inf")


def test_fedavg_weights_by_train_examples(tmp_path, monkeypatch):
    """Two clients with 1 and 3 examples: the average is (1*a + 3*b) / 4 for device and head keys alike."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):  # as run_simulation sets them
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)
    recorder = RunRecorder(tmp_path, RunConfig(clients=2))
    strategy = SplitFedAvg(recorder, seed=0, clients=2, min_train_nodes=1, min_available_nodes=1)
    replies = []
    for node, (value, n) in enumerate([(1.0, 1), (5.0, 3)], start=1):
        instruction = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
        instruction.metadata.__dict__["_message_id"] = f"m{node}"
        arrays = ArrayRecord({"device.w": torch.full((2,), value), "head.b": torch.full((1,), 2 * value)})
        metrics = MetricRecord(
            {
                "num-examples": n,
                "partition-id": node - 1,
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
        )
        history = ConfigRecord({"noise": [1.0], "sample-rate": [0.5], "steps": [1]})
        reply = Message(RecordDict({"arrays": arrays, "metrics": metrics, "privacy": history}), reply_to=instruction)
        replies.append(reply)
    arrays, _ = strategy.aggregate_train(1, replies)
    state = arrays.to_torch_state_dict()
    torch.testing.assert_close(state["device.w"], torch.full((2,), 4.0))  # (1*1 + 3*5) / 4
    torch.testing.assert_close(state["head.b"], torch.full((1,), 8.0))
    recorder.close()
    assert len((tmp_path / "ledger.csv").read_text().strip().splitlines()) == 3  # header + 2 clients


def test_a_missing_train_reply_stops_the_run(tmp_path, monkeypatch):
    """A client asked to train that never replies (Flower's timeout drops it) must not vanish from the ledger."""
    from flwr.supercore.task_identity import TaskIdentity

    from strategy.splitfed import ClientFailed

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):  # as run_simulation sets them
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)
    recorder = RunRecorder(tmp_path, RunConfig(clients=2))
    strategy = SplitFedAvg(recorder, seed=0, clients=2, min_train_nodes=1, min_available_nodes=1)
    strategy.partition_of = {11: 0, 12: 1}
    sent = strategy.configure_train(1, ArrayRecord({"device.w": torch.zeros(2)}), ConfigRecord({}), grid=None)
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]
    instruction = sent[0]
    instruction.metadata.__dict__["_message_id"] = "m1"
    metrics = MetricRecord({"num-examples": 1, "partition-id": 0, "epsilon": 1.0})
    history = ConfigRecord({"noise": [1.0], "sample-rate": [0.5], "steps": [1]})
    reply = Message(RecordDict({"metrics": metrics, "privacy": history}), reply_to=instruction)
    with pytest.raises(ClientFailed, match=r"client\(s\) \[1\] sent no reply in round 1"):
        strategy.aggregate_train(1, [reply])
    recorder.close()
