"""The auditor in the server's seat: it scores each canary from the device weights the clients return, and turns the
scores into ``audit.json`` (the one-run lower bound beside the ledger's epsilon).

Each round the server holds the weights it sent (w) and each trained client's returned device (w_c). A drawn canary
pushed its coordinate down by gradient descent, so the score of canary i of client c sums, over the rounds c
trained, -(w_c - w) at i's coordinate, less the mean of the same quantity over the other clients that trained that
round (they never hold canary i, so their mean is the data's own drift at that coordinate, which the canary's
client shares). The score was fixed on a calibration run with another training seed, before any audited number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from audit.bound import audit, ideal_fields, server_view_bound
from audit.canaries import CanaryPlan, plan_canaries
from core.privacy import History, epsilon
from core.rundir import RunDir


class AuditViolation(RuntimeError):
    """The audit's lower bound exceeds the ledger's epsilon: the DP implementation does not do what it claims."""


class Auditor:
    """Accumulates the canary pushes of ``plan`` round by round (``observe``); its state goes in the checkpoint.

    Each round keeps three arrays over the canaries: the push of the canary's own client (0 where it did not
    train), the mean push of the round's other trained clients at the same coordinate, and their spread (standard
    deviation; NaN with fewer than two others). The score sums the first less the second over the rounds; the
    per-round arrays are kept so that other scores can be computed from the same run (``benchmarks/audit_scores.py``).
    """

    def __init__(self, plan: CanaryPlan) -> None:
        self.plan = plan
        self.own: list[np.ndarray] = []
        self.others: list[np.ndarray] = []
        self.spread: list[np.ndarray] = []

    @property
    def rounds(self) -> int:
        return len(self.own)

    def observe(self, start: dict[str, np.ndarray], returned: dict[int, dict[str, np.ndarray]]) -> None:
        """One round: ``start`` the device state the server sent, ``returned`` {partition: device state} of every
        client that trained."""
        if not returned:
            return
        base = self.plan.values_at(start)
        pushed = {pid: base - self.plan.values_at(state) for pid, state in returned.items()}  # -(w_c - w)
        total = sum(pushed.values())
        own, others, spread = np.zeros(self.plan.m), np.zeros(self.plan.m), np.full(self.plan.m, np.nan)
        for pid, push in pushed.items():
            mine = self.plan.client == pid
            own[mine] = push[mine]
            if len(pushed) > 1:
                others[mine] = (total[mine] - push[mine]) / (len(pushed) - 1)
            if len(pushed) > 2:
                spread[mine] = np.stack([p[mine] for q, p in pushed.items() if q != pid]).std(axis=0, ddof=1)
        self.own.append(own)
        self.others.append(others)
        self.spread.append(spread)

    @property
    def scores(self) -> np.ndarray:
        """Canary scores: the sum over rounds of the own client's push, less the same sum of the others' mean."""
        own, others = np.zeros(self.plan.m), np.zeros(self.plan.m)
        for mine, rest in zip(self.own, self.others, strict=True):  # summed round by round, in order
            own += mine
            others += rest
        return own - others

    def state_dict(self) -> dict[str, Any]:
        return {"own": np.asarray(self.own), "others": np.asarray(self.others), "spread": np.asarray(self.spread)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own, self.others, self.spread = ([np.asarray(row, float) for row in state[key]]
                                              for key in ("own", "others", "spread"))  # fmt: skip

    def result(self, histories: dict[int, History], delta: float, accountant: str) -> dict[str, Any]:
        """What ``audit.json`` holds: the canaries, the best guess count and its lower bound at 95 %, every count
        tried, the ledger's epsilon (the largest over the clients holding canaries, at the run's delta) and the
        ideal one-run bound at that epsilon (``audit.bound.ideal_bound``) with the fraction of it reached, and the
        most a server reading one summed update per client and round could show (``audit.bound.server_view_bound``)
        with the fraction of that."""
        found = audit(self.scores, self.plan.included, delta)
        holders = sorted({int(c) for c in self.plan.client})
        per_client = {pid: epsilon(histories.get(pid, []), delta, accountant) for pid in holders}
        claimed = max(per_client.values())
        widest = max(holders, key=lambda pid: per_client[pid])  # the client whose epsilon the ledger claims
        server_view = server_view_bound(histories.get(widest, []), delta, found.m) if np.isfinite(claimed) else None
        return {
            "m": found.m,
            "included": int(self.plan.included.sum()),
            "canary": "dirac (gradient space): clip x one device weight's coordinate, one coordinate per canary",
            "score": "sum over rounds of -(returned - sent) at the canary's coordinate, less the other clients' mean",
            "rounds_observed": self.rounds,
            "guesses": found.guesses,
            "correct": found.correct,
            "confidence": found.confidence,
            "guess_counts_tried": found.tried,
            "table": [{"guesses": g, "correct": c, "epsilon_lower": e} for g, c, e in found.table],
            "epsilon_lower": found.epsilon_lower,
            "epsilon": claimed if np.isfinite(claimed) else None,  # null: no noise, epsilon infinite
            # What an ideal audit of m canaries reaches against exactly the ledger's (epsilon, delta), and the
            # fraction of it this one reached (null without DP or above EPS_MAX): the audit's power, not a verdict.
            **ideal_fields(found.epsilon_lower, claimed, delta, found.m),
            # The most any score can show from this seat: one summed SGD update per client and round, no drift
            # (audit.bound.server_view_bound, for that client's own history); null without DP.
            "server_view_epsilon_lower": server_view,
            "fraction_of_server_view": found.epsilon_lower / server_view if server_view else None,
            "delta": delta,
            "accountant": accountant,
            "epsilon_per_client": {str(pid): e if np.isfinite(e) else None for pid, e in per_client.items()},
            "violation": bool(found.epsilon_lower > claimed),
        }


def load_auditor(run: RunDir) -> Auditor:
    """The auditor of a finished run trained with ``--audit M``: its canary plan (from the run's config) and the
    pushes it had observed (its checkpoint's audit state)."""
    auditor = Auditor(plan_canaries(run.read_config()))
    auditor.load_state_dict(torch.load(run.checkpoint, weights_only=False)["audit_state"])
    return auditor
