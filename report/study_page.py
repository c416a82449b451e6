"""The study's page: leakage against accuracy per defense family, as ``report.html`` (self-contained) and
``report.md``, with ``study.csv`` and the figures beside them.

Each job has its module: the numbers (``report.study_stats``: read, summarised across seeds, paired), the figures
(``report.study_figures``), the headline's sentences (``report.headline``), the CSV (``report.study_csv``) and the
audit's section (``report.study_audit``); this one lays them out on the page.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

from core import files
from core.defenses import FAMILIES
from core.privacy import EPSILON_COVERS
from core.rundir import RunDir
from report.headline import ci, headline
from report.study_audit import FIGURE as AUDIT_FIGURE
from report.study_audit import audit_rows, audit_sentence, plot_audit
from report.study_csv import write_csv
from report.study_figures import (
    CUT_MARKERS,
    DATA_FIGURE,
    FIGURES,
    plot_data_per_client,
    plot_epsilon,
    plot_headline,
    plot_rounds,
)
from report.study_stats import Point, StudyCell, read_point, summarise
from report.sweep import final_val_acc


def _table(points: Sequence[Point]) -> tuple[list[str], list[list[str]]]:
    head = ["cell", "runs", "family", "cut", "sigma", "epsilon (median)", "val acc", "best attack",
            "re-id top-1 (unseen)", "highest SSIM (unseen)", "re-id clients, inference", "re-id clients, training",
            "activation-NN re-id"]  # fmt: skip
    # A family read by an attack of its own (the hijack's decoder) adds that attack's column, "-" where not run.
    own = sorted({FAMILIES[p.cell.family].attack for p in points} - {""})
    head += [f"{attack} re-id (unseen)" for attack in own]
    detected = any(p.detector is not None for p in points)  # --detect cells add their alarms, "-" elsewhere
    head += ["detector alarms (client rounds)"] if detected else []
    rows = []
    for p in points:
        eps = "inf" if not math.isfinite(p.epsilon_median) else f"{p.epsilon_median:.3g}"
        rows.append(
            [
                p.cell.name,
                str(p.n_runs),
                p.cell.family,
                str(p.cut),
                f"{p.noise:.3g}",
                eps,
                f"{p.val_acc:.3f}"
                if p.val_acc_lo is None
                else f"{p.val_acc:.3f} [{p.val_acc_lo:.3f}, {p.val_acc_hi:.3f}]",
                p.reid()["attack"],
                ci(p.reid(), "reid_top1"),
                f"{ci(p.ssim(), 'ssim')} ({p.sets['unseen']['ssim'][0]})",
                ci(p.reid("clients_inference"), "reid_top1"),
                ci(p.reid("clients_train"), "reid_top1"),
                f"{p.activation_nn_reid:.3f}",
            ]  # fmt: skip
            + [ci(p.reid(attack=a), "reid_top1") if a in p.sets["unseen"]["attacks"] else "-" for a in own]
            + ([_alarms(p.detector)] if detected else [])
        )
    return head, rows


def _alarms(found: dict | None) -> str:
    return "-" if found is None else f"{found['alarms']} of {found['client_rounds']}"


def covers(families: Sequence[str]) -> str:
    """What epsilon covers, then the guarantee of each other defense family the study holds (core.defenses)."""
    others = [f"{FAMILIES[f].label}: {FAMILIES[f].guarantee}" for f in FAMILIES if f in families and f != "dp"]
    return (
        f"What epsilon covers: {EPSILON_COVERS}."
        + "".join(f" {text}." for text in others)
        + " Activation-NN re-id: matching each intercepted activation to the candidates' own activations, what an "
        "attacker holding the candidate images achieves (the ceiling for identification)."
    )


def central_accuracy(run_dir: Path | None) -> float | None:
    """The final val acc of a centralised run (``sim.py --clients 1 --partition iid``), or None."""
    if run_dir is None:
        return None
    return final_val_acc(run_dir)  # only metrics.csv: what --central checks for


def write_study_report(
    out_dir: Path,
    runs: Sequence[tuple[StudyCell, Path]],
    markdown: bool = True,
    central: Path | None = None,
) -> Path:
    """study.csv, the figures, report.md (unless ``markdown`` is False: a sweep of ``sim.py --noise`` writes its
    own) and a self-contained report.html (every figure inline) in ``out_dir``; returns report.html's path.
    ``runs``: the study's training runs, each (its cell, its run directory); a cell's runs are summarised across
    seeds (``summarise``), in the order of their first run. ``central``: a centralised run, drawn as the accuracy
    ceiling."""
    by_cell: dict[str, list[Point]] = {}
    for cell, run_dir in runs:
        by_cell.setdefault(cell.name, []).append(read_point(cell, run_dir))
    points = [summarise(series) for series in by_cell.values()]
    write_csv(points, out_dir / "study.csv")
    plot_headline(points, out_dir / FIGURES[0], central_accuracy(central))
    plot_epsilon(points, out_dir / FIGURES[1])
    plot_rounds(points, out_dir / FIGURES[2])
    if not plot_audit(points, out_dir / AUDIT_FIGURE, CUT_MARKERS):
        (out_dir / AUDIT_FIGURE).unlink(missing_ok=True)  # a figure left by an earlier report with audits
    per_client = plot_data_per_client(points, out_dir / DATA_FIGURE)
    if not per_client:
        (out_dir / DATA_FIGURE).unlink(missing_ok=True)  # a figure left by an earlier report of several sizes
    sentence = headline(points)
    if markdown:
        files.write_text(out_dir / "report.md", _markdown(points, sentence, per_client))
    return files.write_text(out_dir / "report.html", _html(out_dir, points, sentence, per_client))


def write_sweep_page(out_dir: Path, run_dirs: Sequence[Path]) -> Path:
    """report.html of a sweep of ``sim.py --noise`` in ``out_dir``: the study's page, each run (a directory below
    ``out_dir``, named by it) a point of the DP-SGD curve at its sigma; no report.md (the sweep writes its own,
    ``report.sweep``). Returns report.html's path."""
    cells = [
        (StudyCell(os.path.relpath(run_dir, out_dir), "dp", {"noise": RunDir(run_dir).read_config().noise}), run_dir)
        for run_dir in run_dirs
    ]
    return write_study_report(out_dir, cells, markdown=False)


def _markdown(points: Sequence[Point], sentence: str, per_client: bool) -> str:
    """report.md; ``per_client``: whether ``DATA_FIGURE`` was drawn."""
    head, rows = _table(points)
    lines = ["# Leakage against accuracy: the study", "", f"**{sentence}**", "", covers(_families(points)), ""]
    lines += [f"![{name}]({name})" for name in ((*FIGURES, DATA_FIGURE) if per_client else FIGURES)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Every number: [study.csv](study.csv). Each cell's run directory holds its reconstructions:"]
    lines += [f"- [{p.title}]({p.cell.name}/report.md)" for p in points]
    if said := audit_sentence(points):
        head, rows = audit_rows(points)
        lines += ["", "## Privacy audit (one run each)", "", said, "", f"![{AUDIT_FIGURE}]({AUDIT_FIGURE})", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _families(points: Sequence[Point]) -> set[str]:
    return {p.cell.family for p in points}


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# Per-client grids inline for the no-defense cells (the worst case at each cut): the others stay one click away.
INLINE_CLIENTS = 4


def _html(out_dir: Path, points: Sequence[Point], sentence: str, per_client: bool) -> str:
    """report.html, every image inline; ``per_client``: whether ``DATA_FIGURE`` was drawn."""
    head, rows = _table(points)
    esc = html.escape
    sizes = (
        ["<h2>Accuracy and leakage against images per client</h2>", _img(out_dir / DATA_FIGURE, "images per client")]
        if per_client
        else []
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Split learning leakage study</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #bbb;padding:3px 6px}"
        "#headline{font-size:1.15em;background:#f3f6fa;padding:0.8em;border-left:4px solid #2a6}</style></head><body>",
        "<h1>How much of a client's images can the server reconstruct, at each privacy budget?</h1>",
        f"<p id='headline'>{esc(sentence)}</p>",
        f"<p>{esc(covers(_families(points)))}</p>",
        "<h2>Leakage against accuracy</h2>",
        _img(out_dir / FIGURES[0], "leakage against accuracy"),
        "<h2>Leakage against epsilon (DP-SGD)</h2>",
        _img(out_dir / FIGURES[1], "leakage against epsilon"),
        "<h2>Privacy budget per round</h2>",
        _img(out_dir / FIGURES[2], "epsilon per round"),
        *sizes,
        "<h2>Every cell</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>",
        *("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows),
        "</table><p>Every number: <a href='study.csv'>study.csv</a>.</p>",
    ]
    if said := audit_sentence(points):
        audit_head, audit_table = audit_rows(points)
        parts += [
            "<h2 id='audit'>Privacy audit: what epsilon promises, checked from the server's seat</h2>",
            f"<p>{esc(said)}</p>",
            _img(out_dir / AUDIT_FIGURE, "epsilon lower bound against the ledger's epsilon"),
            "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in audit_head) + "</tr>",
            *("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in audit_table),
            "</table>",
        ]
    parts += [
        "<h2>Reconstructions</h2>",
    ]
    for p in points:
        parts.append(f"<h3>{esc(p.title)} ({esc(p.cell.family)}, {esc(p.cell.label)}, cut {p.cut})</h3>")
        unseen = p.run_dir / "reconstructions_unseen.png"
        if unseen.exists():
            parts.append(_img(unseen, f"{p.title} unseen"))
        grids = sorted(p.run_dir.glob("reconstructions_client_*.png"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        shown = grids[:INLINE_CLIENTS] if p.cell.family == "dp" and p.noise == 0 else []
        parts += [_img(g, f"{p.title} {g.stem}") for g in shown]
        links = ", ".join(f"<a href='{esc(p.cell.name)}/{g.name}'>{g.stem.rsplit('_', 1)[1]}</a>" for g in grids)
        if links:
            parts.append(f"<p>Per client: {links}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
