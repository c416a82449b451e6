"""--ema: the server's moving average of the global device over rounds, and its checkpointed state."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord
from runs import OMNIGLOT

from split.model import build_split, joined_state
from strategy.averaging import DeviceEMA


def _global(seed: int) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(joined_state(*build_split(**OMNIGLOT)))


def test_the_deployed_device_is_the_moving_average_and_the_head_is_the_current_one() -> None:
    first, second, third = _global(1), _global(2), _global(3)
    ema = DeviceEMA(0.75, build_split(**OMNIGLOT)[0])
    for arrays in (first, second, third):
        ema.update(arrays)
    deployed = dict(zip(third.keys(), ema.deployed(third).to_numpy_ndarrays(), strict=True))
    w1, w2, w3 = (a["device.0.weight"].numpy() for a in (first, second, third))
    expected = 0.75 * (0.75 * w1 + 0.25 * w2) + 0.25 * w3  # the first round's device is copied as it is
    np.testing.assert_allclose(deployed["device.0.weight"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(deployed["head.4.bias"], third["head.4.bias"].numpy())

    resumed = DeviceEMA(0.75, build_split(**OMNIGLOT)[0])
    resumed.load_state_dict(ema.state_dict())
    fourth = _global(4)
    ema.update(fourth)
    resumed.update(fourth)
    for a, b in zip(
        ema.deployed(fourth).to_numpy_ndarrays(), resumed.deployed(fourth).to_numpy_ndarrays(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
