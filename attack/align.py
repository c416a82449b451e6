"""Training-time activations come from each client's own updated device model, not the final global one.

The server holds that model (the client sent it back for aggregation), so the attacker can do better than decoding
its activations as if the global model had produced them: ``Aligner`` queries both models with the same public
images and fits a least-squares affine map from the client model's activations to the global model's, so a decoder
trained on the global model's activations reads them. White-box attacks use the client's model directly.
"""

from __future__ import annotations

import numpy as np
import torch

from attack.base import Intercepted, Query

ALIGN_IMAGES = 256  # public images behind each client's map: 33 unknowns per output, so ample


class Aligner:
    """``aligner(intercepted)``: the activations as the final global model would have sent them (unchanged when
    ``intercepted.device`` is None). Each client model's map is fitted once, then reused by every attack."""

    def __init__(self, query: Query, surrogate: np.ndarray, surrogate_activations: torch.Tensor) -> None:
        self.query = query
        self.images = surrogate[:ALIGN_IMAGES]
        self.target = surrogate_activations[:ALIGN_IMAGES].flatten(1).double()
        self.maps: dict[int, torch.Tensor] = {}  # id(device) -> [features + 1, features]

    def __call__(self, intercepted: Intercepted) -> torch.Tensor:
        if intercepted.device is None:
            return intercepted.activations
        key = id(intercepted.device)
        if key not in self.maps:
            own = self.query(self.images, intercepted.device).flatten(1).double()
            design = torch.cat([own, torch.ones(len(own), 1, dtype=own.dtype)], dim=1)
            self.maps[key] = torch.linalg.lstsq(design, self.target).solution
        flat = intercepted.activations.flatten(1).double()
        mapped = torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], dim=1) @ self.maps[key]
        return mapped.float().view_as(intercepted.activations)
