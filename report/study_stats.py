"""A study's numbers, one ``Point`` per cell: read from each training run's directory, summarised across a cell's
training seeds, compared between cells paired by seed, and ordered into curves.

Reads only what each run's training and attack wrote (config.json, metrics.csv, ledger.csv, leakage.json,
attack.json, audit.json). Leakage is measured on ``unseen`` small2 images (the honest number) and on the clients' own
images; two worst cases for the client are kept per set:
- re-identification top-1 of the set's ``best`` attack (the highest lower end of the re-id interval);
- SSIM of the attack with the highest SSIM (a decoder drawing a clean background can out-score, on SSIM, an attack
  that re-identifies more: measured at cut 2, docs/results.md, "Cut depth and defenses at the cut").
Each with its bootstrap 95 % interval over images for one training run.

A cell trained N > 1 times (the study's ``--seeds``) is summarised across its runs: the mean of the per-run values
of val acc, best-attack re-id and highest SSIM, with a 95 % t-interval on those N values (Student's t, N - 1
degrees of freedom). Two cells are compared paired by training seed: the interval is on the per-seed differences.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.defenses import FAMILIES
from core.rundir import RunDir
from report.study_audit import read_audit
from report.sweep import ledger_spend, run_summary

SETS = ("unseen", "clients_inference", "clients_train")


@dataclass(frozen=True)
class StudyCell:
    """A point of the study as its report names, orders and draws it: ``name`` (the directory of its first training
    run, relative to the study's), ``family`` (a key of ``core.defenses.FAMILIES``) and the ``settings`` (RunConfig
    field names) it changes from the study's base settings. The report's own record of a cell: the study's grid
    (``study.grid.Cell``) and a sweep of ``sim.py --noise`` are converted to it before the report is written."""

    name: str
    family: str
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        """How the report names the point: "eps 8", "eps inf", "noise 0.1", "NoPeek 3", or a control's name."""
        return FAMILIES[self.family].point_label(self.name, self.settings)


@dataclass(frozen=True)
class Point:
    """One cell's numbers: its accuracy, privacy and, per set, the two worst-case leakage figures."""

    cell: StudyCell
    cut: int
    noise: float
    epsilon_median: float
    epsilon_max: float
    val_acc: float
    sets: dict[str, dict]  # set -> {"best": leakage row + "attack", "ssim": (attack, row), "baseline": row,
    #                                 "attacks": {attack: its leakage row}}
    activation_nn_reid: float
    epsilon_rounds: list[float]  # median client epsilon after each round
    run_dir: Path
    train_seed: int = 0
    runs: tuple[Point, ...] = ()  # a cell's summary: its per-seed points (one run: itself)
    val_acc_lo: float | None = None  # across runs (None for one run: no interval over one value)
    val_acc_hi: float | None = None
    audit: dict | None = None  # this run's audit.json (--audit); a summary keeps its runs' in ``runs``
    ceilings: dict[str, float] = dataclasses.field(default_factory=dict)  # attack -> its own model's re-id on unseen
    #                                                                        images (attack.json: the hijack's pilot)
    detector: dict | None = None  # --detect: ``read_detector``'s totals (a summary: over its runs)
    images_per_client: float = math.nan  # images a client trains on, median over clients (``read_images_per_client``)

    @property
    def n_runs(self) -> int:
        return max(1, len(self.runs))

    @property
    def title(self) -> str:
        return self.cell.name

    def reid(self, set_name: str = "unseen", attack: str = "") -> dict:
        """The leakage row of ``attack`` on ``set_name`` ("": the best attack's)."""
        return self.sets[set_name]["attacks"][attack] if attack else self.sets[set_name]["best"]

    def ssim(self, set_name: str = "unseen") -> dict:
        return self.sets[set_name]["ssim"][1]


def read_point(cell: StudyCell, run_dir: Path) -> Point:
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
            "attacks": attacks,
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
        ceilings={
            name.removesuffix("_pilot"): float(row["reid_top1"])
            for name, row in attack["ceiling_unseen"].items()
            if isinstance(row, dict)
        },
        detector=read_detector(run_dir),
        images_per_client=read_images_per_client(run_dir),
    )


def read_images_per_client(run_dir: Path) -> float:
    """The median over a run's clients of the images each trains on: ``n_train`` of its last row in ledger.csv (its
    shard's training images, the same every round); nan for an empty ledger."""
    last: dict[str, int] = {}
    for row in RunDir(run_dir).read_csv("ledger.csv"):  # in round order: the last row per client is its latest
        last[row["partition_id"]] = int(row["n_train"])
    return float(statistics.median(last.values())) if last else math.nan


def read_detector(run_dir: Path) -> dict | None:
    """A run's hijack detector (``--detect``, detector.csv) in totals (``detector_totals``); None without one."""
    run = RunDir(run_dir)
    return detector_totals(run.read_csv(run.detector.name)) if run.detector.is_file() else None


def detector_totals(rows: Sequence[dict]) -> dict:
    """detector.csv's rows in totals: its client rounds and those that alarmed, its clients and those that ever
    alarmed, and the median round of their first alarm (nan: none did)."""
    first: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: int(r["round"])):
        if int(row["alarm"]):
            first.setdefault(row["partition_id"], int(row["round"]))
    return {
        "client_rounds": len(rows),
        "alarms": sum(int(row["alarm"]) for row in rows),
        "clients": len({row["partition_id"] for row in rows}),
        "clients_alarmed": len(first),
        "first_alarm": statistics.median(first.values()) if first else math.nan,
    }


def _detectors(points: Sequence[Point]) -> dict | None:
    """``read_detector``'s totals over a cell's runs: counts summed, the median of the runs' first-alarm rounds."""
    found = [p.detector for p in points if p.detector is not None]
    if not found:
        return None
    firsts = [d["first_alarm"] for d in found if not math.isnan(d["first_alarm"])]
    total = {key: sum(d[key] for d in found) for key in ("client_rounds", "alarms", "clients", "clients_alarmed")}
    return {**total, "first_alarm": statistics.median(firsts) if firsts else math.nan}


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
    with t-intervals across runs (``across_runs``), the attack named that won most often. Images per client are the
    first run's: a cell's training seeds share its shards (the same data seed), so every run holds the same."""
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
            "attacks": {
                name: _mean_row([p.sets[set_name]["attacks"][name] for p in points], "reid_top1")
                for name in first.sets[set_name]["attacks"]
                if all(name in p.sets[set_name]["attacks"] for p in points)
            },
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
        ceilings={
            name: statistics.fmean(p.ceilings[name] for p in points)
            for name in first.ceilings
            if all(name in p.ceilings for p in points)
        },
        detector=_detectors(points),
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


def best_reid(p: Point) -> float:
    """The best attack's re-id top-1 on unseen images."""
    return p.reid()["reid_top1"]


def reid_by(attack: str):
    """``best_reid`` for ``attack`` "", else that attack's re-id top-1 on unseen images."""
    return lambda p: p.reid(attack=attack)["reid_top1"]


def curves(points: Sequence[Point]) -> dict[tuple[str, int], list[Point]]:
    """(family, cut) -> its points in order of strength, each non-DP curve starting from the no-defense cell at that
    cut (the DP cell without noise), DP from epsilon inf down. Controls are no curve (``plot_headline`` draws them),
    nor is a family not ``drawn``."""
    plain = {p.cut: p for p in points if p.cell.family == "dp" and p.noise == 0}
    out: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        if p.cell.family != "control" and FAMILIES[p.cell.family].drawn:
            out.setdefault((p.cell.family, p.cut), []).append(p)
    for (family, cut), series in out.items():
        if FAMILIES[family].sweeps_epsilon:
            series.sort(key=by_epsilon)
        else:
            series.sort(key=lambda p: strength(p.cell))
            if cut in plain:
                series.insert(0, plain[cut])
    return out


def by_epsilon(p: Point) -> float:
    """Sort key of a DP curve: epsilon inf first, then down."""
    return -p.epsilon_median if math.isfinite(p.epsilon_median) else -math.inf


def strength(cell: StudyCell) -> float:
    return FAMILIES[cell.family].strength_of(cell.settings)


def eps_label(p: Point) -> str:
    return "eps inf" if not math.isfinite(p.epsilon_median) else f"eps {p.epsilon_median:.3g}"
