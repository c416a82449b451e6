"""core/rundir.py: a run directory's state through its lifecycle, its config round trip, and a run written by
another version read as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.errors import UserError
from core.protocol import Intercepted
from core.rundir import FORMAT, RunDir, local_devices


def test_state_follows_the_lifecycle_and_the_config_round_trips(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.state() == "empty"
    run.create()
    assert run.incomplete.exists() and "python sim.py --resume" in run.incomplete.read_text()
    cfg = RunConfig(clients=3, noise=0.7, cut=2)
    run.write_config(cfg, {"noise_from_target_epsilon": 0.7})
    payload = json.loads(run.config.read_text())
    assert payload["format"] == FORMAT and payload["noise_from_target_epsilon"] == 0.7 and payload["versions"]["torch"]
    assert run.read_config() == cfg and run.state() == "incomplete"
    run.mark_complete()
    assert run.state() == "trained"
    run.leakage.write_text("{}")
    run.attack.write_text("{}")
    assert run.state() == "attacked"
    with pytest.raises(UserError, match="already exists and is not empty; pass --resume"):
        run.create()
    run.clear()
    assert run.state() == "empty" and not any(run.path.iterdir())


def test_a_run_of_another_version_a_damaged_config_or_a_missing_table_is_one_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(UserError, match="no config.json there; is it a run directory"):
        run.read_config()
    run.config.write_text("{not json")
    with pytest.raises(UserError, match="config.json is unreadable .JSONDecodeError."):
        run.read_config()
    run.config.write_text(json.dumps({"settings": RunConfig().settings_dict()}))  # format 1: no "format" key
    with pytest.raises(UserError, match="another version of this tool .run format 1, this one reads 2.; train it"):
        run.read_config()
    with pytest.raises(UserError, match="no ledger.csv there; did training finish"):
        run.read_csv("ledger.csv")
    run.ledger.write_text("round,partition_id,epsilon\n1,0,inf\n1,1,2.5\n")
    assert run.read_csv("ledger.csv") == [
        {"round": "1", "partition_id": "0", "epsilon": "inf"},
        {"round": "1", "partition_id": "1", "epsilon": "2.5"},
    ]


def test_intercepted_round_trips_with_each_clients_device(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    weights = {"1.weight": np.ones((2, 2), np.float32)}
    sent = [Intercepted(1, np.full((2, 32, 1, 1), 0.5, np.float32), np.array([7, 9]), weights)]
    run.save_intercepted([], sent, (32, 1, 1))
    arrays = run.load_intercepted()
    assert arrays["inference_activations"].shape == (0, 32, 1, 1) and arrays["train_partition"].tolist() == [1, 1]
    assert arrays["train_activations"].dtype == np.float16 and arrays["train_index"].tolist() == [7, 9]
    np.testing.assert_array_equal(local_devices(arrays)[1]["1.weight"], weights["1.weight"])
