"""report/run_page.py: the page of the shared sweep's real runs (3 clients, 2 rounds, trained and attacked by
``sim.py``), with DP and without, and the page as headless Chromium renders it."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image
from runs import IMAGES_DECODED, make_run, rendered_dom

from audit.bound import ideal_bound
from core.errors import UserError
from core.privacy import EPSILON_COVERS
from core.rundir import RunDir
from report.run_page import NO_DP, SUMMARY_SETS, _detector_section, client_ids, write_run_page
from report.study_audit import ideal_text

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 3


@pytest.fixture(scope="module")
def run(tiny_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared sweep's DP run (3 clients, 2 rounds, trained and attacked by the real command line)."""
    out = tmp_path_factory.mktemp("run_page") / "run"
    shutil.copytree(tiny_sweep / "s0.5", out)
    assert RunDir(out).state() == "attacked"
    return out


def write_page(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The page's text; asserts that writing it warned nothing (matplotlib's empty-legend note included)."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = write_run_page(run_dir)
    assert page == run_dir / "report.html"
    assert [str(w.message) for w in caught] == []
    assert "No artists" not in capsys.readouterr().err
    return page.read_text(encoding="utf-8")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def run_figures(run_dir: Path) -> list[str]:
    """The figures training drew (report/run_figures.py) that are in ``run_dir``."""
    return [name for name in ("epsilon_per_round.png", "accuracy_per_round.png") if (run_dir / name).is_file()]


def client_sections(text: str) -> dict[int, str]:
    """{client: the HTML inside its <details>}, in page order."""
    found = re.findall(r"<details class='client' id='client-(\d+)'>(.*?)</details>", text, flags=re.S)
    return {int(k): inside for k, inside in found}


@pytest.mark.slow  # the shared sweep
def test_page_shows_settings_budget_accuracy_leakage_and_every_client(run: Path, capsys) -> None:
    text = write_page(run, capsys)
    assert "http://" not in text and "https://" not in text and "<link" not in text and " src='http" not in text
    assert f"<h1>Run {run.name}</h1>" in text and html.escape(EPSILON_COVERS) in text
    assert "<td class=l>clients</td><td class=l>3</td>" in text and "<td class=l>accountant</td><td class=l>rdp" in text

    # each round's row of the budget table holds each client's epsilon after that round, 3 significant digits
    ledger = read_csv(run / "ledger.csv")
    for rnd in ("1", "2"):
        after = {int(r["partition_id"]): float(r["epsilon"]) for r in ledger if r["round"] == rnd}
        assert sorted(after) == list(range(CLIENTS)) and all(math.isfinite(e) and e > 0 for e in after.values())
        cells = "".join(f"<td>{after[k]:.3g}</td>" for k in range(CLIENTS))
        assert f"<tr><td class=l>{rnd}</td>{cells}</tr>" in text
    assert NO_DP not in text and "alt='epsilon per round, one line per client'" in text

    val_acc = float(read_csv(run / "metrics.csv")[-1]["val_acc"])
    assert f"<tr><td class=l>2</td><td>{val_acc:.3f}</td>" in text

    # the audit (--audit 30): its bound beside the ledger's epsilon, the largest client's after the last round
    audit = json.loads((run / "audit.json").read_text())
    assert audit["m"] == 30 and audit["epsilon"] == pytest.approx(max(after.values()), rel=1e-3)
    assert 0 <= audit["epsilon_lower"] < audit["epsilon"] and not audit["violation"]
    said = f"so epsilon is at least {audit['epsilon_lower']:.3g} at 95% confidence"
    assert html.escape(said) in text and html.escape("Below the ledger's.") in text
    # beside it, what an ideal audit of 30 canaries reaches at the ledger's epsilon (little: about 0 below eps 5)
    assert audit["ideal_epsilon_lower"] == pytest.approx(ideal_bound(audit["epsilon"], audit["delta"], 30))
    assert audit["ideal_epsilon_lower"] < audit["epsilon"] and html.escape(ideal_text(audit).lstrip("; ")) in text

    leakage = json.loads((run / "leakage.json").read_text())
    for set_name in SUMMARY_SETS:
        best = leakage[set_name]["best"]
        interval = f"{best['reid_top1']:.3f} [{best['reid_top1_lo']:.3f}, {best['reid_top1_hi']:.3f}]"
        assert f"Best attack on <b>{set_name}</b>: {best['attack']}, re-id {interval}" in text
        baseline = leakage[set_name]["baseline"]
        assert f"<td class=l>{set_name}</td><td class=l>baseline (mean image)</td><td>{baseline['n']}</td>" in text

    # one folded section per client, in order, each with its inference and training grids; small2's grids open
    assert text.count("<details") == CLIENTS
    sections = client_sections(text)
    assert list(sections) == list(range(CLIENTS))
    assert all(inside.count("<img ") == 2 for inside in sections.values())
    assert "<figcaption>reconstructions_client_1.png</figcaption>" in sections[1]
    assert f"<figcaption>client_1_train: originals (top) above {leakage['client_1_train']['best']['attack']}" in text
    inference = leakage["client_1_inference"]["best"]
    assert f"<summary>client 1: inference re-id {inference['reid_top1']:.3f} [" in text
    assert "<figcaption>reconstructions_unseen.png</figcaption>" in text and "<figcaption>seen: originals" in text
    for name in run_figures(run):
        assert f"<figcaption>{name}</figcaption>" in text
    assert text.count("<img ") == 2 + 2 + 2 * CLIENTS + len(run_figures(run))
    assert "base64,'" not in text  # no image without its bytes


@pytest.mark.slow  # the shared sweep
def test_a_run_without_dp_says_so_instead_of_an_epsilon_figure(tiny_sweep: Path, tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_sweep / "s0", plain)  # the sweep's sigma-0 run: epsilon inf in its ledger
    assert {r["epsilon"] for r in read_csv(plain / "ledger.csv")} == {"inf"}
    text = write_page(plain, capsys)
    assert f"<p id='no-dp'>{html.escape(NO_DP)}</p>" in text
    assert "epsilon per round" not in text and "epsilon_per_round.png" not in text
    # the accuracy figure, small2's two grids, each client's two, and training's accuracy figure only
    assert text.count("<img ") == 1 + 2 + 2 * CLIENTS + ("accuracy_per_round.png" in run_figures(plain))
    assert text.count("<details") == CLIENTS


def test_clients_come_in_numeric_order_with_both_points(tmp_path: Path) -> None:
    for name in ("reconstructions_client_10.png", "reconstructions_client_2_train.png", "reconstructions_client_2.png"):
        Image.new("L", (4, 4), 128).save(tmp_path / name)
    ledger = [{"partition_id": "10"}, {"partition_id": "2"}]
    assert client_ids(tmp_path, ledger, {"client_7_train": {}, "clients_train": {}}) == [2, 7, 10]


@pytest.mark.slow  # the shared sweep
def test_a_run_not_yet_attacked_is_refused_in_one_line(run: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    shutil.copytree(run, trained)
    (trained / "leakage.json").unlink()
    with pytest.raises(UserError, match="trained, not attacked"):
        write_run_page(trained)


@pytest.mark.slow  # the shared sweep
def test_every_image_decodes_in_chromium(run: Path, chromium: str, tmp_path: Path, capsys) -> None:
    text = write_page(run, capsys)
    n_images = text.count("<img ")
    dom = rendered_dom(chromium, text, tmp_path, IMAGES_DECODED + ");")
    assert f'data-probe="{n_images}/{n_images}"' in dom, dom[-500:]
    assert len(re.findall(r'<details class="client" id="client-\d+">', dom)) == CLIENTS


def test_the_detector_section_counts_alarms_per_round(tmp_path: Path, evaluation) -> None:
    """--detect: the page says how often the clients' label probe alarmed, in all and per round; nothing without."""
    run_dir = make_run(tmp_path / "run", evaluation, noise=0.0, server="hijack", detect=0.2)
    run = RunDir(run_dir)
    assert _detector_section(run, run.read_config()) == ""
    rows = ["round,client,partition_id,probes,score,alarm", "1,7,0,3,0.95,1", "1,8,1,0,nan,0", "2,7,0,4,0.97,1"]
    rows += ["2,8,1,2,0.91,1"]
    (run_dir / "detector.csv").write_text("\n".join(rows) + "\n")
    text = html.unescape(_detector_section(run, run.read_config()))
    assert "Under this run's hijacking server: alarms in 3 of 4 client rounds, from 2 of 2 clients, the first in " in (
        text
    )
    assert "round 1.5 (median over them)" in text and "at least 0.8" in text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", text)
    assert cells == ["1", "2", "3", "0.950", "1", "2", "2", "6", "0.940", "2"]
