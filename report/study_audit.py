"""The study's audit: each audited run's one-run lower bound on epsilon (``audit.json``, ``--audit``) against the
ledger's epsilon, as a figure with the diagonal, a sentence, and a table.

Every training run is drawn on its own (a cell with several training seeds gives several points): a lower bound is
a statement about one run, and averaging bounds is not a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from audit.bound import ideal_fields  # noqa: E402
from core import files  # noqa: E402
from core.rundir import RunDir  # noqa: E402

FIGURE = "audit_vs_epsilon_study.png"


def read_audit(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``audit.json`` (None when the run had no --audit); one written before audit.json stored the ideal
    bound gets it here, from its own (epsilon, delta, m)."""
    run = RunDir(run_dir)
    if not run.audit.exists():
        return None
    found = run.read_json(run.audit.name)
    if "ideal_epsilon_lower" not in found:
        found |= ideal_fields(found["epsilon_lower"], _claimed(found), found["delta"], found["m"])
    return found


def ideal_text(found: dict) -> str:
    """ "; an ideal audit of 1000 canaries reaches 2.61 at this epsilon (...): this one reached 36% of it", or ""
    without DP."""
    if found["ideal_epsilon_lower"] is None:
        return ""
    if not found["ideal_epsilon_lower"]:
        return f"; an ideal audit of {found['m']} canaries shows nothing at this epsilon (its median bound is 0)"
    return (
        f"; an ideal audit of {found['m']} canaries reaches {found['ideal_epsilon_lower']:.3g} at this epsilon "
        f"(a Gaussian mechanism of exactly it, scored by its likelihood ratio): this one reached "
        f"{found['fraction_of_ideal']:.0%} of it" + server_view_text(found)
    )


def server_view_text(found: dict) -> str:
    """ "; from the server's seat (...) at most 1.19: this one reached 78% of that", or "" where audit.json has no
    server-view bound (no DP, or written before it held one)."""
    ceiling = found.get("server_view_epsilon_lower")
    if not ceiling:
        return ""
    return (
        f"; from the server's seat (one summed SGD update per client and round, no data drift) any score reaches "
        f"at most {ceiling:.3g}: this one reached {found['fraction_of_server_view']:.0%} of that"
    )


def audited(points: Sequence) -> list[tuple[Any, dict]]:
    """(run's point, its audit) for every training run of ``points`` (``report.study_stats.Point``) that was audited."""
    return [(run, run.audit) for p in points for run in p.runs if run.audit is not None]


def _claimed(found: dict) -> float:
    return math.inf if found["epsilon"] is None else float(found["epsilon"])


def plot_audit(points: Sequence, path: Path, markers: dict[int, str]) -> bool:
    """The figure: epsilon lower bound against the ledger's epsilon per audited run, one marker per cut
    (``markers``: the study page's), the diagonal (where an exact audit would sit), epsilon inf drawn at the right
    edge. False (no file) when no run was audited."""
    runs = audited(points)
    if not runs:
        return False
    finite = [_claimed(a) for _, a in runs if math.isfinite(_claimed(a))] or [1.0]
    right = max(finite) * 3

    def x(found: dict) -> float:
        return _claimed(found) if math.isfinite(_claimed(found)) else right

    fig, ax = plt.subplots(figsize=(7, 5))
    top = max([right, *(a["epsilon_lower"] for _, a in runs)])
    ax.plot([0.3, top], [0.3, top], color="grey", linestyle="--", label="lower bound = ledger's epsilon")
    for cut in sorted({p.cut for p, _ in runs}):
        mine = [(p, a) for p, a in runs if p.cut == cut]
        ax.scatter([x(a) for _, a in mine], [max(a["epsilon_lower"], 0.3) for _, a in mine],
                   marker=markers.get(cut, "o"), s=50, label=f"cut {cut}")  # fmt: skip
        for p, a in mine:
            ax.annotate(p.cell.name, (x(a), max(a["epsilon_lower"], 0.3)), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
    ticks = sorted({x(a) for _, a in runs})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ticks, [f"{t:.3g}" if t != right else "inf" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="ledger's epsilon (the canaries' clients, largest)", ylabel="epsilon lower bound, 95 % (0 at 0.3)",
           title="One-run privacy audit from the server's seat")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return True


def audit_sentence(points: Sequence) -> str:
    """What the audits say, in a sentence or two ('' when no run was audited)."""
    runs = audited(points)
    if not runs:
        return ""
    dp = [(p, a) for p, a in runs if math.isfinite(_claimed(a))]
    broken = [p.cell.name for p, a in runs if a["violation"]]
    parts = []
    if broken:
        names = ", ".join(broken)
        parts.append(f"The audit caught a violation in {names}: its lower bound passes the ledger's epsilon.")
    if dp:
        p, a = max(dp, key=lambda pa: pa[1]["epsilon_lower"] / _claimed(pa[1]))
        parts.append(
            f"Across {len(dp)} audited DP run(s) the one-run lower bound stays below the ledger's epsilon"
            + ("" if not broken else " elsewhere")
            + f"; the closest is {p.cell.name} (epsilon >= {a['epsilon_lower']:.3g} against {_claimed(a):.3g}"
            + ideal_text(a)
            + ")."
        )
    free = [(p, a) for p, a in runs if not math.isfinite(_claimed(a))]
    if free:
        p, a = max(free, key=lambda pa: pa[1]["epsilon_lower"])
        parts.append(
            f"Without DP the same audit reaches epsilon >= {a['epsilon_lower']:.3g} ({p.cell.name}, {a['m']} canaries)."
        )
    return " ".join(parts)


def audit_rows(points: Sequence) -> tuple[list[str], list[list[str]]]:
    """The table: one row per audited run."""
    head = ["cell", "training seed", "cut", "canaries", "guesses right", "epsilon lower bound (95 %)",
            "ledger's epsilon", "ideal one-run bound", "fraction of ideal", "server-view bound"]  # fmt: skip
    rows = []
    for p, a in audited(points):
        claimed = "inf" if a["epsilon"] is None else f"{a['epsilon']:.3g}"
        ideal = "-" if a["ideal_epsilon_lower"] is None else f"{a['ideal_epsilon_lower']:.3g}"
        fraction = "-" if a["fraction_of_ideal"] is None else f"{a['fraction_of_ideal']:.2f}"
        seat = "-" if not a.get("server_view_epsilon_lower") else f"{a['server_view_epsilon_lower']:.3g}"
        rows.append([p.cell.name, str(p.train_seed), str(p.cut), str(a["m"]), f"{a['correct']} of {a['guesses']}",
                     f"{a['epsilon_lower']:.3g}", claimed, ideal, fraction, seat])  # fmt: skip
    return head, rows
