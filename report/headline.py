"""The study's answer in a few sentences, computed from its points (``report.study_stats.Point``): what DP-SGD's
epsilon buys at each cut against the no-defense cell, at what accuracy cost, which strength of each other defense
reaches the same re-id, the cut moved, and each control. With several training runs a cell, comparisons of two cells
are paired by training seed, and "not distinguishable" is written where the paired interval contains 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from core.defenses import FAMILIES
from report.study_stats import Point, by_epsilon, eps_label, paired, reid_by, strength
from split.server import SERVERS

_REACHES = [name for name, family in FAMILIES.items() if family.compare == "reaches"]
_STARTS = [name for name, family in FAMILIES.items() if family.compare == "start"]


def _acc(p: Point) -> float:
    return p.val_acc


def versus(a: Point, b: Point, name: str, attack: str = "") -> str:
    """ " (against <name>, paired over N seeds: re-id d [lo, hi], val acc d [lo, hi])", "" for one run; re-id is
    ``attack``'s ("": the best attack's)."""
    reid, acc = paired(a, b, reid_by(attack)), paired(a, b, _acc)
    if reid is None or acc is None:
        return ""
    return f" (against {name}, paired over {reid.n} seeds: {reid.text('re-id')}, {acc.text('val acc')})"


def _point_label(p: Point) -> str:
    """ "eps 8 (sigma 0.853)" for a DP point; the family and strength for another, e.g. "NoPeek (NoPeek 0.3)"."""
    family = FAMILIES[p.cell.family]
    return f"{eps_label(p)} (sigma {p.noise:.3g})" if family.sweeps_epsilon else f"{family.label} ({p.cell.label})"


def ci(row: dict, key: str, digits: int = 3) -> str:
    """``row[key]`` with its interval (``<key>_lo``, ``<key>_hi``), e.g. "0.300 [0.280, 0.320]"."""
    return f"{row[key]:.{digits}f} [{row[f'{key}_lo']:.{digits}f}, {row[f'{key}_hi']:.{digits}f}]"


def headline(points: Sequence[Point]) -> str:
    """The study's answer in a sentence or three, computed from the points (see ``_compare``)."""
    sentences = []
    for cut in sorted({p.cut for p in points}, reverse=True):
        at_cut = [p for p in points if p.cut == cut]
        plain = next((p for p in at_cut if p.cell.family == "dp" and p.noise == 0), None)
        dp = sorted(
            (p for p in at_cut if p.cell.family == "dp" and p.noise > 0), key=lambda p: abs(p.epsilon_median - 8)
        )
        if plain is None:  # no no-defense cell to compare with: each point on its own (controls come below)
            sentences += [
                f"At cut {cut} and {_point_label(p)} the best attack re-identifies {ci(p.reid(), 'reid_top1')} of "
                f"unseen images at val acc {p.val_acc:.3f}."
                for p in at_cut
                if p.cell.family != "control"
            ]
            sentences += _strongest(dp, cut)
            continue
        if dp:
            target = dp[0]
            s = (
                f"At cut {cut}, going from epsilon inf to epsilon {target.epsilon_median:.3g} moves the best "
                f"attack's re-id on unseen images from {ci(plain.reid(), 'reid_top1')} to "
                f"{ci(target.reid(), 'reid_top1')} at an accuracy cost of {plain.val_acc - target.val_acc:+.3f} "
                f"(val acc {plain.val_acc:.3f} to {target.val_acc:.3f}){versus(target, plain, 'eps inf')}"
            )
            reached = []
            for family in _REACHES:
                text, point = _compare(plain, target, [p for p in at_cut if p.cell.family == family], family)
                s += text
                reached += [point] if point else []
            sentences.append(s + ".")
            for b, a in itertools.pairwise(reached):  # each defense that reaches it against the one before
                compared = versus(a, b, f"{FAMILIES[b.cell.family].label} {b.cell.label}")
                if compared:
                    sentences.append(f"{FAMILIES[a.cell.family].label} {a.cell.label} at cut {cut}{compared}.")
            sentences += _strongest(dp, cut)
        else:
            sentences.append(
                f"At cut {cut} without DP the best attack re-identifies {ci(plain.reid(), 'reid_top1')} of unseen "
                f"images at val acc {plain.val_acc:.3f}."
            )
        sentences += [_from_start(name, cut, at_cut) for name in _STARTS if any(p.cell.family == name for p in at_cut)]
        sentences += [_detected(p, at_cut) for p in at_cut if FAMILIES[p.cell.family].compare == "alarms"]
    plains = {p.cut: p for p in points if p.cell.family == "dp" and p.noise == 0}
    if 4 in plains and 2 in plains:
        a, b = plains[4], plains[2]
        sentences.append(
            f"Moving the cut from block 4 to block 2 (no defense) moves re-id from {ci(a.reid(), 'reid_top1')} to "
            f"{ci(b.reid(), 'reid_top1')}, with val acc {a.val_acc:.3f} and {b.val_acc:.3f}"
            f"{versus(b, a, 'cut 4')}."
        )
    for p in (p for p in points if p.cell.family == "control"):
        family = controlled(p)
        attack = FAMILIES[family].attack
        same_start = sorted(
            (d for d in points if d.cut == p.cut and d.cell.family == family and d.noise > 0), key=by_epsilon
        )
        compared = [(d, versus(d, p, p.cell.name, attack)) for d in same_start]
        sentences.append(
            f"Control {p.cell.name} (cut {p.cut}): {_reid_text(p, attack)} at val acc {p.val_acc:.3f}"
            + "".join(f"; {eps_label(d)} from the same start{text}" for d, text in compared if text)
            + "."
        )
    runs = max((p.n_runs for p in points), default=1)
    if sentences and runs > 1:
        sentences.insert(
            0,
            f"Over {runs} training runs per cell (means with 95 % t-intervals across runs; comparisons paired by "
            "training seed, 'not distinguishable' where the paired interval contains 0):",
        )
    return " ".join(sentences) or "No cell is finished yet."


def _strongest(dp: list[Point], cut: int) -> list[str]:
    """The sentence on the smallest epsilon at ``cut``, compared with ``dp[0]`` (the point nearest epsilon 8); none
    when there is only that point."""
    if not dp:
        return []
    target, strongest = dp[0], min(dp, key=lambda p: p.epsilon_median)
    if strongest is target:
        return []
    return [
        f"At epsilon {strongest.epsilon_median:.3g} (cut {cut}) re-id is {ci(strongest.reid(), 'reid_top1')} at "
        f"val acc {strongest.val_acc:.3f}{versus(strongest, target, eps_label(target))}."
    ]


def controlled(control: Point) -> str:
    """The family a control is the frozen start of: the most specific DP-SGD family whose ``start`` its settings
    hold (``core.defenses``), e.g. the publicly pretrained device's for a pretrained control; "dp" when none."""
    fits = [
        name
        for name, family in FAMILIES.items()
        if family.sweeps_epsilon and family.start and family.starts(control.cell.settings)
    ]
    return max(fits, key=lambda name: len(FAMILIES[name].start), default="dp")


def _reid_text(p: Point, attack: str) -> str:
    """ "re-id 0.300 [0.280, 0.320]" for the best attack, "hijack re-id ..." for a named one."""
    return f"{attack + ' ' if attack else ''}re-id {ci(p.reid(attack=attack), 'reid_top1')}"


def _from_start(name: str, cut: int, at_cut: Sequence[Point]) -> str:
    """The sentence of a family that starts elsewhere (``compare`` "start"): each of its epsilons, against its
    epsilon inf and its control, paired by seed; re-id is the family's own attack's (the best's if it names none),
    with that attack's ceiling where the run measured one."""
    family = FAMILIES[name]
    series = sorted((p for p in at_cut if p.cell.family == name), key=by_epsilon)
    frozen = next((p for p in at_cut if p.cell.family == "control" and family.starts(p.cell.settings)), None)
    plain = next((p for p in series if p.noise == 0), None)
    ceiling = [p.ceilings[family.attack] for p in series if family.attack in p.ceilings]
    parts = []
    for p in series:
        text = f"{eps_label(p)}: val acc {p.val_acc:.3f}, {_reid_text(p, family.attack)}"
        if p.noise > 0:
            text += versus(p, plain, "eps inf", family.attack) if plain else ""
            text += versus(p, frozen, frozen.cell.name, family.attack) if frozen else ""
        parts.append(text)
    bound = f"; the {family.attack}'s own ceiling {ceiling[0]:.3f}" if ceiling else ""
    return f"{family.intro} (cut {cut}{bound}): " + "; ".join(parts) + "."


def _compare(plain: Point, target: Point, family: list[Point], name: str) -> tuple[str, Point | None]:
    """("; <family> reaches the same re-id at an accuracy cost of d", that point): the weakest strength whose re-id
    is at or below the DP point's upper bound, or says that none does (and None)."""
    reached = sorted(
        (p for p in family if p.reid()["reid_top1"] <= target.reid()["reid_top1_hi"]), key=lambda p: strength(p.cell)
    )
    what = FAMILIES[name].label
    if not family:
        return "", None
    if not reached:
        return f"; no {what} strength tried reaches that re-id", None
    p = reached[0]
    text = (
        f"; {what} ({p.cell.label}) reaches {ci(p.reid(), 'reid_top1')} at an accuracy cost of "
        f"{plain.val_acc - p.val_acc:+.3f}{versus(p, plain, 'no defense')}"
    )
    return text, p


def _detected(p: Point, at_cut: Sequence[Point]) -> str:
    """The sentence of a detector's cell (``compare`` "alarms"): how often its clients alarmed under its server
    (false alarms under an honest one), and its cost against the same cell without the detector, paired by seed
    (re-id: the server behaviour's own attack where it has one, e.g. the hijack's decoder)."""
    family = FAMILIES[p.cell.family]
    server = p.cell.settings.get("server", "honest")
    head = f"{family.label} ({p.cell.label}, cut {p.cut}) under the {server} server"
    found = p.detector
    if found is None:
        return f"{head}: the run holds no detector.csv."
    what = "alarms" if server == "hijack" else "false alarms"
    first = f", the first in round {found['first_alarm']:g} (median)" if found["clients_alarmed"] else ""
    text = (
        f"{head}: {what} in {found['alarms']} of {found['client_rounds']} client rounds, from "
        f"{found['clients_alarmed']} of {found['clients']} clients{first}, at val acc {p.val_acc:.3f}"
    )
    without = {key: value for key, value in p.cell.settings.items() if key != family.strength}
    plain = next((q for q in at_cut if q is not p and q.cell.settings == without), None)
    if plain is not None:
        # The server's own attack where it has one (the hijack's decoder under the hijacking server).
        attack = next((a for a in SERVERS[server].attacks if a in p.sets["unseen"]["attacks"]), "")
        text += f" ({plain.cell.name} without it: val acc {plain.val_acc:.3f})"
        text += versus(p, plain, plain.cell.name, attack)
    return text + "."
