"""strategy/checkpoint.py and the recorder's resume: what a killed run leaves is read back exactly, or refused."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.errors import UserError
from core.privacy import epsilon
from core.protocol import Intercepted
from core.rundir import RunDir
from strategy.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    settings_digest,
)
from strategy.recorder import RunRecorder


def _checkpoint() -> Checkpoint:
    rng = np.random.default_rng(0)
    arrays = {"device.conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "head.bias": np.arange(20.0)}
    histories = {0: [(0.5, 0.5, 4)], 2: [(0.5, 0.5, 1), (0.5, 0.5, 2)]}
    activations = rng.normal(size=(3, 32, 1, 1)).astype(np.float32)
    return Checkpoint(
        round=2,
        arrays=arrays,
        histories=histories,
        over_budget=[2],
        settings_digest=settings_digest(SETTINGS),
        elapsed_seconds=12.5,
        intercepted_training=[Intercepted(0, activations, np.array([5, 9, 5]), {"1.weight": np.full((2, 2), 0.25)})],
        strategy_state={"m_t": {"head.bias": np.full(20, 0.5)}, "v_t": None},
        ema_state={"n_averaged": np.array(3), "module.1.weight": np.full((2, 2), 0.5, np.float32)},
    )


SETTINGS = {"clients": 3, "seed": 0, "lr": 0.005, "data_dir": "/data"}


def test_checkpoint_round_trip(tmp_path) -> None:
    saved = _checkpoint()
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert (loaded.round, loaded.over_budget, loaded.elapsed_seconds) == (2, [2], 12.5)
    assert loaded.settings_digest == saved.settings_digest and loaded.mismatches(SETTINGS) == []
    assert set(loaded.arrays) == set(saved.arrays)
    for key, value in saved.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[key], value)
    assert loaded.histories == saved.histories
    assert epsilon(loaded.histories[2], 1e-5) == epsilon([(0.5, 0.5, 3)], 1e-5)  # the composed spend survives
    pid, activations, index, device = loaded.intercepted_training[0]
    assert pid == 0
    np.testing.assert_array_equal(device["1.weight"], np.full((2, 2), 0.25))  # the client's own model survives
    np.testing.assert_array_equal(activations, saved.intercepted_training[0][1])
    np.testing.assert_array_equal(index, [5, 9, 5])
    state = loaded.array_record().to_torch_state_dict()
    assert tuple(state["device.conv.weight"].shape) == (4, 1, 3, 3)
    np.testing.assert_array_equal(loaded.strategy_state["m_t"]["head.bias"], np.full(20, 0.5))
    assert loaded.strategy_state["v_t"] is None
    assert int(loaded.ema_state["n_averaged"]) == 3
    np.testing.assert_array_equal(loaded.ema_state["module.1.weight"], np.full((2, 2), 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_checkpoint_holds_no_settings_only_their_digest(tmp_path) -> None:
    save_checkpoint(tmp_path, _checkpoint())
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert "settings" not in payload and set(payload["settings_digest"]) == set(SETTINGS)
    assert "/data" not in repr(payload["settings_digest"])  # config.json is the one copy
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.mismatches({**SETTINGS, "lr": 0.001, "seed": 1}) == ["lr", "seed"]
    assert ckpt.mismatches({k: v for k, v in SETTINGS.items() if k != "clients"}) == ["clients"]
    assert ckpt.mismatches({**SETTINGS, "new_setting": 1}) == []  # settings added since are not compared


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_unusable_checkpoint_is_one_line(tmp_path, damage: str) -> None:
    if damage == "truncated":
        save_checkpoint(tmp_path, _checkpoint())
        payload = (tmp_path / "checkpoint.pt").read_bytes()
        (tmp_path / "checkpoint.pt").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)
    assert ("no checkpoint.pt there" if damage == "missing" else "checkpoint.pt is unreadable") in str(info.value)


def test_incomplete_marker(tmp_path) -> None:
    run = RunDir(tmp_path)
    assert not run.incomplete.exists()
    run.mark_incomplete("training stopped: boom")
    assert run.incomplete.exists() and "boom" in (tmp_path / "INCOMPLETE").read_text()
    run.mark_complete()
    assert not run.incomplete.exists()


def _rows(path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_recorder_resume_drops_rows_after_the_checkpoint(tmp_path) -> None:
    cfg = RunConfig(clients=1, rounds=4)
    first = RunRecorder(tmp_path, cfg)
    train = {
        "partition-id": 0,
        "num-examples": 58,
        "sample-rate": 0.5,
        "noise-multiplier": 0.5,
        "clip": 1.0,
        "steps-round": 2,
        "epsilon": 1.0,
        "delta": 1e-5,
        "train-loss": 3.0,
        "train-acc": 0.1,
        "status": "trained",
        "message": "",
    }
    evaluate = {"partition-id": 0, "num-examples": 6, "val-loss": 3.1, "val-acc": 0.5}
    for server_round in (1, 2, 3):
        first.start_round()
        first.record_train(server_round, [(7, dict(train, **{"steps-total": 2 * server_round}))])
        if server_round < 3:  # killed in round 3 between training and evaluation
            first.record_evaluate(server_round, [(7, evaluate)])
    first.close()
    assert [r["round"] for r in _rows(tmp_path / "ledger.csv")] == ["1", "2", "3"]

    resumed = RunRecorder(tmp_path, cfg, resume_after=2, elapsed_before=100.0)
    assert [row["round"] for row in resumed.rounds] == [1.0, 2.0]
    assert resumed.elapsed() >= 100.0
    resumed.close()
    for name in ("ledger.csv", "metrics.csv", "client_metrics.csv"):
        assert [r["round"] for r in _rows(tmp_path / name)] == ["1", "2"], name
    ledger = _rows(tmp_path / "ledger.csv")
    assert [r["steps_total"] for r in ledger] == ["2", "4"] and {r["status"] for r in ledger} == {"trained"}
    assert math.isclose(float(_rows(tmp_path / "metrics.csv")[1]["val_acc"]), 0.5)
