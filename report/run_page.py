"""One run's page: ``report.html`` in a finished and attacked run directory, what ``python sim.py`` was run for.

It answers, top to bottom: which run this is (its main settings, what epsilon covers); how much privacy each client
spent per round (ledger.csv); how accurate the model got per round (metrics.csv); how much the server reconstructs,
beside the mean-image baseline (leakage.json); and every client's reconstructions, one folded section per client.

The page is self-contained: figures are drawn here (matplotlib's object API on the Agg canvas) or read from the
run's PNGs, and inlined as base64 data URIs, so the file can be mailed or opened offline. Reads the run's files
through ``RunDir`` only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from core import files
from core.config import RunConfig
from core.errors import UserError
from core.privacy import EPSILON_COVERS
from core.rundir import ATTACKED, RunDir
from report.study_audit import ideal_text, read_audit
from report.study_stats import detector_totals

NO_DP = "This run had no DP (noise multiplier 0): epsilon is infinite, so there is no privacy budget to show."
HIJACK_EPSILON = (
    "DP's guarantee does not depend on the server's honesty: each client clipped and noised whatever gradient came "
    "down the cut, so its epsilon is the one an honest server's run of the same settings records."
)
SUMMARY_SETS = ("unseen", "seen", "clients_inference", "clients_train")
NOT_ATTACKS = ("baseline", "best")  # leakage.json's methods that are not attacks
OPEN_SETS = ("unseen", "seen")  # small2's sets: their grids are shown unfolded
RUN_FIGURES = ("epsilon_per_round.png", "accuracy_per_round.png")  # what report/run_figures.py writes
CLIENT_FILE = re.compile(r"reconstructions_client_(\d+)(?:_(?:inference|train))?\.(?:png|npz)")
POINT_NAMES = {"inference": "inference", "train": "training"}
GRID_IMAGES = 10  # columns of a grid drawn here, as in attack.run's figures
GAP = 3  # grey pixels between the images of a grid drawn here
MAX_LEGEND = 10  # clients beyond this make the legend hide the lines; the table names them instead
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}"
    "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #bbb;padding:3px 6px}"
    "td{text-align:right}td.l,th.l{text-align:left}.wide{overflow-x:auto}"
    "details{margin:0.4em 0}summary{cursor:pointer}.covers{background:#f3f6fa;padding:0.6em;border-left:4px solid #2a6}"
)


def write_run_page(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (self-contained HTML, UTF-8) for an attacked run; returns its path.

    Reads config.json, ledger.csv, metrics.csv, leakage.json (through ``RunDir``) and the PNGs beside them. UserError
    (one line) when the directory is not an attacked run.
    """
    run = RunDir(Path(run_dir))
    state = run.state()
    if state != ATTACKED:
        raise UserError(f"{run.path}: no report page for a run that is {state}, not attacked (leakage.json)")
    cfg = run.read_config()
    ledger, metrics = run.read_csv("ledger.csv"), run.read_csv("metrics.csv")
    leakage = run.read_json("leakage.json")
    dp = has_dp(cfg, ledger)
    body = [
        _header(run, cfg),
        _privacy_section(ledger, dp, cfg.server),
        _audit_section(run),
        _accuracy_section(metrics),
        _leakage_section(leakage),
        _hijack_section(run, leakage, metrics),
        _detector_section(run, cfg),
        _small2_grids(run.path, leakage),
        _clients_section(run.path, ledger, leakage),
        _run_figures(run.path, dp),
    ]
    title = html.escape(f"Run {run.path.name}")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return files.write_text(run.report_html, page)


def has_dp(cfg: RunConfig, ledger: list[dict]) -> bool:
    """True when the run trained with DP-SGD: noise > 0 and some finite epsilon in the ledger."""
    return cfg.noise > 0 and any(math.isfinite(float(row["epsilon"])) for row in ledger)


# --- reading


def epsilon_by_client(ledger: list[dict]) -> dict[int, dict[int, tuple[float, str]]]:
    """``{client: {round: (epsilon, status)}}`` from ledger.csv's rows (client = partition id)."""
    spent: dict[int, dict[int, tuple[float, str]]] = defaultdict(dict)
    for row in ledger:
        spent[int(row["partition_id"])][int(row["round"])] = (float(row["epsilon"]), row["status"])
    return dict(sorted(spent.items()))


def client_ids(run_dir: Path, ledger: list[dict], leakage: dict) -> list[int]:
    """Every client the run knows of (ledger, leakage sets, reconstruction files), ascending as numbers (2 before
    10)."""
    ids = {int(row["partition_id"]) for row in ledger}
    ids |= {int(m.group(1)) for name in leakage if (m := re.fullmatch(r"client_(\d+)_\w+", name))}
    ids |= {int(m.group(1)) for p in run_dir.glob("reconstructions_client_*") if (m := CLIENT_FILE.fullmatch(p.name))}
    return sorted(ids)


def grid_pngs(run_dir: Path, set_name: str) -> list[Path]:
    """The PNG names the attack may have drawn a set's grid under, existing or not: ``reconstructions_<set>.png``;
    for a client's inference set also ``reconstructions_client_<k>.png`` (what attack.sets names it)."""
    names = [f"reconstructions_{set_name}.png"]
    if m := re.fullmatch(r"client_(\d+)_inference", set_name):
        names.insert(0, f"reconstructions_client_{m.group(1)}.png")
    return [run_dir / name for name in names]


# --- pieces of HTML


def _esc(value: object) -> str:
    return html.escape(str(value))


def _p(text: str, attrs: str = "") -> str:
    return f"<p{attrs}>{_esc(text)}</p>"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned), the others numbers."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{' class=l' if i < left else ''}>{_esc(v)}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<div class='wide'><table><tr>{cells('th', head)}</tr>{body}</table></div>"


def _img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` (the file's bytes) as a data URI."""
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _file_img(path: Path) -> str:
    return _figure(path.read_bytes(), path.name)


def _figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi); no metadata, so the page holds no address (matplotlib's own site)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _interval(m: dict, key: str) -> str:
    """``0.950 [0.900, 1.000]`` when the numbers hold ``<key>_lo`` / ``<key>_hi``, else the value alone."""
    if f"{key}_lo" in m and f"{key}_hi" in m:
        return f"{m[key]:.3f} [{m[f'{key}_lo']:.3f}, {m[f'{key}_hi']:.3f}]"
    return f"{m[key]:.3f}"


# --- sections


def _header(run: RunDir, cfg: RunConfig) -> str:
    noise = f"{cfg.noise:g}"
    if cfg.target_epsilon:
        noise += f" (chosen for target epsilon {cfg.target_epsilon:g})"
    settings = [
        ["clients", str(cfg.clients)],
        ["rounds", str(cfg.rounds)],
        ["noise multiplier sigma", noise],
        ["accountant", cfg.accountant],
        ["delta", f"{cfg.delta:g}"],
        ["cut", str(cfg.cut)],
        ["strategy", cfg.strategy],
        ["server", cfg.server],
    ]
    return (
        f"<h1>Run {_esc(run.path.name)}</h1>{_table(['setting', 'value'], settings, left=2)}"
        f"<p class='covers'>What epsilon covers: {_esc(EPSILON_COVERS)}.</p>"
    )


def _privacy_section(ledger: list[dict], dp: bool, server: str = "honest") -> str:
    head = "<h2>Privacy budget per round, per client</h2>"
    if not dp:
        return head + _p(NO_DP, " id='no-dp'")
    spent = epsilon_by_client(ledger)
    delta, accountant = ledger[0]["delta"], ledger[0]["accountant"]
    honesty = f" {HIJACK_EPSILON}" if server != "honest" else ""
    note = _p(
        f"Epsilon (delta {delta}, {accountant} accountant) each client has spent after each round, 3 significant "
        "digits; a client that did not train in a round is marked with its status, and a blank means it was not asked."
        + honesty
    )
    fig = _img(_epsilon_png(spent, accountant), "epsilon per round, one line per client")
    return head + note + _epsilon_table(spent) + fig


def _audit_section(run: RunDir) -> str:
    """``--audit``: the one-run lower bound beside the ledger's epsilon, and every guess count tried ('' without)."""
    found = read_audit(run.path)
    if found is None:
        return ""
    claimed = "infinite (no DP)" if found["epsilon"] is None else f"{found['epsilon']:.3g}"
    verdict = "VIOLATION: the bound passes the ledger's epsilon." if found["violation"] else "Below the ledger's."
    text = (
        f"{found['m']} gradient-space canaries ({found['included']} included), scored from the device weights each "
        f"client returned: {found['correct']} of {found['guesses']} membership guesses right, so epsilon is at "
        f"least {found['epsilon_lower']:.3g} at {found['confidence']:.0%} confidence (delta {found['delta']:g}); "
        f"the ledger's epsilon for these clients is {claimed}{ideal_text(found)}. {verdict}"
    )
    rows = [[str(r["guesses"]), str(r["correct"]), f"{r['epsilon_lower']:.3g}"] for r in found["table"]]
    table = _table(["guesses", "right", "epsilon lower bound"], rows)
    return f"<h2 id='audit'>Privacy audit (one run)</h2>{_p(text)}{table}"


def _epsilon_table(spent: dict[int, dict[int, tuple[float, str]]]) -> str:
    rounds = sorted({r for by_round in spent.values() for r in by_round})
    rows = [[str(r), *(_epsilon_cell(by_round.get(r)) for by_round in spent.values())] for r in rounds]
    return _table(["round", *(f"client {k}" for k in spent)], rows)


def _epsilon_cell(entry: tuple[float, str] | None) -> str:
    if entry is None:
        return ""
    epsilon, status = entry
    return f"{epsilon:.3g}" if status == "trained" else f"{epsilon:.3g} ({status})"


def _epsilon_png(spent: dict[int, dict[int, tuple[float, str]]], accountant: str) -> bytes:
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, by_round in spent.items():
        rounds = sorted(by_round)
        ax.plot(rounds, [by_round[r][0] for r in rounds], marker="o", markersize=3, linewidth=1, label=f"client {k}")
    if len(spent) <= MAX_LEGEND:
        ax.legend(fontsize=7)
    ax.set(xlabel="round", ylabel=f"epsilon ({accountant})", title="Privacy spent per client")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    return _figure_png(fig)


def _accuracy_section(metrics: list[dict]) -> str:
    shown = [c for c in ("val_acc", "train_acc", "val_loss", "clients_trained") if metrics and c in metrics[0]]
    rows = [[r["round"], *(_number(r[c], c) for c in shown)] for r in metrics]
    figure = _img(_accuracy_png(metrics), "accuracy per round") if metrics else _p("No round completed.")
    return f"<h2>Accuracy per round</h2>{_table(['round', *shown], rows)}{figure}"


def _number(text: str, column: str) -> str:
    """A metrics.csv cell for the page: a count as is, 3 decimals otherwise, "–" where a round had none (nan: no
    client trained, so no train accuracy)."""
    value = float(text)
    if math.isnan(value):
        return "–"
    return str(int(value)) if column == "clients_trained" else f"{value:.3f}"


def _accuracy_png(metrics: list[dict]) -> bytes:
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rounds = [int(r["round"]) for r in metrics]
    for column, label in (("val_acc", "validation (global model)"), ("train_acc", "training (local models)")):
        if column in metrics[0]:
            ax.plot(rounds, [float(r[column]) for r in metrics], marker="o", label=label)
    ax.legend(fontsize=8)
    ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Task accuracy per round")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    return _figure_png(fig)


def _leakage_section(leakage: dict) -> str:
    parts = [
        "<h2>Reconstruction leakage, beside the baseline</h2>",
        _p(
            "Lower MSE, higher SSIM and higher re-identification mean more leakage. re-id top-1: share of "
            "reconstructions whose nearest candidate image is their own [95 % interval]; chance: one in the "
            "candidate pool. The baseline outputs the mean image (it knows nothing); best is the attack with the "
            "most re-identification on that set (clients_*: the mean over clients, each weighted equally)."
        ),
    ]
    present = [s for s in SUMMARY_SETS if s in leakage]
    parts += [f"<p>Best attack on <b>{_esc(s)}</b>: {_esc(_best_line(leakage[s]))}.</p>" for s in present]
    rows = [row for s in present for row in _leakage_rows(s, leakage[s])]
    head = ["set", "method", "n", "MSE", "SSIM", "re-id top-1 [95 % interval]", "chance"]
    return "".join(parts) + _table(head, rows, left=2)


def _hijack_section(run: RunDir, leakage: dict, metrics: list[dict]) -> str:
    """``--server hijack``: the hijack's reconstructions against its own ceiling, and the accuracy a client saw."""
    ceiling = (
        run.read_json(run.attack.name).get("ceiling_unseen", {}).get("hijack_pilot") if run.attack.exists() else None
    )
    if ceiling is None or "hijack" not in leakage.get("unseen", {}):
        return ""
    got = leakage["unseen"]["hijack"]
    text = (
        "The server hijacked training (Feature-Space Hijacking Attack): it sent its critic's gradient down the cut "
        "instead of the task's, to pull every device into its pilot encoder's feature space. Its decoder on the "
        f"unseen images: re-id {_interval(got, 'reid_top1')}, SSIM {_interval(got, 'ssim')}; its ceiling, the same "
        f"decoder on its own pilot's activations of them (a perfect hijack): re-id {_interval(ceiling, 'reid_top1')}, "
        f"SSIM {_interval(ceiling, 'ssim')}. What a client watching its accuracy saw: val acc "
        f"{float(metrics[-1]['val_acc']):.3f} after round {metrics[-1]['round']}. {HIJACK_EPSILON}"
    )
    return f"<h2 id='hijack'>The hijacking server</h2>{_p(text)}"


def _detector_section(run: RunDir, cfg: RunConfig) -> str:
    """``--detect``: how often the clients' label probe alarmed, in all and per round ('' without a detector)."""
    if not run.detector.is_file():
        return ""
    detector = run.read_csv(run.detector.name)
    found = detector_totals(detector)
    server = "hijacking" if cfg.server == "hijack" else "honest"
    first = f", the first in round {found['first_alarm']:g} (median over them)" if found["clients_alarmed"] else ""
    text = (
        f"Each client re-sent {cfg.detect:g} of its steps with wrong labels of its own classes and compared the "
        "gradient that came back with the step's (clients/detector.py): an honest server's reads the labels, the "
        f"hijack's does not. A client round alarms when its probes' mean cosine is at least {cfg.detect_threshold:g}. "
        f"Under this run's {server} server: alarms in {found['alarms']} of {found['client_rounds']} client rounds, "
        f"from {found['clients_alarmed']} of {found['clients']} clients{first}."
    )
    by_round: dict[str, list[dict]] = defaultdict(list)
    for row in detector:
        by_round[row["round"]].append(row)
    rows = []
    for rnd, got in by_round.items():
        scores = [float(r["score"]) for r in got if not math.isnan(float(r["score"]))]
        median = f"{statistics.median(scores):.3f}" if scores else "–"
        probes = sum(int(r["probes"]) for r in got)
        rows.append([rnd, str(len(got)), str(probes), median, str(sum(int(r["alarm"]) for r in got))])
    table = _table(["round", "clients", "probes", "median score", "alarms"], rows)
    return f"<h2 id='detector'>The clients' hijack detector</h2>{_p(text)}{table}"


def _best_line(by_method: dict) -> str:
    best = by_method["best"]
    return f"{best['attack']}, re-id {_interval(best, 'reid_top1')} (chance {best['reid_chance']:.3g})"


def _leakage_rows(set_name: str, by_method: dict) -> list[list[str]]:
    """One row per attack (leakage.json's order), then the best and the baseline."""
    methods = [m for m in by_method if m not in NOT_ATTACKS] + [m for m in NOT_ATTACKS[::-1] if m in by_method]
    rows = []
    for method in methods:
        m = by_method[method]
        label = {"best": f"best: {m.get('attack', '?')}", "baseline": "baseline (mean image)"}.get(method, method)
        cells = [str(m.get("n", "")), f"{m['mse']:.4f}", _interval(m, "ssim"), _interval(m, "reid_top1")]
        rows.append([set_name, label, *cells, f"{m['reid_chance']:.3g}"])
    return rows


def _small2_grids(run_dir: Path, leakage: dict) -> str:
    grids = "".join(_set_grid(run_dir, s, leakage) for s in OPEN_SETS)
    note = _p("Originals above their reconstructions, from the server's own queries of small2 images.")
    return "<h2>Reconstructions of unseen and seen images</h2>" + note + grids if grids else ""


def _clients_section(run_dir: Path, ledger: list[dict], leakage: dict) -> str:
    sections = [_client_details(run_dir, k, leakage) for k in client_ids(run_dir, ledger, leakage)]
    note = _p("Each client's intercepted activations, reconstructed (click a client to open its figures).")
    return "<h2>Every client's reconstructions</h2>" + note + "".join(sections)


def _client_details(run_dir: Path, k: int, leakage: dict) -> str:
    """One client's ``<details>``: its best re-id at inference and training in the summary, its grids inside."""
    reid = [f"{POINT_NAMES[p]} re-id {_client_reid(leakage.get(f'client_{k}_{p}'))}" for p in POINT_NAMES]
    inside = "".join(_set_grid(run_dir, f"client_{k}_{p}", leakage) for p in POINT_NAMES)
    summary = f"<summary>client {k}: {_esc(', '.join(reid))}</summary>"
    body = inside or _p("The attack left no reconstructions of this client.")
    return f"<details class='client' id='client-{k}'>{summary}{body}</details>"


def _client_reid(by_method: dict | None) -> str:
    if not by_method or "best" not in by_method:
        return "– (no intercepted activations)"
    best = by_method["best"]
    return f"{_interval(best, 'reid_top1')} ({best['attack']}, chance {best['reid_chance']:.3g})"


def _set_grid(run_dir: Path, set_name: str, leakage: dict) -> str:
    """A set's grid as a ``<figure>``: the attack's PNG where it drew one, else drawn here from its
    ``reconstructions_<set>.npz`` with the set's best attack; "" when there is neither."""
    for png in grid_pngs(run_dir, set_name):
        if png.is_file():
            return _file_img(png)
    npz = run_dir / f"reconstructions_{set_name}.npz"
    attack = leakage.get(set_name, {}).get("best", {}).get("attack")
    drawn = _npz_grid(npz, attack) if attack and npz.is_file() else None
    if drawn is None:
        return ""
    return _figure(drawn, f"{set_name}: originals (top) above {attack}'s reconstructions (best on this set)")


def _npz_grid(npz: Path, attack: str) -> bytes | None:
    """PNG bytes of up to ``GRID_IMAGES`` originals (top row) above ``attack``'s reconstructions of the same rows,
    from a set's .npz (``rows``, ``originals``, ``rows_<attack>``, ``reconstructions_<attack>``: uint8
    [k,1,105,105], 255 = white); None when the attack reconstructed none of the kept rows."""
    with np.load(npz) as saved:
        if f"rows_{attack}" not in saved or not len(saved[f"rows_{attack}"]):
            return None
        position = {int(r): i for i, r in enumerate(saved["rows"])}
        rows = saved[f"rows_{attack}"][:GRID_IMAGES]
        originals = saved["originals"][[position[int(r)] for r in rows]]
        recon = saved[f"reconstructions_{attack}"][:GRID_IMAGES]
    return _mosaic([originals[:, 0], recon[:, 0]])


def _mosaic(rows: list[np.ndarray]) -> bytes:
    """PNG bytes (8-bit grey) of image rows (each uint8 [k,H,W]) with a grey ``GAP`` between images."""
    k, height, width = rows[0].shape
    canvas = np.full((len(rows) * (height + GAP) - GAP, k * (width + GAP) - GAP), 153, dtype=np.uint8)
    for r, images in enumerate(rows):
        top = r * (height + GAP)
        for c, image in enumerate(images):
            left = c * (width + GAP)
            canvas[top : top + height, left : left + width] = image
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")  # uint8 [H,W] reads as 8-bit grey
    return buffer.getvalue()


def _run_figures(run_dir: Path, dp: bool) -> str:
    # Without DP the run's epsilon figure holds only a "no DP" note: the line above says it already.
    names = [n for n in RUN_FIGURES if (run_dir / n).is_file() and (dp or n != "epsilon_per_round.png")]
    if not names:
        return ""
    return "<h2>Figures written during training</h2>" + "".join(_file_img(run_dir / n) for n in names)
