"""The study's answer: leakage against accuracy per defense family, as ``report.html`` (self-contained) and
``report.md``, with ``study.csv`` and the figures beside them.

Reads only what each cell's training and attack wrote (config.json, metrics.csv, ledger.csv, leakage.json,
attack.json, the reconstruction PNGs). Leakage is measured on ``unseen`` small2 images (the honest number) and on
the clients' own images; two worst cases for the client are plotted:
- re-identification top-1 of the set's ``best`` attack (the highest lower end of the re-id interval);
- SSIM of the attack with the highest SSIM (a decoder drawing a clean background can out-score, on SSIM, an attack
  that re-identifies more: measured at cut 2, README).
Each with its bootstrap 95 % interval over images for one training run.

A cell trained N > 1 times (the study's ``--seeds``) is summarised across its runs: the mean of the per-run values
of val acc, best-attack re-id and highest SSIM, with a 95 % t-interval on those N values (Student's t, N - 1
degrees of freedom). The headline's comparisons of two cells are paired by training seed: the interval is on the
per-seed differences, and "not distinguishable" is written where it contains 0.
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import html
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core import files  # noqa: E402
from core.config import RunConfig  # noqa: E402
from core.defenses import FAMILIES  # noqa: E402
from core.privacy import EPSILON_COVERS  # noqa: E402
from core.rundir import RunDir  # noqa: E402
from report.study_audit import FIGURE as AUDIT_FIGURE  # noqa: E402
from report.study_audit import audit_rows, audit_sentence, plot_audit, read_audit  # noqa: E402
from report.sweep import final_val_acc, ledger_spend, run_summary  # noqa: E402
from study.grid import Cell, SeedRun  # noqa: E402

SETS = ("unseen", "clients_inference", "clients_train")
CUT_MARKERS = {1: "^", 2: "s", 3: "D", 4: "o"}
FIGURES = ("leakage_vs_accuracy.png", "leakage_vs_epsilon_study.png", "epsilon_per_round_study.png")
CSV_COLUMNS = (
    "cell", "seed", "runs", "family", "point", "cut", "noise", "epsilon_median", "epsilon_max", "val_acc",
    "val_acc_lo", "val_acc_hi", "set", "best_attack",
    "reid_top1", "reid_top1_lo", "reid_top1_hi", "reid_chance", "ssim_attack", "ssim", "ssim_lo", "ssim_hi",
    "mse", "baseline_ssim", "baseline_mse", "activation_nn_reid", "run_dir", "audit_m", "epsilon_lower",
)  # fmt: skip


@dataclass(frozen=True)
class Point:
    """One cell's numbers: its accuracy, privacy and, per set, the two worst-case leakage figures."""

    cell: Cell
    cut: int
    noise: float
    epsilon_median: float
    epsilon_max: float
    val_acc: float
    sets: dict[str, dict]  # set -> {"best": leakage row + "attack", "ssim": (attack, row), "baseline": row}
    activation_nn_reid: float
    epsilon_rounds: list[float]  # median client epsilon after each round
    run_dir: Path
    train_seed: int = 0
    runs: tuple[Point, ...] = ()  # a cell's summary: its per-seed points (one run: itself)
    val_acc_lo: float | None = None  # across runs (None for one run: no interval over one value)
    val_acc_hi: float | None = None
    audit: dict | None = None  # this run's audit.json (--audit); a summary keeps its runs' in ``runs``

    @property
    def n_runs(self) -> int:
        return max(1, len(self.runs))

    @property
    def title(self) -> str:
        return self.cell.name

    def reid(self, set_name: str = "unseen") -> dict:
        return self.sets[set_name]["best"]

    def ssim(self, set_name: str = "unseen") -> dict:
        return self.sets[set_name]["ssim"][1]


def read_point(cell: Cell, cfg: RunConfig, run_dir: Path) -> Point:
    """A finished cell's numbers from its run directory."""
    run = RunDir(run_dir)
    saved = run.read_config()
    summary = run_summary(run_dir)
    leakage, attack = run.read_json("leakage.json"), run.read_json("attack.json")
    sets = {}
    for set_name in SETS:
        methods = leakage[set_name]
        attacks = {k: v for k, v in methods.items() if k not in ("best", "baseline")}
        top_ssim = max(attacks, key=lambda k: attacks[k]["ssim"])
        sets[set_name] = {
            "best": methods["best"],
            "ssim": (top_ssim, attacks[top_ssim]),
            "baseline": methods["baseline"],
        }
    return Point(
        cell=cell,
        cut=saved.cut,
        noise=summary["noise"],
        epsilon_median=summary["epsilon_median"],
        epsilon_max=summary["epsilon_max"],
        val_acc=summary["val_acc"],
        sets=sets,
        activation_nn_reid=float(attack["ceiling_unseen"]["activation_nn_reid_top1"]),
        epsilon_rounds=ledger_spend(run_dir)[1],
        run_dir=run_dir,
        train_seed=saved.training_seed,
        audit=read_audit(run_dir),
    )


def across_runs(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95 % t-interval on ``values``, one per training run (lo = hi = mean for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _mean_row(rows: Sequence[dict], key: str) -> dict:
    """A leakage row for ``key`` across runs: the mean and its t-interval, the other numbers averaged."""
    mean, lo, hi = across_runs([r[key] for r in rows])
    numeric = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], int | float)}
    return {**numeric, key: mean, f"{key}_lo": lo, f"{key}_hi": hi}


def summarise(points: Sequence[Point]) -> Point:
    """One cell's runs (same cell, other training seeds) as one point: one run is itself; several give their means
    with t-intervals across runs (``across_runs``), the attack named that won most often."""
    first = points[0]
    if len(points) == 1:
        return dataclasses.replace(first, runs=(first,))
    sets = {}
    for set_name in SETS:
        best = [p.sets[set_name]["best"] for p in points]
        tops = [p.sets[set_name]["ssim"] for p in points]
        sets[set_name] = {
            "best": {**_mean_row(best, "reid_top1"), "attack": _most_common(r["attack"] for r in best)},
            "ssim": (_most_common(a for a, _ in tops), _mean_row([r for _, r in tops], "ssim")),
            "baseline": _mean_row([p.sets[set_name]["baseline"] for p in points], "ssim"),
        }
    acc, acc_lo, acc_hi = across_runs([p.val_acc for p in points])
    return dataclasses.replace(
        first,
        epsilon_median=statistics.median(p.epsilon_median for p in points),
        epsilon_max=max(p.epsilon_max for p in points),
        val_acc=acc,
        sets=sets,
        activation_nn_reid=statistics.fmean(p.activation_nn_reid for p in points),
        runs=tuple(points),
        val_acc_lo=acc_lo,
        val_acc_hi=acc_hi,
    )


def _most_common(names) -> str:
    return collections.Counter(names).most_common(1)[0][0]


@dataclass(frozen=True)
class Paired:
    """The per-seed differences a - b of one number between two cells' runs (same training seeds): mean, 95 %
    t-interval, number of pairs."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def distinguishable(self) -> bool:
        return self.n >= 2 and not self.lo <= 0 <= self.hi

    def text(self, what: str, digits: int = 3) -> str:
        """ "re-id +0.012 [0.004, 0.020]" or "re-id not distinguishable (-0.001 [-0.004, 0.002])"."""
        span = f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"
        return f"{what} {span}" if self.distinguishable else f"{what} not distinguishable ({span})"


def paired(a: Point, b: Point, value) -> Paired | None:
    """``value(run)`` of ``a``'s runs minus ``b``'s, paired by training seed; None unless both cells have the same
    seeds, at least two."""
    by_seed = {p.train_seed: p for p in b.runs}
    if len(a.runs) < 2 or sorted(p.train_seed for p in a.runs) != sorted(by_seed):
        return None
    mean, lo, hi = across_runs([value(p) - value(by_seed[p.train_seed]) for p in a.runs])
    return Paired(mean, lo, hi, len(a.runs))


def _reid(p: Point) -> float:
    return p.reid()["reid_top1"]


def _acc(p: Point) -> float:
    return p.val_acc


def versus(a: Point, b: Point, name: str) -> str:
    """ " (against <name>, paired over N seeds: re-id d [lo, hi], val acc d [lo, hi])", "" for one run."""
    reid, acc = paired(a, b, _reid), paired(a, b, _acc)
    if reid is None or acc is None:
        return ""
    return f" (against {name}, paired over {reid.n} seeds: {reid.text('re-id')}, {acc.text('val acc')})"


def curves(points: Sequence[Point]) -> dict[tuple[str, int], list[Point]]:
    """(family, cut) -> its points in order of strength, each non-DP curve starting from the no-defense cell at that
    cut (the DP cell without noise), DP from epsilon inf down. Controls are no curve: ``plot_headline`` draws them."""
    plain = {p.cut: p for p in points if p.cell.family == "dp" and p.noise == 0}
    out: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        if p.cell.family != "control":
            out.setdefault((p.cell.family, p.cut), []).append(p)
    for (family, cut), series in out.items():
        if FAMILIES[family].sweeps_epsilon:
            series.sort(key=_by_epsilon)
        else:
            series.sort(key=lambda p: _strength(p.cell))
            if cut in plain:
                series.insert(0, plain[cut])
    return out


def _by_epsilon(p: Point) -> float:
    """Sort key of a DP curve: epsilon inf first, then down."""
    return -p.epsilon_median if math.isfinite(p.epsilon_median) else -math.inf


def _strength(cell: Cell) -> float:
    return FAMILIES[cell.family].strength_of(cell.settings)


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
            (axes[0], [p.reid() for p in series], "reid_top1", _reid),
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
                labels.append((ax, xs, ys, [_eps_label(p) for p in series]))
    for p in (p for p in points if p.cell.family == "control"):
        star = {"color": "black", "marker": "*", "markersize": 11, "capsize": 3, "linestyle": "none"}
        for ax, row, key, per_run in (
            (axes[0], p.reid(), "reid_top1", _reid),
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
    runs = max(p.n_runs for p in points)
    bars = f"95 % t-intervals across {runs} training runs" if runs > 1 else "bootstrap 95 % intervals over images"
    fig.suptitle(f"Leakage on unseen images against task accuracy (bars: {bars})")
    fig.tight_layout()
    _save(fig, path)


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


def _eps_label(p: Point) -> str:
    return "eps inf" if not math.isfinite(p.epsilon_median) else f"eps {p.epsilon_median:.3g}"


def _point_label(p: Point) -> str:
    """ "eps 8 (sigma 0.853)" for a DP point; the family and strength for another, e.g. "NoPeek (NoPeek 0.3)"."""
    family = FAMILIES[p.cell.family]
    return f"{_eps_label(p)} (sigma {p.noise:.3g})" if family.sweeps_epsilon else f"{family.label} ({p.cell.label})"


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


def _save(fig: plt.Figure, path: Path) -> None:
    files.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def _ci(row: dict, key: str, digits: int = 3) -> str:
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
                f"At cut {cut} and {_point_label(p)} the best attack re-identifies {_ci(p.reid(), 'reid_top1')} of "
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
                f"attack's re-id on unseen images from {_ci(plain.reid(), 'reid_top1')} to "
                f"{_ci(target.reid(), 'reid_top1')} at an accuracy cost of {plain.val_acc - target.val_acc:+.3f} "
                f"(val acc {plain.val_acc:.3f} to {target.val_acc:.3f}){versus(target, plain, 'eps inf')}"
            )
            reached = {}
            for family in ("cut-noise", "nopeek"):
                text, reached[family] = _compare(plain, target, [p for p in at_cut if p.cell.family == family], family)
                s += text
            sentences.append(s + ".")
            if reached["cut-noise"] and reached["nopeek"]:
                a, b = reached["nopeek"], reached["cut-noise"]
                compared = versus(a, b, f"{FAMILIES['cut-noise'].label} {b.cell.label}")
                if compared:
                    sentences.append(f"{FAMILIES['nopeek'].label} {a.cell.label} at cut {cut}{compared}.")
            sentences += _strongest(dp, cut)
        else:
            sentences.append(
                f"At cut {cut} without DP the best attack re-identifies {_ci(plain.reid(), 'reid_top1')} of unseen "
                f"images at val acc {plain.val_acc:.3f}."
            )
        public = [p for p in at_cut if p.cell.family == "dp-public"]
        if public:
            public.sort(key=_by_epsilon)
            frozen = next((p for p in at_cut if p.cell.family == "control" and _pretrained(p)), None)
            sentences.append(
                f"From the publicly pretrained device (cut {cut}): "
                + "; ".join(
                    f"{_eps_label(p)}: val acc {p.val_acc:.3f}, re-id {_ci(p.reid(), 'reid_top1')}"
                    + (versus(p, frozen, frozen.cell.name) if frozen and p.noise > 0 else "")
                    for p in public
                )
                + "."
            )
    plains = {p.cut: p for p in points if p.cell.family == "dp" and p.noise == 0}
    if 4 in plains and 2 in plains:
        a, b = plains[4], plains[2]
        sentences.append(
            f"Moving the cut from block 4 to block 2 (no defense) moves re-id from {_ci(a.reid(), 'reid_top1')} to "
            f"{_ci(b.reid(), 'reid_top1')}, with val acc {a.val_acc:.3f} and {b.val_acc:.3f}"
            f"{versus(b, a, 'cut 4')}."
        )
    for p in (p for p in points if p.cell.family == "control"):
        family = "dp-public" if _pretrained(p) else "dp"
        same_start = sorted(
            (d for d in points if d.cut == p.cut and d.cell.family == family and d.noise > 0), key=_by_epsilon
        )
        compared = [(d, versus(d, p, p.cell.name)) for d in same_start]
        sentences.append(
            f"Control {p.cell.name} (cut {p.cut}): re-id {_ci(p.reid(), 'reid_top1')} at val acc {p.val_acc:.3f}"
            + "".join(f"; {_eps_label(d)} from the same start{text}" for d, text in compared if text)
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
        f"At epsilon {strongest.epsilon_median:.3g} (cut {cut}) re-id is {_ci(strongest.reid(), 'reid_top1')} at "
        f"val acc {strongest.val_acc:.3f}{versus(strongest, target, _eps_label(target))}."
    ]


def _pretrained(p: Point) -> bool:
    return p.cell.settings.get("pretrain", "none") != "none"


def _compare(plain: Point, target: Point, family: list[Point], name: str) -> tuple[str, Point | None]:
    """("; <family> reaches the same re-id at an accuracy cost of d", that point): the weakest strength whose re-id
    is at or below the DP point's upper bound, or says that none does (and None)."""
    reached = sorted(
        (p for p in family if p.reid()["reid_top1"] <= target.reid()["reid_top1_hi"]), key=lambda p: _strength(p.cell)
    )
    what = FAMILIES[name].label
    if not family:
        return "", None
    if not reached:
        return f"; no {what} strength tried reaches that re-id", None
    p = reached[0]
    text = (
        f"; {what} ({p.cell.label}) reaches {_ci(p.reid(), 'reid_top1')} at an accuracy cost of "
        f"{plain.val_acc - p.val_acc:+.3f}{versus(p, plain, 'no defense')}"
    )
    return text, p


def write_csv(points: Sequence[Point], path: Path) -> None:
    """Every training run's rows (``seed`` = its training seed, ``runs`` 1), then each cell's summary across its
    runs (``seed`` "all", ``runs`` N, intervals across runs when N > 1); one row per leakage set."""
    with files.atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        rows = [(run, str(run.train_seed), 1) for p in points for run in p.runs]
        rows += [(p, "all", p.n_runs) for p in points]
        for p, seed, n in rows:
            for set_name in SETS:
                best, (ssim_attack, top), base = (p.sets[set_name][k] for k in ("best", "ssim", "baseline"))
                writer.writerow(
                    {
                        "cell": p.title,
                        "seed": seed,
                        "runs": n,
                        "family": p.cell.family,
                        "point": p.cell.label,
                        "cut": p.cut,
                        "noise": p.noise,
                        "epsilon_median": p.epsilon_median,
                        "epsilon_max": p.epsilon_max,
                        "val_acc": p.val_acc,
                        "val_acc_lo": "" if p.val_acc_lo is None else p.val_acc_lo,
                        "val_acc_hi": "" if p.val_acc_hi is None else p.val_acc_hi,
                        "set": set_name,
                        "best_attack": best["attack"],
                        **{k: best[k] for k in ("reid_top1", "reid_top1_lo", "reid_top1_hi", "reid_chance", "mse")},
                        "ssim_attack": ssim_attack,
                        **{k: top[k] for k in ("ssim", "ssim_lo", "ssim_hi")},
                        "baseline_ssim": base["ssim"],
                        "baseline_mse": base["mse"],
                        "activation_nn_reid": p.activation_nn_reid,
                        "run_dir": str(p.run_dir),
                        # a run's own bound; a cell's summary row has none (bounds are not averaged)
                        **_audit_columns(p.audit if n == 1 and seed != "all" else None),
                    }
                )


def _audit_columns(found: dict | None) -> dict:
    return {"audit_m": found["m"], "epsilon_lower": found["epsilon_lower"]} if found else {}


def _table(points: Sequence[Point]) -> tuple[list[str], list[list[str]]]:
    head = ["cell", "runs", "family", "cut", "sigma", "epsilon (median)", "val acc", "best attack",
            "re-id top-1 (unseen)", "highest SSIM (unseen)", "re-id clients, inference", "re-id clients, training",
            "activation-NN re-id"]  # fmt: skip
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
                _ci(p.reid(), "reid_top1"),
                f"{_ci(p.ssim(), 'ssim')} ({p.sets['unseen']['ssim'][0]})",
                _ci(p.reid("clients_inference"), "reid_top1"),
                _ci(p.reid("clients_train"), "reid_top1"),
                f"{p.activation_nn_reid:.3f}",
            ]  # fmt: skip
        )
    return head, rows


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
    runs: Sequence[Cell | SeedRun],
    configs: Mapping[str, RunConfig],
    markdown: bool = True,
    central: Path | None = None,
) -> Path:
    """study.csv, the figures, report.md (unless ``markdown`` is False: a sweep of ``sim.py --noise`` writes its
    own) and a self-contained report.html (every figure inline) in ``out_dir``; returns report.html's path.
    ``runs``: the study's training runs (a Cell stands for its one run); a run's directory is ``out_dir / name``,
    and a cell's runs are summarised across seeds (``summarise``). ``central``: a centralised run, drawn as the
    accuracy ceiling."""
    by_cell: dict[str, list[Point]] = {}
    for run in (r if isinstance(r, SeedRun) else SeedRun(r, 0) for r in runs):
        point = read_point(run.cell, configs[run.name], out_dir / run.name)
        by_cell.setdefault(run.cell.name, []).append(point)
    points = [summarise(series) for series in by_cell.values()]
    write_csv(points, out_dir / "study.csv")
    plot_headline(points, out_dir / FIGURES[0], central_accuracy(central))
    plot_epsilon(points, out_dir / FIGURES[1])
    plot_rounds(points, out_dir / FIGURES[2])
    if not plot_audit(points, out_dir / AUDIT_FIGURE, CUT_MARKERS):
        (out_dir / AUDIT_FIGURE).unlink(missing_ok=True)  # a figure left by an earlier report with audits
    sentence = headline(points)
    if markdown:
        files.write_text(out_dir / "report.md", _markdown(points, sentence))
    return files.write_text(out_dir / "report.html", _html(out_dir, points, sentence))


def _markdown(points: Sequence[Point], sentence: str) -> str:
    head, rows = _table(points)
    lines = ["# Leakage against accuracy: the study", "", f"**{sentence}**", "", covers(_families(points)), ""]
    lines += [f"![{name}]({name})" for name in FIGURES]
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


def _html(out_dir: Path, points: Sequence[Point], sentence: str) -> str:
    head, rows = _table(points)
    esc = html.escape
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
