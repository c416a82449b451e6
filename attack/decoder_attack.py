"""Learned-decoder attacks: train a decoder on (query(x), x) for the attacker's own public x, then apply it to
intercepted activations. One registered attack per variant:

- ``seed``: the 2020 experiment's decoder (``SeedDecoder``), pixel MSE;
- ``up``: the upsampling decoder (``UpDecoder``), pixel MSE plus an SSIM term;
- ``cond``: the upsampling decoder conditioned on the label: its input is the activations and a one-hot label.
  Training sends the true label beside every activation; where none was sent (inference, the attacker's own
  queries, its public images, whose alphabets are not the task's) the label is the one the server's head predicts.

Every variant keeps a seeded held-out slice of the surrogate, stops when its pixel MSE stops improving and keeps
the best epoch. Training-time activations, which a client's own model produced, are decoded as they are: a
least-squares affine map from each client's model to the global one, fitted on public images, was measured and
dropped (re-id on the clients' training sets 0.021 with it, 0.027 without; docs/design.md, "The attack").
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from attack.base import Attack, AttackerKnowledge, Payload
from attack.decoders import TrainLog, reconstruct, train_decoder
from split.decoders import build_decoder

HOLDOUT_FRACTION, HOLDOUT_MAX = 0.1, 500  # surrogate rows held out for early stopping
PATIENCE = 4  # epochs without a better held-out MSE before training stops ...
MIN_DELTA = 2e-4  # ... better by more than this (held-out MSE is about 0.05: gains under 0.4 % do not count)
# Weight of (1 - SSIM) beside pixel MSE for the upsampling decoders. Measured once (recorded only here) with the
# conditioned decoder on the default sigma-0 model, unseen small2: 0 gave SSIM 0.636 (below the mean image's 0.652),
# re-id 0.038; 0.02 gave 0.659 and 0.046; 0.1 gave 0.682 but re-id 0.025 (sharp strokes in the wrong places).
SSIM_WEIGHT = 0.02


class DecoderAttack(Attack):
    """Fits the decoder named ``decoder`` (a key of ``split.decoders.DECODERS``) with Adam."""

    decoder: ClassVar[str]
    conditioned: ClassVar[bool] = False
    ssim_weight: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 64

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.knowledge: AttackerKnowledge | None = None
        self.log = TrainLog()

    def features(self, activations: torch.Tensor, labels: np.ndarray | None) -> torch.Tensor:
        """The decoder's input [N,C',H,W]: the activations [N,C,H,W], with a one-hot label appended as constant
        channels when conditioned (the head's prediction where ``labels`` is None)."""
        if not self.conditioned:
            return activations
        assert self.knowledge is not None
        if labels is None:
            labels = self.knowledge.classify(activations)
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.int64), self.knowledge.n_classes)
        planes = one_hot.float()[:, :, None, None].expand(-1, -1, *activations.shape[2:])
        return torch.cat([activations, planes], dim=1)

    def fit(self, knowledge: AttackerKnowledge) -> None:
        self.knowledge = knowledge
        inputs = self.features(knowledge.surrogate_activations, None)
        # Seeded right before the build: the initial weights and UpDecoder's dropout draws then depend on the seed
        # alone, whichever attacks ran before this one.
        torch.manual_seed(knowledge.seed)
        self.model = build_decoder(self.decoder, in_shape=tuple(inputs.shape[1:]))
        self.log = train_decoder(
            self.model,
            inputs,
            knowledge.surrogate,
            epochs=knowledge.epochs,
            batch_size=self.batch_size,
            seed=knowledge.seed,
            progress=knowledge.progress,
            holdout=min(HOLDOUT_MAX, int(HOLDOUT_FRACTION * len(inputs))),
            patience=PATIENCE,
            ssim_weight=self.ssim_weight,
            min_delta=MIN_DELTA,
        )

    def reconstruct(self, intercepted: Payload, start: np.ndarray | None = None) -> np.ndarray:
        assert self.model is not None and self.knowledge is not None, "fit the attack before reconstructing"
        return reconstruct(self.model, self.features(intercepted.activations, intercepted.labels))

    def fit_summary(self) -> dict[str, float]:
        summary: dict[str, float] = {"epochs": len(self.log.train), "best_epoch": self.log.best_epoch}
        if self.log.train:
            summary["final_train_loss"] = self.log.train[-1]
        if self.log.holdout:
            summary["holdout_mse"] = self.log.best_holdout
        return summary

    def holdout_mse(self) -> float | None:
        return self.log.best_holdout


class SeedDecoderAttack(DecoderAttack):
    """The original experiment's decoder (``SeedDecoder``), pixel MSE."""

    decoder = "seed"


class UpDecoderAttack(DecoderAttack):
    """The upsampling decoder (``UpDecoder``), pixel MSE plus an SSIM term."""

    decoder = "up"
    ssim_weight = SSIM_WEIGHT


class ConditionedDecoderAttack(UpDecoderAttack):
    """The upsampling decoder with the label as a second input (true where sent, else the head's prediction)."""

    conditioned = True
