"""The defense families a study compares, each described once: how the report names and draws it, which setting
is its strength, and what it guarantees.

A family is a curve of the study's report (``control`` a point of its own). The mechanism behind each lives where it
acts: DP-SGD in ``clients/train.py``, the noisy cut and NoPeek in ``split/cut.py``, the hijack detector in
``clients/detector.py``. A new family is one entry here
plus its settings; ``study.grid`` and the study's report (``report.study_stats``, ``report.study_figures``,
``report.headline``) read everything else from the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """``label``: its name in the legend; ``colour``: a matplotlib colour (controls: black stars); ``strength``: the
    setting (field name) whose value orders its points, "" for none; ``point``: the prefix of a point's label before
    its strength ("" for a control: the cell's name); ``guarantee``: what it promises, in words; ``sweeps_epsilon``:
    its curve is DP-SGD's, ordered by the ledger's epsilon (from inf down) and drawn against epsilon.

    How the study's headline (``report.headline``) speaks of it, ``compare``: "epsilon" (DP-SGD from scratch: epsilon
    inf against the point nearest 8 and the smallest), "reaches" (an activation-side defense: the weakest strength
    that reaches DP-SGD's re-id), "start" (DP-SGD from another start, each epsilon against that start's control,
    ``intro`` opening its sentence), "" (a control: a sentence of its own). ``start``: the settings its control holds
    (the family's sentence pairs each epsilon with a control holding them; a control's own sentence speaks of the
    most specific family whose ``start`` it holds, the first of equals), "alarms" (a detector: how often its clients
    alarmed, from detector.csv, and its cost against the same cell without it). ``attack``: the attack whose re-id
    is the family's own number ("" = the best attack), e.g. the hijack's decoder. ``drawn``: a curve of the
    headline figure (a detector is not: its cells differ in the server, not in a strength)."""

    label: str
    colour: str
    strength: str
    point: str
    guarantee: str
    sweeps_epsilon: bool = False
    compare: str = ""
    start: tuple[tuple[str, Any], ...] = ()
    intro: str = ""
    attack: str = ""
    drawn: bool = True

    def point_label(self, name: str, settings: dict[str, Any]) -> str:
        """How a cell of this family is labelled in the report: "eps 8", "noise 0.1", "NoPeek 3", a control's name."""
        if self.strength == "target_epsilon":  # DP-SGD: a target epsilon, a fixed sigma, or none (epsilon inf)
            if settings.get("target_epsilon"):
                return f"eps {settings['target_epsilon']:g}"
            return f"sigma {settings['noise']:g}" if settings.get("noise") else "eps inf"
        return f"{self.point} {settings.get(self.strength, 0):g}" if self.strength else name

    def strength_of(self, settings: dict[str, Any]) -> float:
        return float(settings.get(self.strength, 0.0)) if self.strength else 0.0

    def starts(self, settings: dict[str, Any]) -> bool:
        """Whether a cell of these ``settings`` starts where this family's cells do (``start``)."""
        return all(settings.get(key) == value for key, value in self.start)


def _dp_from(label: str, colour: str, how: str, start: tuple[str, Any], intro: str, attack: str = "") -> Family:
    """A DP-SGD curve from another start than DP-SGD from scratch's (``compare`` "start"): the same guarantee,
    ``how`` it differs, the one setting (key, value) its cells and its control share."""
    guarantee = f"the same (epsilon, delta) per client and record as DP-SGD: {how}"
    return Family(label, colour, "target_epsilon", "eps", guarantee, True, "start", (start,), intro, attack)


FAMILIES: dict[str, Family] = {
    "dp": Family(
        "DP-SGD (epsilon sweep)",
        "tab:blue",
        "target_epsilon",
        "eps",
        "(epsilon, delta)-DP per client and record for the device weights it trains (the ledger's accountant); "
        "nothing for the activations and labels that cross the cut",
        sweeps_epsilon=True,
        compare="epsilon",
    ),
    "dp-public": _dp_from(
        "DP-SGD from public pretraining",
        "tab:purple",
        "the device starts from weights trained on public images only (--pretrain public), which the server knows, "
        "so they cost no privacy",
        ("pretrain", "public"),
        "From the publicly pretrained device",
    ),
    "dp-norm": _dp_from(
        "DP-SGD on the norm layers only, from public pretraining",
        "tab:brown",
        "spent on the device's GroupNorm scales and shifts only (--train-params norm: 256 numbers at cut 4, so far "
        "less noise in total than on all 86,944), from the publicly pretrained device",
        ("pretrain", "public"),
        "DP-SGD on the GroupNorm scales and shifts only, from the publicly pretrained device",
    ),
    "cut-noise": Family(
        "noise on clipped activations",
        "tab:orange",
        "cut_noise",
        "noise",
        "a separate, per-release guarantee on the activations: a Gaussian mechanism of noise multiplier "
        "cut-noise / 2 (sensitivity 2 x clip), composed over every release of an image; vacuous at the strengths "
        "shown (hundreds or more per release)",
        compare="reaches",
    ),
    "nopeek": Family("NoPeek", "tab:green", "nopeek", "NoPeek", "no formal guarantee", compare="reaches"),
    "hijack": _dp_from(
        "DP-SGD under the hijacking server",
        "tab:red",
        "whatever gradient the server sends down the cut (--server hijack): the client clips and noises it as it "
        "would the task's, so the guarantee does not depend on the server's honesty; it bounds what the device "
        "weights reveal, not what the hijacked activations do",
        ("server", "hijack"),
        "Under the hijacking server, its own decoder's re-id",
        attack="hijack",
    ),
    "detect": Family(
        "the client's label probe (a hijack detector)",
        "tab:cyan",
        "detect",
        "probe",
        "no guarantee: it tells the published hijack from an honest server by whether the gradient that comes down "
        "the cut reads the labels (clients/detector.py); a server that spots its probes, or mixes the task's "
        "gradient into its own, could evade it",
        compare="alarms",
        drawn=False,
    ),
    "control": Family("control", "black", "", "", "a reference point, not a defense"),
}
