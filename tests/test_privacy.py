"""Accounting: composition across rounds, agreement with Google's dp-accounting, the calculator CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from core.privacy import (
    CLASSIC_ORDERS,
    epsilon,
    history_from_lists,
    history_to_lists,
    noise_for_clients,
    noise_for_target,
    sample_rate,
    steps_per_epoch,
)

Q, SIGMA, DELTA = 1 / 19, 0.5, 1e-5


def _dp_accounting_rdp(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant(list(CLASSIC_ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def _dp_accounting_pld(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def test_rounds_compose_to_one_shot():
    """Ten rounds of 19 steps, restored from the serialised history each round, = one accountant over 190 steps."""
    stored: dict = history_to_lists([])
    for _ in range(10):
        accountant = RDPAccountant()
        accountant.history = history_from_lists(stored)
        for _ in range(19):
            accountant.step(noise_multiplier=SIGMA, sample_rate=Q)
        stored = history_to_lists(accountant.history)
    assert stored == {"noise": [SIGMA], "sample-rate": [Q], "steps": [190]}
    one_shot = RDPAccountant()
    one_shot.history = [(SIGMA, Q, 190)]
    composed = epsilon(history_from_lists(stored), DELTA, "rdp")
    assert composed == pytest.approx(one_shot.get_epsilon(DELTA), rel=1e-12)
    # A fresh accountant per round (the common mistake) would report a much smaller number.
    assert epsilon([(SIGMA, Q, 19)], DELTA) < 0.6 * composed


@pytest.mark.parametrize("sigma,steps", [(0.5, 190), (0.7, 380), (1.0, 95)])
def test_rdp_matches_dp_accounting(sigma, steps):
    ours = epsilon([(sigma, Q, steps)], DELTA, "rdp")
    assert ours == pytest.approx(_dp_accounting_rdp(sigma, Q, steps, DELTA), rel=0.01)


def test_prv_matches_dp_accounting_pld():
    ours = epsilon([(0.7, Q, 190)], DELTA, "prv")
    assert ours == pytest.approx(_dp_accounting_pld(0.7, Q, 190, DELTA), rel=0.01)


def test_classic_rdp_uses_the_old_conversion():
    """rdp-classic >= rdp (looser conversion); matches a hand computation of min_a rdp + log(1/delta)/(a-1)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=Q, noise_multiplier=SIGMA, steps=190, orders=list(CLASSIC_ORDERS))
    expected = min(r + math.log(1 / DELTA) / (a - 1) for r, a in zip(rdp, CLASSIC_ORDERS, strict=True))
    classic = epsilon([(SIGMA, Q, 190)], DELTA, "rdp-classic")
    assert classic == pytest.approx(expected, rel=1e-9)
    assert classic > epsilon([(SIGMA, Q, 190)], DELTA, "rdp")


def test_no_noise_is_infinite_and_no_steps_is_zero():
    assert epsilon([(0.0, Q, 10)], DELTA) == math.inf
    assert epsilon([], DELTA) == 0.0


def test_sampling_rule_matches_opacus():
    assert steps_per_epoch(594, 32) == 19
    assert sample_rate(594, 32) == pytest.approx(1 / 19)


def test_noise_for_target_matches_opacus():
    ours = noise_for_target(8.0, DELTA, Q, 190, "rdp", tol=1e-4)
    theirs = get_noise_multiplier(
        target_epsilon=8.0, target_delta=DELTA, sample_rate=Q, steps=190, epsilon_tolerance=0.001
    )
    assert ours == pytest.approx(theirs, abs=0.01)
    assert epsilon([(ours, Q, 190)], DELTA) <= 8.0


def test_noise_for_clients_covers_the_smallest_client():
    sigma = noise_for_clients(5.0, DELTA, [300, 600, 1200], 32, 10)
    for n in (300, 600, 1200):
        assert epsilon([(sigma, sample_rate(n, 32), 10 * steps_per_epoch(n, 32))], DELTA) <= 5.0 + 1e-9
    # the client with the largest q needs exactly this sigma (to the bisection tolerance)
    assert epsilon([(sigma - 0.01, sample_rate(300, 32), 10 * steps_per_epoch(300, 32))], DELTA) > 5.0


def test_calculator_cli_prints_the_ledger_epsilon():
    out = subprocess.run(
        [sys.executable, "-m", "strategy.privacy", "--n", "594", "--noise", "0.5", "--epochs", "10"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = epsilon([(0.5, 1 / 19, 190)], DELTA)
    assert f"epsilon = {expected:.3f}" in out
