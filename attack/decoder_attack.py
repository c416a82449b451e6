"""The learned-decoder attack of the 2020 experiment: train a decoder on (query(x), x) for the attacker's own x,
then apply it to intercepted activations. One registered attack per decoder of ``attack.decoders``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from attack.base import Attack, AttackerKnowledge, Intercepted
from attack.decoders import build_decoder, reconstruct, train_decoder


class DecoderAttack(Attack):
    """Fits the decoder named ``decoder`` (a key of ``attack.decoders.DECODERS``) with Adam and pixel MSE."""

    decoder: ClassVar[str]

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.losses: list[float] = []

    def fit(self, knowledge: AttackerKnowledge) -> None:
        # Seeded right before the build: the initial weights and UpDecoder's dropout draws then depend on the seed
        # alone, whichever attacks ran before this one.
        torch.manual_seed(knowledge.seed)
        self.model = build_decoder(self.decoder)
        self.losses = train_decoder(
            self.model,
            knowledge.surrogate_activations,
            knowledge.surrogate,
            epochs=knowledge.epochs,
            seed=knowledge.seed,
            progress=knowledge.progress,
        )

    def reconstruct(self, intercepted: Intercepted) -> np.ndarray:
        assert self.model is not None, "fit the attack before reconstructing"
        return reconstruct(self.model, intercepted.activations)

    def fit_summary(self) -> dict[str, float]:
        return {"final_train_mse": self.losses[-1]} if self.losses else {}


class SeedDecoderAttack(DecoderAttack):
    """The original experiment's decoder (``SeedDecoder``)."""

    decoder = "seed"


class UpDecoderAttack(DecoderAttack):
    """The stronger upsampling decoder (``UpDecoder``)."""

    decoder = "up"
