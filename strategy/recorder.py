"""What a run writes as it goes: the privacy ledger, per-round metrics, per-client validation, and the terminal view.

Files in the run directory (each row appended and flushed when its round completes, so a crashed run keeps its
completed rounds):
- ``ledger.csv``: one row per (round, client that trained): the client's composed privacy spend after that round.
- ``metrics.csv``: one row per round: weighted train / validation loss and accuracy, epsilon spread, wall time.
- ``client_metrics.csv``: one row per (round, client): validation loss and accuracy of the global model.
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

from clients.config import RunConfig

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


def _weighted(rows: list[dict], key: str, weight: str = "num-examples") -> float:
    total = sum(r[weight] for r in rows)
    return sum(r[key] * r[weight] for r in rows) / total if total else math.nan


class _CsvAppender:
    """A CSV file with a fixed header whose rows are flushed as they are written."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self._fh = path.open("w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=columns)
        self._writer.writeheader()
        self._fh.flush()

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
    ) -> None:
        self.cfg = cfg
        self.console = console or Console()
        self.on_round = on_round
        self.ledger = _CsvAppender(run_dir / "ledger.csv", LEDGER_COLUMNS)
        self.metrics = _CsvAppender(run_dir / "metrics.csv", METRICS_COLUMNS)
        self.client_metrics = _CsvAppender(run_dir / "client_metrics.csv", CLIENT_COLUMNS)
        self.started = self._round_started = time.perf_counter()
        self._train: list[dict] = []
        self.rounds: list[dict] = []  # the metrics.csv rows, for the caller

    def start_round(self) -> None:
        self._round_started = time.perf_counter()

    def record_train(self, server_round: int, replies: list[tuple[int, dict]]) -> None:
        """replies: (node id, train MetricRecord as dict) of each client that trained. Appends their ledger rows."""
        self._train = [dict(m, node=node) for node, m in replies]
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
                }
                for node, m in sorted(replies, key=lambda r: r[1]["partition-id"])
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
        eps = sorted(m["epsilon"] for m in self._train)
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
        self.console.print(self._title(row))
        self.console.print(self._table(row, evals))
        if self.on_round:
            self.on_round(row)
        return row

    def _title(self, row: dict) -> str:
        return (
            f"[bold]round {row['round']}/{self.cfg.rounds}[/]: val acc {row['val_acc']:.3f}, "
            f"train acc {row['train_acc']:.3f}, {row['round_seconds']:.1f} s (elapsed {row['elapsed_seconds']:.0f} s)"
        )

    def _table(self, row: dict, evals: list[dict]) -> Table:
        """Per-client rows for small federations, min / median / max for large ones."""
        acc_by_pid = {int(m["partition-id"]): m["val-acc"] for m in evals}
        table = Table()
        if len(self._train) <= 10:
            for column in ("client", "epsilon", "steps", "val acc"):
                table.add_column(column, justify="right")
            for m in sorted(self._train, key=lambda m: m["partition-id"]):
                pid = int(m["partition-id"])
                acc = acc_by_pid.get(pid, math.nan)
                table.add_row(str(pid), f"{m['epsilon']:.3f}", str(int(m["steps-total"])), f"{acc:.3f}")
            return table
        for column in ("", "epsilon", "val acc"):
            table.add_column(column, justify="right")
        accs = sorted(acc_by_pid.values())
        table.add_row("min", f"{row['epsilon_min']:.3f}", f"{accs[0]:.3f}")
        table.add_row("median", f"{row['epsilon_median']:.3f}", f"{statistics.median(accs):.3f}")
        table.add_row("max", f"{row['epsilon_max']:.3f}", f"{accs[-1]:.3f}")
        return table

    def close(self) -> None:
        for appender in (self.ledger, self.metrics, self.client_metrics):
            appender.close()
