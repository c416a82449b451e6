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

from audit.bound import audit, ideal_fields
from audit.canaries import CanaryPlan
from core.privacy import History, epsilon


class AuditViolation(RuntimeError):
    """The audit's lower bound exceeds the ledger's epsilon: the DP implementation does not do what it claims."""


class Auditor:
    """Accumulates the canary scores of ``plan`` round by round (``observe``); its state goes in the checkpoint."""

    def __init__(self, plan: CanaryPlan) -> None:
        self.plan = plan
        self.own = np.zeros(plan.m)  # sum over rounds of -(w_c - w) at each canary's coordinate, its own client c
        self.others = np.zeros(plan.m)  # the same, averaged over the round's other trained clients
        self.rounds = 0

    def observe(self, start: dict[str, np.ndarray], returned: dict[int, dict[str, np.ndarray]]) -> None:
        """One round: ``start`` the device state the server sent, ``returned`` {partition: device state} of every
        client that trained."""
        if not returned:
            return
        base = self.plan.values_at(start)
        pushed = {pid: base - self.plan.values_at(state) for pid, state in returned.items()}  # -(w_c - w)
        total = sum(pushed.values())
        for pid, push in pushed.items():
            mine = self.plan.client == pid
            self.own[mine] += push[mine]
            if len(pushed) > 1:
                self.others[mine] += (total[mine] - push[mine]) / (len(pushed) - 1)
        self.rounds += 1

    @property
    def scores(self) -> np.ndarray:
        return self.own - self.others

    def state_dict(self) -> dict[str, Any]:
        return {"own": self.own.copy(), "others": self.others.copy(), "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own, self.others = np.asarray(state["own"], float), np.asarray(state["others"], float)
        self.rounds = int(state["rounds"])

    def result(self, histories: dict[int, History], delta: float, accountant: str) -> dict[str, Any]:
        """What ``audit.json`` holds: the canaries, the best guess count and its lower bound at 95 %, every count
        tried, the ledger's epsilon (the largest over the clients holding canaries, at the run's delta) and the
        ideal one-run bound at that epsilon (``audit.bound.ideal_bound``) with the fraction of it reached."""
        found = audit(self.scores, self.plan.included, delta)
        holders = sorted({int(c) for c in self.plan.client})
        per_client = {pid: epsilon(histories.get(pid, []), delta, accountant) for pid in holders}
        claimed = max(per_client.values())
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
            "delta": delta,
            "accountant": accountant,
            "epsilon_per_client": {str(pid): e if np.isfinite(e) else None for pid, e in per_client.items()},
            "violation": bool(found.epsilon_lower > claimed),
        }
