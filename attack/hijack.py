"""``hijack``: the hijacking server's own decoder (``split.hijack``) applied to what a client sent.

Under ``--server hijack`` the server spent training pulling every client's device into its pilot encoder's feature
space; if that worked, its decoder (the pilot's inverse, trained on public images only) inverts the client's
activations directly. Nothing is fitted here: the decoder is the one training left in model.pt. The attack is added
to a hijack run's attacks by ``attack.run`` and refuses a run without the hijacking server's models.
"""

from __future__ import annotations

import numpy as np

from attack.base import Attack, AttackerKnowledge, Payload
from core.errors import UserError
from split.hijack import HijackModels


class HijackAttack(Attack):
    """The hijacking server's decoder on intercepted activations; nothing to fit."""

    def __init__(self) -> None:
        self.models: HijackModels | None = None

    def fit(self, knowledge: AttackerKnowledge) -> None:
        if knowledge.hijack is None:
            raise UserError("attack 'hijack' needs a run trained with --server hijack (its model.pt has no pilot)")
        self.models = knowledge.hijack

    def reconstruct(self, intercepted: Payload, start: np.ndarray | None = None) -> np.ndarray:
        assert self.models is not None, "fit the attack before reconstructing"
        return self.models.reconstruct(intercepted.activations)
