"""A client's check for a hijacking server (``--detect``): does the gradient that comes down the cut read my labels?

An honest server's gradient at the cut is the task's: the head's cross-entropy at the labels the client sent, so it
changes when the labels do. The Feature-Space Hijacking Attack's server (``split.hijack``) sends the gradient of its
critic, which never reads the labels. The idea is SplitGuard's (Erdoğan, Küpçü & Çiçek, WPES 2022: fake batches with
randomised labels, whose gradients an honest server makes differ from the regular ones); this probe is a simpler one
of its own:

- after a step, with probability ``--detect`` (the probe's own generator, so the client's sampling and DP noise draw
  what they would without it), the client sends the step's activations again with **wrong labels**: every row's
  label moved to another of the client's own classes, uniformly;
- the score of a probe is the cosine between the two gradients that came back (flattened over the batch): near 1
  when the gradient ignores the labels, lower when it reads them;
- a client round's score is the mean over its probes, and the client raises an **alarm** when it is at least
  ``--detect-threshold``.

The probe's gradient is never applied to the device, so DP-SGD's steps, ledger and epsilon are the same as without
it. The server cannot tell a probe from a step, so an honest server's head also trains on the wrong labels: that is
the probe's cost in accuracy. Limits, by design of this probe: it re-sends a step's activations unchanged, so a
server that remembers what it received could spot probes and answer them honestly; and a hijacker that mixed the
task's gradient into its own would score lower. It checks the published attack, not an adaptive one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def wrong_labels(labels: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each label int64 [B] moved to another of ``classes`` (sorted int64 [K], K >= 2, holding every label),
    uniformly among the other K - 1."""
    at = torch.searchsorted(classes, labels.cpu())
    shift = torch.randint(1, len(classes), labels.shape, generator=generator)
    return classes[(at + shift) % len(classes)].to(labels.device)


def label_cosine(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Cosine between two cut gradients [B,C,H,W], flattened over the batch (nan when either is zero or empty)."""
    a, b = real.flatten().double(), fake.flatten().double()
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else math.nan


class LabelProbe:
    """One client round's probes: ``after_step`` decides, sends the probe through ``ask`` and keeps its score.

    rate: the chance a step is probed; labels: the client's training labels int64 [N], whose classes the wrong
    labels are drawn from (a label the client does not hold would give the probe away, and its loss may rule it
    out: ``--skew-loss restricted``); a client of one class cannot probe; seed: the probe's own draws."""

    def __init__(self, rate: float, labels: torch.Tensor, seed: int) -> None:
        self.classes = torch.unique(labels.cpu())  # sorted
        self.rate = rate if len(self.classes) >= 2 else 0.0
        self.generator = torch.Generator().manual_seed(seed)
        self.scores: list[float] = []

    def after_step(self, labels: torch.Tensor, grad: torch.Tensor, ask: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After a step whose labels int64 [B] got ``grad`` back: maybe probe, asking the server with wrong labels
        (``ask(labels) -> gradient``, the server's side of the same step)."""
        if float(torch.rand((), generator=self.generator)) >= self.rate or len(labels) == 0:
            return
        score = label_cosine(grad, ask(wrong_labels(labels, self.classes, self.generator)))
        if not math.isnan(score):
            self.scores.append(score)


def alarm(score: float, threshold: float) -> bool:
    """Whether a round's score raises the alarm (a round without probes never does)."""
    return not math.isnan(score) and score >= threshold
