"""Accounting: composition across rounds, agreement with Google's dp-accounting, the calculator CLI."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import dp_accounting
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.accountants.utils import get_noise_multiplier
from runs import REPO_ROOT

from core.privacy import (
    CLASSIC_ORDERS,
    classic_dp_sgd_epsilon,
    classic_dp_sgd_history,
    epsilon,
    history_from_lists,
    history_to_lists,
    make_accountant,
    noise_for_clients,
    noise_for_target,
    sample_rate,
    steps_per_epoch,
)

Q, SIGMA, DELTA = 1 / 19, 0.5, 1e-5


def _dp_accounting_rdp(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant(list(RDPAccountant.DEFAULT_ALPHAS))
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


# TF Privacy's compute_dp_sgd_privacy (compute_dp_sgd_privacy_lib.py and rdp_accountant.py, v0.2.2 to v0.5.1, before
# commit be8175b of 2020-12-30), written out here independently of core.privacy.
TFP_2020_ORDERS = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64)) + [128, 256, 512]


def _tfp_2020_epsilon(n: int, batch_size: int, sigma: float, epochs: float, delta: float) -> tuple[float, float]:
    q, steps = batch_size / n, int(math.ceil(epochs * n / batch_size))
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=TFP_2020_ORDERS)
    eps, order = min((r - math.log(delta) / (a - 1), a) for r, a in zip(rdp, TFP_2020_ORDERS, strict=True))
    return eps, order


def test_classic_orders_are_tf_privacy_2020():
    assert list(CLASSIC_ORDERS) == TFP_2020_ORDERS
    assert classic_dp_sgd_history(13180, 32, 0.5, 20) == [(0.5, 32 / 13180, 8238)]


# The expected values of TF Privacy's own compute_dp_sgd_privacy_test.py before be8175b (eps, optimal order).
@pytest.mark.parametrize(
    "n,batch_size,sigma,epochs,delta,eps,order",
    [
        (60000, 150, 1.3, 15, 1e-5, 0.941870567, 19.0),
        (100000, 100, 1.0, 30, 1e-7, 1.70928734, 13.0),
        (100000000, 1024, 0.1, 10, 1e-7, 5907984.81339406, 1.25),
    ],
)
def test_classic_reproduces_tf_privacy_2020_test_values(n, batch_size, sigma, epochs, delta, eps, order):
    assert classic_dp_sgd_epsilon(n, batch_size, sigma, epochs, delta) == pytest.approx(eps, abs=5e-8, rel=1e-12)
    history = classic_dp_sgd_history(n, batch_size, sigma, epochs)
    assert make_accountant("rdp-classic", history).get_privacy_spent(delta=delta)[1] == order


def test_classic_reproduces_tf_privacy_2020_readme():
    """tutorials/README.md (2019-2020): compute_dp_sgd_privacy.py --N=60000 --batch_size=256
    --noise_multiplier=1.1 --epochs=60 --delta=1e-5 -> "eps = 3.01" (printed with 3 significant digits)."""
    assert f"{classic_dp_sgd_epsilon(60000, 256, 1.1, 60, 1e-5):.3g}" == "3.01"


# eps from TF Privacy v0.5.1's rdp_accountant.py with compute_dp_sgd_privacy's orders and step rule, run once.
@pytest.mark.parametrize(
    "sigma,tfp_eps", [(0.5, 12.471062008993368), (0.7, 4.0194992306431265), (1.1, 1.3879149783681188)]
)
def test_classic_matches_tf_privacy_2020_at_our_scale(sigma, tfp_eps):
    expected, _ = _tfp_2020_epsilon(13180, 32, sigma, 20, 1e-5)
    assert expected == pytest.approx(tfp_eps, rel=1e-12)
    assert classic_dp_sgd_epsilon(13180, 32, sigma, 20, 1e-5) == pytest.approx(expected, rel=1e-12)
    # the accountant itself, given TF Privacy's q and step count (the finer grid gave 0.7 % less at sigma 0.5)
    assert epsilon([(sigma, 32 / 13180, 8238)], 1e-5, "rdp-classic") == pytest.approx(expected, rel=1e-12)


def test_classic_rdp_uses_the_old_conversion():
    """On a training ledger (Opacus's step rule) rdp-classic = min_a rdp + log(1/delta)/(a-1) over the 2020 orders."""
    rdp = compute_rdp(q=Q, noise_multiplier=SIGMA, steps=190, orders=TFP_2020_ORDERS)
    expected = min(r + math.log(1 / DELTA) / (a - 1) for r, a in zip(rdp, TFP_2020_ORDERS, strict=True))
    classic = epsilon([(SIGMA, Q, 190)], DELTA, "rdp-classic")
    assert classic == pytest.approx(expected, rel=1e-12)
    assert classic > epsilon([(SIGMA, Q, 190)], DELTA, "rdp")


PRV_EPS_ERROR = inspect.signature(PRVAccountant.get_epsilon).parameters["eps_error"].default


# rdp and prv as they were before rdp-classic was aligned with TF Privacy (they must not move).
@pytest.mark.parametrize(
    "history,rdp,prv",
    [
        ([(0.5, 1 / 412, 8240)], 11.219612240617135, 9.682142097032811),
        ([(0.7, 1 / 412, 8240)], 3.3886059998471914, 2.7914369961687187),
        ([(1.1, 1 / 412, 8240)], 1.0939600418409525, 0.9668232368494634),
        ([(0.5, 1 / 19, 190)], 28.524224710524567, 25.210593021093295),
        ([(0.5, 1 / 412, 4120), (0.7, 1 / 19, 190)], 14.168842955971336, 12.55702585652017),
    ],
)
def test_rdp_and_prv_unchanged(history, rdp, prv):
    assert epsilon(history, DELTA, "rdp") == pytest.approx(rdp, rel=1e-12)
    # PRV is numerical (an FFT over a discretised privacy loss, done by scipy): Opacus guarantees its epsilon to
    # within eps_error of the true value, not to the last digits, which move with the scipy release.
    assert epsilon(history, DELTA, "prv") == pytest.approx(prv, abs=PRV_EPS_ERROR)


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
        [sys.executable, "sim.py", "epsilon", "--n", "594", "--noise", "0.5", "--epochs", "10"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = epsilon([(0.5, 1 / 19, 190)], DELTA)
    assert f"epsilon = {expected:.3f}" in out
