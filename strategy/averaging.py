"""``--ema DECAY``: an exponential moving average of the global device weights over rounds, kept by the server.

After each round's aggregation the server folds the new global device into the average (torch's ``AveragedModel``
with an EMA rule: ``avg <- decay * avg + (1 - decay) * new``; the first round's device is copied as it is). The
*deployed* model, the one the server evaluates, refits its head on, queries at the end, attacks and saves as
``model.pt``, is the averaged device with the current head; the clients go on training from the un-averaged global
device (with the head refitted on the averaged one). The average is computed from what the clients released, so it
is post-processing: no client's epsilon changes.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

DEVICE = "device."


class DeviceEMA:
    """The server's running average of the global ``device.*`` arrays; ``device`` is a module of the run's shape."""

    def __init__(self, decay: float, device: nn.Module) -> None:
        self.device = device
        self.average = AveragedModel(device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, arrays: ArrayRecord) -> None:
        """Fold the global device in ``arrays`` into the average."""
        state = arrays.to_torch_state_dict()
        self.device.load_state_dict({k.removeprefix(DEVICE): v for k, v in state.items() if k.startswith(DEVICE)})
        self.average.update_parameters(self.device)

    def deployed(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with its ``device.*`` replaced by the average (the head and anything else kept)."""
        averaged = {f"{DEVICE}{k}": v.detach().cpu().numpy() for k, v in self.average.module.state_dict().items()}
        return ArrayRecord({k: Array(averaged[k]) if k in averaged else v for k, v in arrays.items()})

    def state_dict(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps: the averaged weights and how many rounds went into them."""
        return {k: v.detach().cpu().numpy() for k, v in self.average.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.average.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
