"""What a run writes as it goes: the privacy ledger, per-round metrics, per-client validation, and the terminal view.

Files in the run directory (each row appended and flushed when its round completes, so a crashed run keeps its
completed rounds; ``--resume`` drops the rows after the checkpointed round and appends from there):
- ``ledger.csv``: one row per (round, client asked to train): the client's composed privacy spend after that round,
  and its ``status``: ``trained``, ``failed`` (``--fail-rate``; the steps it took are counted) or ``over-budget``
  (``--max-epsilon``; it did not train).
- ``metrics.csv``: one row per round: weighted train / validation loss and accuracy, epsilon spread, wall time.
- ``client_metrics.csv``: one row per (round, client): validation loss and accuracy of the global model.
- ``detector.csv`` (``--detect``): one row per (round, client that trained): its label probes, their mean cosine
  and whether it alarmed (``clients.detector``).
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.config import RunConfig

LEDGER_COLUMNS = (
    "round",
    "client",
    "partition_id",
    "n_train",
    "sample_rate",
    "noise_multiplier",
    "clip",
    "steps_round",
    "steps_total",
    "epsilon",
    "delta",
    "accountant",
    "status",
)
METRICS_COLUMNS = (
    "round",
    "clients_trained",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epsilon_min",
    "epsilon_median",
    "epsilon_max",
    "round_seconds",
    "elapsed_seconds",
)
CLIENT_COLUMNS = ("round", "client", "partition_id", "n_val", "val_loss", "val_acc")
DETECTOR_COLUMNS = ("round", "client", "partition_id", "probes", "score", "alarm")  # --detect only


def _weighted(rows: list[dict], key: str, weight: str = "num-examples") -> float:
    total = sum(r[weight] for r in rows)
    return sum(r[key] * r[weight] for r in rows) / total if total else math.nan


def _shown(value: float, digits: int = 3) -> str:
    """A number for the terminal: "–" where there is none (a round in which no client trained has no train acc)."""
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


class _CsvAppender:
    """A CSV file with a fixed header whose rows are flushed as they are written.

    ``keep_rounds`` (resuming): keep the existing rows of rounds <= keep_rounds, drop later ones, append after them.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], keep_rounds: int | None = None) -> None:
        kept: list[dict] = []
        if keep_rounds is not None:
            with path.open(newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["round"]) <= keep_rounds]
        self._fh = path.open("w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=columns)
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._fh.flush()
        self.kept = kept

    def write(self, rows: list[dict]) -> None:
        self._writer.writerows(rows)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class RunRecorder:
    """Collects the train and evaluate replies of each round and writes / prints them once the round is complete."""

    def __init__(
        self,
        run_dir: Path,
        cfg: RunConfig,
        console: Console | None = None,
        on_round: Callable[[dict], None] | None = None,
        resume_after: int | None = None,
        elapsed_before: float = 0.0,
    ) -> None:
        """``resume_after``: continue a run whose rounds up to this one are done (their rows are kept);
        ``elapsed_before``: that run's wall time so far (s), so ``elapsed_seconds`` counts on from it."""
        self.cfg = cfg
        self.console = console or Console()
        self.on_round = on_round
        self.ledger = _CsvAppender(run_dir / "ledger.csv", LEDGER_COLUMNS, resume_after)
        self.metrics = _CsvAppender(run_dir / "metrics.csv", METRICS_COLUMNS, resume_after)
        self.client_metrics = _CsvAppender(run_dir / "client_metrics.csv", CLIENT_COLUMNS, resume_after)
        self.appenders = [self.ledger, self.metrics, self.client_metrics]
        self.detector = None
        if cfg.detect > 0:
            self.detector = _CsvAppender(run_dir / "detector.csv", DETECTOR_COLUMNS, resume_after)
            self.appenders.append(self.detector)
        self.started = self._round_started = time.perf_counter() - elapsed_before
        self._train: list[dict] = []
        self._asked: list[dict] = []
        # the metrics.csv rows, for the caller (with a resumed run's earlier rounds)
        self.rounds: list[dict] = [{k: float(v) for k, v in row.items()} for row in self.metrics.kept]

    def start_round(self) -> None:
        self._round_started = time.perf_counter()

    def elapsed(self) -> float:
        """Wall time of the run so far (s), including the time before a resume."""
        return time.perf_counter() - self.started

    def record_train(self, server_round: int, replies: list[tuple[int, dict]]) -> None:
        """replies: (node id, train MetricRecord as dict plus ``status`` and ``message``) of each client asked to
        train. Appends their ledger rows and prints every failed or over-budget client."""
        self._asked = [dict(m, node=node) for node, m in replies]
        self._train = [m for m in self._asked if m["status"] == "trained"]
        for m in sorted(self._asked, key=lambda m: m["partition-id"]):
            if m["status"] != "trained":
                self.console.print(f"[yellow]round {server_round}: client {int(m['partition-id'])} {m['message']}")
        self.ledger.write(
            [
                {
                    "round": server_round,
                    "client": node,
                    "partition_id": int(m["partition-id"]),
                    "n_train": int(m["num-examples"]),
                    "sample_rate": m["sample-rate"],
                    "noise_multiplier": m["noise-multiplier"],
                    "clip": m["clip"],
                    "steps_round": int(m["steps-round"]),
                    "steps_total": int(m["steps-total"]),
                    "epsilon": m["epsilon"],
                    "delta": m["delta"],
                    "accountant": self.cfg.accountant if self.cfg.noise > 0 else "none",
                    "status": m["status"],
                }
                for node, m in sorted(replies, key=lambda r: r[1]["partition-id"])
            ]
        )

        if self.detector is not None:
            self.detector.write(
                [
                    {
                        "round": server_round,
                        "client": m["node"],
                        "partition_id": int(m["partition-id"]),
                        "probes": int(m["detect-probes"]),
                        "score": m["detect-score"],
                        "alarm": int(m["detect-alarm"]),
                    }
                    for m in sorted(self._train, key=lambda m: m["partition-id"])
                ]
            )

    def record_evaluate(self, server_round: int, replies: list[tuple[int, dict]]) -> dict:
        """replies: (node id, evaluate MetricRecord as dict). Completes the round: writes metrics, prints the table."""
        evals = sorted((dict(m, node=node) for node, m in replies), key=lambda m: m["partition-id"])
        self.client_metrics.write(
            [
                {
                    "round": server_round,
                    "client": m["node"],
                    "partition_id": int(m["partition-id"]),
                    "n_val": int(m["num-examples"]),
                    "val_loss": m["val-loss"],
                    "val_acc": m["val-acc"],
                }
                for m in evals
            ]
        )
        eps = sorted(m["epsilon"] for m in self._asked)  # every asked client's spend so far, trained or not
        now = time.perf_counter()
        row = {
            "round": server_round,
            "clients_trained": len(self._train),
            "train_loss": _weighted(self._train, "train-loss"),
            "train_acc": _weighted(self._train, "train-acc"),
            "val_loss": _weighted(evals, "val-loss"),
            "val_acc": _weighted(evals, "val-acc"),
            "epsilon_min": eps[0] if eps else math.nan,
            "epsilon_median": statistics.median(eps) if eps else math.nan,
            "epsilon_max": eps[-1] if eps else math.nan,
            "round_seconds": now - self._round_started,
            "elapsed_seconds": now - self.started,
        }
        self.metrics.write([row])
        self.rounds.append(row)
        self.console.print(self._title(row, len(self._asked) - len(self._train)))
        self.console.print(self._table(row, evals))
        if self.on_round:
            self.on_round(row)
        return row

    def _title(self, row: dict, not_trained: int) -> str:
        skipped = f", {not_trained} client(s) did not train" if not_trained else ""
        return (
            f"[bold]round {row['round']}/{self.cfg.rounds}[/]: val acc {_shown(row['val_acc'])}, "
            f"train acc {_shown(row['train_acc'])}{skipped}, {row['round_seconds']:.1f} s "
            f"(elapsed {row['elapsed_seconds']:.0f} s)"
        )

    def _table(self, row: dict, evals: list[dict]) -> Table:
        """Per-client rows for small federations, min / median / max for large ones."""
        acc_by_pid = {int(m["partition-id"]): m["val-acc"] for m in evals}
        table = Table()
        if len(self._asked) <= 10:
            for column in ("client", "epsilon", "steps", "val acc", "status"):
                table.add_column(column, justify="right")
            for m in sorted(self._asked, key=lambda m: m["partition-id"]):
                pid = int(m["partition-id"])
                acc = acc_by_pid.get(pid, math.nan)
                table.add_row(str(pid), f"{m['epsilon']:.3f}", str(int(m["steps-total"])), f"{acc:.3f}", m["status"])
            return table
        for column in ("", "epsilon", "val acc"):
            table.add_column(column, justify="right")
        accs = sorted(acc_by_pid.values())
        table.add_row("min", f"{row['epsilon_min']:.3f}", f"{accs[0]:.3f}")
        table.add_row("median", f"{row['epsilon_median']:.3f}", f"{statistics.median(accs):.3f}")
        table.add_row("max", f"{row['epsilon_max']:.3f}", f"{accs[-1]:.3f}")
        return table

    def close(self) -> None:
        for appender in self.appenders:
            appender.close()
