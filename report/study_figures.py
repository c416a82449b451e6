"""The study's figures, from its points (``report.study_stats.Point``): leakage against accuracy (the headline
figure), leakage and accuracy against epsilon (DP cells), epsilon per round, and, for a study whose DP cells differ
in the images a client holds (docs/study-data.toml), accuracy and leakage against images per client."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core import files  # noqa: E402
from core.defenses import FAMILIES  # noqa: E402
from report.study_stats import Point, best_reid, by_epsilon, curves, eps_label  # noqa: E402

CUT_MARKERS = {1: "^", 2: "s", 3: "D", 4: "o"}
FIGURES = ("leakage_vs_accuracy.png", "leakage_vs_epsilon_study.png", "epsilon_per_round_study.png")
DATA_FIGURE = "data_per_client.png"  # only for a study of several sizes (``plot_data_per_client``)


def _interval(row: dict, key: str) -> tuple[float, float]:
    return row[key] - row[f"{key}_lo"], row[f"{key}_hi"] - row[key]


def plot_headline(points: Sequence[Point], path: Path, central: float | None = None) -> None:
    """Leakage (unseen) against val acc: re-id of the best attack and the highest SSIM, one curve per family and
    cut, DP points labelled with their epsilon, controls as black stars; dotted: the mean-image baseline's SSIM and
    the re-id chance; dashed, when given: ``central``, the val acc of the centralised model (the accuracy ceiling)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    labels: list[tuple] = []  # (axis, xs, ys, texts) of each DP curve, drawn once the axes' scales are set
    if central is not None:
        for ax in axes:
            ax.axvline(central, color="black", linestyle="--", linewidth=1, label=f"centralised model ({central:.3f})")
    for (family, cut), series in curves(points).items():
        xs = [p.val_acc for p in series]
        style = {"color": FAMILIES[family].colour, "marker": CUT_MARKERS.get(cut, "o"), "capsize": 3}
        style["linestyle"] = "-" if cut == 4 else "--"
        label = f"{FAMILIES[family].label}, cut {cut}"
        xerr = _acc_interval(series)
        for ax, rows, key, per_run in (
            (axes[0], [p.reid() for p in series], "reid_top1", best_reid),
            (axes[1], [p.ssim() for p in series], "ssim", lambda run: run.ssim()["ssim"]),
        ):
            ys = [r[key] for r in rows]
            err = list(zip(*(_interval(r, key) for r in rows), strict=True))
            ax.errorbar(xs, ys, xerr=xerr, yerr=err, label=label, **style)
            _faint_runs(ax, series, per_run, style["color"], style["marker"])
        if FAMILIES[family].sweeps_epsilon:
            for ax, ys in (
                (axes[0], [p.reid()["reid_top1"] for p in series]),
                (axes[1], [p.ssim()["ssim"] for p in series]),
            ):
                labels.append((ax, xs, ys, [eps_label(p) for p in series]))
    for p in (p for p in points if p.cell.family == "control"):
        star = {"color": "black", "marker": "*", "markersize": 11, "capsize": 3, "linestyle": "none"}
        for ax, row, key, per_run in (
            (axes[0], p.reid(), "reid_top1", best_reid),
            (axes[1], p.ssim(), "ssim", lambda run: run.ssim()["ssim"]),
        ):
            err = [[v] for v in _interval(row, key)]
            label = f"control: {p.cell.name}, cut {p.cut}"
            ax.errorbar([p.val_acc], [row[key]], xerr=_acc_interval([p]), yerr=err, label=label, **star)
            _faint_runs(ax, [p], per_run, "black", "*")
    chance = statistics.mean(p.reid()["reid_chance"] for p in points)
    axes[0].axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    # Log scale from half the chance level: re-id spans 1e-3 (a defense at chance) to 1 (cut 2).
    axes[0].set(yscale="log", ylabel="re-id top-1 (best attack)", ylim=(chance / 2, 1.5))
    baseline = statistics.mean(p.sets["unseen"]["baseline"]["ssim"] for p in points)
    axes[1].axhline(baseline, color="grey", linestyle=":", linewidth=1, label="mean image (knows nothing)")
    axes[1].set(ylabel="SSIM (highest of any attack)")
    for ax in axes:
        ax.set_xlabel("validation accuracy (20 alphabets)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    for ax, xs, ys, texts in labels:
        _annotate_merged(ax, xs, ys, texts)
    fig.suptitle(f"Leakage on unseen images against task accuracy (bars: {_bars(points)})")
    fig.tight_layout()
    _save(fig, path)


def _bars(points: Sequence[Point]) -> str:
    """What a figure's re-id bars are: t-intervals across runs when a cell was trained more than once."""
    runs = max(p.n_runs for p in points)
    return f"95 % t-intervals across {runs} training runs" if runs > 1 else "bootstrap 95 % intervals over images"


def _acc_interval(series: Sequence[Point]) -> list[list[float]] | None:
    """x error bars: each point's val acc interval across runs; None when the points are single runs."""
    if any(p.val_acc_lo is None for p in series):
        return None
    return [[p.val_acc - p.val_acc_lo for p in series], [p.val_acc_hi - p.val_acc for p in series]]


def _faint_runs(ax, series: Sequence[Point], value, colour, marker: str) -> None:
    """Each training run of a summarised point, faintly behind it (nothing for single runs)."""
    runs = [run for p in series if p.n_runs > 1 for run in p.runs]
    if runs:
        ax.scatter([r.val_acc for r in runs], [value(r) for r in runs], color=colour, marker=marker, s=14,
                   alpha=0.25, linewidths=0, zorder=1)  # fmt: skip


def _annotate_merged(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], near_px: float = 14) -> None:
    """Label a curve's points; consecutive points within ``near_px`` pixels of the group's first point share one
    label ("eps 30, 8, 3, 1"), so a cluster of points (DP at cut 4 barely moves) stays readable. Groups' labels
    alternate above and below their point."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaled limits before reading pixel positions
    pixels = ax.transData.transform(list(zip(xs, ys, strict=True)))
    groups: list[list[int]] = []
    for i, (px, py) in enumerate(pixels):
        if groups and abs(px - pixels[groups[-1][0]][0]) <= near_px and abs(py - pixels[groups[-1][0]][1]) <= near_px:
            groups[-1].append(i)
        else:
            groups.append([i])
    for n, group in enumerate(groups):
        text = texts[group[0]] + "".join(", " + texts[i].removeprefix("eps ") for i in group[1:])
        offset = (5, 4) if n % 2 == 0 else (5, -11)
        ax.annotate(text, (xs[group[0]], ys[group[0]]), textcoords="offset points", xytext=offset, fontsize=8)


def plot_epsilon(points: Sequence[Point], path: Path) -> None:
    """DP cells only: re-id, highest SSIM and val acc against the median client epsilon, one line per DP family and
    cut."""
    dp = [p for p in points if FAMILIES[p.cell.family].sweeps_epsilon]
    several = len({p.cell.family for p in dp}) > 1
    finite = [p.epsilon_median for p in dp if math.isfinite(p.epsilon_median)] or [1.0]
    right = max(finite) * 10  # where epsilon inf is drawn

    def x(p: Point) -> float:
        return p.epsilon_median if math.isfinite(p.epsilon_median) else right

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for (family, cut), series in sorted(curves(dp).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        xs = [x(p) for p in series]
        name = f"{FAMILIES[family].label}, cut {cut}" if several else f"cut {cut}"
        style = {"marker": CUT_MARKERS.get(cut, "o"), "capsize": 3, "label": name}
        for ax, rows, key in (
            (axes[0], [p.reid() for p in series], "reid_top1"),
            (axes[1], [p.ssim() for p in series], "ssim"),
        ):
            ax.errorbar(
                xs, [r[key] for r in rows], yerr=list(zip(*(_interval(r, key) for r in rows), strict=True)), **style
            )
        axes[2].plot(xs, [p.val_acc for p in series], marker=style["marker"], label=name)
    ticks = sorted({x(p) for p in dp})
    for ax, label in zip(axes, ("re-id top-1 (best attack, unseen)", "SSIM (highest, unseen)", "val acc"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:.3g}" if t != right else "inf" for t in ticks])
        ax.minorticks_off()
        ax.set(xlabel="median client epsilon", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle("DP-SGD: leakage and accuracy against epsilon (per client, record-level, device weights only)")
    fig.tight_layout()
    _save(fig, path)


def plot_rounds(points: Sequence[Point], path: Path) -> None:
    """The median client's epsilon after each round, one line per DP cell with noise."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dp = [p for p in points if FAMILIES[p.cell.family].sweeps_epsilon and p.noise > 0]
    for p in dp:
        rounds = range(1, len(p.epsilon_rounds) + 1)
        ax.plot(rounds, p.epsilon_rounds, marker="o", label=f"{p.title} (sigma {p.noise:.3g})")
    ax.set(xlabel="round", ylabel="median client epsilon", title="Privacy budget spent per round")
    ax.grid(alpha=0.3)
    if dp:
        ax.legend(fontsize=8)
    else:  # no cell with DP-SGD noise: epsilon is infinite everywhere, and the figure says so instead of a legend
        ax.text(0.5, 0.5, "no cell ran DP-SGD with noise: epsilon is infinite", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    _save(fig, path)


def plot_data_per_client(points: Sequence[Point], path: Path) -> bool:
    """Val acc and the best attack's re-id top-1 on unseen images against the images a client trains on (median over
    clients, log scale): one line per DP-SGD point label of the ``dp`` cells ("eps inf", "eps 8", from epsilon inf
    down), each across the sizes it was run at, and the controls (the device frozen) as one line of black stars.
    Bars: val acc's t-interval across runs where a point has several, re-id's interval (across runs, or over images
    for one run). False (no file) unless the ``dp`` cells hold at least two sizes: only a study of how much data a
    client needs (docs/study-data.toml) draws it."""
    dp = [p for p in points if p.cell.family == "dp"]
    if len({p.images_per_client for p in dp}) < 2:
        return False
    lines: dict[str, list[Point]] = {}
    for p in sorted(dp, key=by_epsilon):
        lines.setdefault(p.cell.label, []).append(p)
    controls = [p for p in points if p.cell.family == "control"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = (("-", "o"), ("--", "s"), (":", "D"), ("-.", "^"))  # (line, marker): DP lines share the family's colour
    for n, (label, series) in enumerate(lines.items()):
        dash, marker = styles[n % len(styles)]
        style = {"color": FAMILIES["dp"].colour, "linestyle": dash, "marker": marker, "capsize": 3}
        _against_size(axes, series, label, style)
    if controls:
        star = {"color": FAMILIES["control"].colour, "marker": "*", "markersize": 11, "capsize": 3}
        _against_size(axes, controls, "frozen control", star)
    chance = statistics.mean(p.reid()["reid_chance"] for p in points)
    axes[1].axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    axes[0].set_ylabel("validation accuracy (20 alphabets)")
    axes[1].set(yscale="log", ylabel="re-id top-1 (best attack, unseen)", ylim=(chance / 2, 1.5))
    ticks = sorted({p.images_per_client for p in dp + controls})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:,.0f}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("images per client (median over clients)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Accuracy and leakage against the images a client trains on (bars: {_bars(points)})")
    fig.tight_layout()
    _save(fig, path)
    return True


def _against_size(axes, series: Sequence[Point], label: str, style: dict) -> None:
    """One line of ``plot_data_per_client`` on both its axes, its points in order of images per client."""
    series = sorted(series, key=lambda p: p.images_per_client)
    xs = [p.images_per_client for p in series]
    low = [p.val_acc - p.val_acc_lo if p.val_acc_lo is not None else 0.0 for p in series]
    high = [p.val_acc_hi - p.val_acc if p.val_acc_hi is not None else 0.0 for p in series]
    axes[0].errorbar(xs, [p.val_acc for p in series], yerr=[low, high], label=label, **style)
    rows = [p.reid() for p in series]
    err = list(zip(*(_interval(r, "reid_top1") for r in rows), strict=True))
    axes[1].errorbar(xs, [r["reid_top1"] for r in rows], yerr=err, label=label, **style)


def _save(fig: plt.Figure, path: Path) -> None:
    files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
