"""The round loop and its checkpoints: train, evaluate, checkpoint, for rounds ``first..num_rounds``.

One place decides what a checkpoint holds and how a run continues from one: the global arrays, the ledger's state
(``LedgerStrategy.state_dict``) and the inner strategy's state (``StateAdapter``, strategy/registry.py), so a
server optimiser (FedAvgM's momentum, FedAdam's moments) resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from audit.auditor import Auditor
from core.protocol import TrainReply
from strategy.averaging import DeviceEMA
from strategy.checkpoint import Checkpoint, save_checkpoint, settings_digest
from strategy.ledger import LedgerStrategy, device_weights
from strategy.registry import StateAdapter


class Driver:
    """Runs a LedgerStrategy round by round on a Grid and writes ``checkpoint.pt`` into ``run_dir`` after each.

    ``state``: the adapter for the ledger's inner strategy; ``settings``: the run's settings (their digest goes in
    the checkpoint); ``elapsed()``: the run's wall time so far in seconds; ``timeout``: seconds to wait for the
    replies of one phase.
    """

    def __init__(
        self,
        ledger: LedgerStrategy,
        state: StateAdapter,
        run_dir: Path,
        settings: dict[str, Any],
        elapsed: Callable[[], float] = lambda: 0.0,
        timeout: float = 3600,
        head_fitter: Callable[[Grid, ArrayRecord, ConfigRecord, int], ArrayRecord] | None = None,
        ema: DeviceEMA | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        self.ledger = ledger
        self.state = state
        self.run_dir = run_dir
        self.digest = settings_digest(settings)
        self.elapsed = elapsed
        self.timeout = timeout
        self.head_fitter = head_fitter  # --head-mode refit: strategy.head_fit.HeadFitter
        self.ema = ema  # --ema: strategy.averaging.DeviceEMA
        self.auditor = auditor  # --audit: scores the canaries from every round's returned devices

    def deployed(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model the server evaluates, queries and saves: ``arrays`` with the averaged device under --ema."""
        return self.ema.deployed(arrays) if self.ema is not None else arrays

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> Checkpoint:
        """Write the state after ``server_round`` (global ``arrays``) to ``checkpoint.pt``; returns it."""
        ledger = self.ledger.state_dict()
        ckpt = Checkpoint(
            round=server_round,
            arrays={key: value.numpy() for key, value in arrays.items()},
            histories=ledger["histories"],
            over_budget=ledger["over_budget"],
            settings_digest=self.digest,
            elapsed_seconds=self.elapsed(),
            intercepted_training=ledger["intercepted_training"],
            strategy_state=self.state.state_dict(self.ledger.strategy),
            ema_state=self.ema.state_dict() if self.ema is not None else {},
            audit_state=self.auditor.state_dict() if self.auditor is not None else {},
        )
        save_checkpoint(self.run_dir, ckpt)
        return ckpt

    def restore(self, ckpt: Checkpoint) -> tuple[ArrayRecord, int]:
        """Load ``ckpt`` into the ledger and its inner strategy; returns (global arrays, the round to run next)."""
        self.ledger.load_state_dict(
            {
                "histories": ckpt.histories,
                "over_budget": ckpt.over_budget,
                "intercepted_training": ckpt.intercepted_training,
            }
        )
        self.state.load_state_dict(self.ledger.strategy, ckpt.strategy_state)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.ema_state)
        if self.auditor is not None:
            self.auditor.load_state_dict(ckpt.audit_state)
        return ckpt.array_record(), ckpt.round + 1

    def _observe(self, arrays: ArrayRecord, replies: list) -> None:
        """Hand the auditor the device the server sent and each trained client's returned one (error replies are
        left to the ledger, which raises on them)."""
        returned = {}
        for msg in replies:
            if not msg.has_error() and (reply := TrainReply.from_message(msg)).status == "trained":
                returned[reply.partition_id] = device_weights(reply.arrays)
        self.auditor.observe(device_weights(arrays), returned)

    def run(
        self, grid: Grid, arrays: ArrayRecord, first_round: int, num_rounds: int, config: ConfigRecord
    ) -> tuple[ArrayRecord, int]:
        """Rounds ``first_round..num_rounds`` (train the sampled clients, fold the result into the average under
        --ema, refit the head on the deployed model when there is a head fitter, then evaluate the deployed model on
        every client, then checkpoint); returns (the deployed arrays, the last round run).

        Stops early, before ``num_rounds``, once every client has answered ``over-budget``: none of them can train.
        """
        ledger = self.ledger
        for server_round in range(first_round, num_rounds + 1):
            if ledger.all_over_budget():  # a resumed run that had already stopped
                return self.deployed(arrays), server_round - 1
            sent = ledger.configure_train(server_round, arrays, config, grid)
            replies = list(grid.send_and_receive(sent, timeout=self.timeout))
            if self.auditor is not None:
                self._observe(arrays, replies)
            new_arrays, _ = ledger.aggregate_train(server_round, replies)
            if new_arrays is not None:
                # Arrays no reply carries stay as they were (the hijacking server's fixed pilot and decoder).
                kept = {k: v for k, v in arrays.items() if k not in new_arrays}
                if kept:
                    new_arrays = ArrayRecord({**new_arrays, **kept})
                if self.ema is not None:
                    self.ema.update(new_arrays)
                if self.head_fitter is not None:  # before evaluation: it uses the new head
                    fitted = self.head_fitter(grid, self.deployed(new_arrays), config, server_round)
                    new_arrays = ArrayRecord(
                        {k: fitted[k] if k.startswith("head.") else v for k, v in new_arrays.items()}
                    )
                arrays = new_arrays
            sent = ledger.configure_evaluate(server_round, self.deployed(arrays), config, grid)
            ledger.aggregate_evaluate(server_round, grid.send_and_receive(sent, timeout=self.timeout))
            self.checkpoint(server_round, arrays)
            if ledger.all_over_budget():
                return self.deployed(arrays), server_round
        return self.deployed(arrays), num_rounds
