"""Privacy accounting: Opacus accountants, TF Privacy's 2020 RDP accountant, and history (de)serialisation.

A client's privacy loss is the composition of every DP-SGD step it ever took, so its accountant *history*
(a list of ``(noise_multiplier, sample_rate, steps)``) is kept across rounds in the client's ``context.state`` and
restored into each round's accountant. Building a fresh accountant per round would report only that round's
steps (the mistake of the common Flower + Opacus example).

Accountants (``make_accountant``): ``rdp`` and ``prv`` are Opacus's. ``rdp-classic`` (``ClassicRDPAccountant``)
is the accountant behind TF Privacy's ``compute_dp_sgd_privacy`` from its first version (January 2019) through
every release of 2019-2020 (to v0.5.1, September 2020), until commit be8175b (2020-12-30) made the conversion tighter:

* orders ``CLASSIC_ORDERS`` = 1.25, 1.5, ..., 2.5 (step 0.25), 3, 3.5, 4, 4.5, the integers 5..63, and 128, 256,
  512 (not the finer grid 1.1, 1.2, ..., 10.9, 12..63 of the tutorials' ``compute_epsilon`` and of Opacus);
* RDP of the sampled Gaussian mechanism, summed over steps (the same formulas as Opacus's ``compute_rdp``);
* conversion ``eps = min over orders a of rdp(a) - log(delta) / (a - 1)`` (Mironov 2017, Prop. 3).

Two step rules, both for Poisson sampling of expected batch size B from n examples:

* training (Opacus, what the ledger records): q = 1 / ceil(n / B) and ceil(n / B) steps per epoch
  (``sample_rate``, ``steps_per_epoch``);
* TF Privacy's ``compute_dp_sgd_privacy``: q = B / n and ceil(epochs * n / B) steps in all
  (``classic_dp_sgd_history``, ``classic_dp_sgd_epsilon``), which reproduces that script's figures, e.g.
  n 60,000, B 256, sigma 1.1, 60 epochs, delta 1e-5 -> eps 3.01 (its tutorial README).

``rdp-classic`` applied to a training ledger uses the training rule, so it differs slightly from
``classic_dp_sgd_epsilon`` for the same (n, B, sigma, epochs) whenever n / B is not an integer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from core.registry import lookup, register

History = list[tuple[float, float, int]]

# Printed beside every epsilon the tool shows (terminal, figures, report, README): what the guarantee is about.
EPSILON_COVERS = (
    "epsilon is per client and record-level (one image), for the device weights it trained with DP-SGD; it does not "
    "cover the activations and labels that cross the cut, nor the server's head"
)

# The RDP orders of TF Privacy's compute_dp_sgd_privacy, 2019-2020 (compute_dp_sgd_privacy_lib.py at v0.5.1).
CLASSIC_ORDERS: tuple[float, ...] = tuple(
    [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + [float(a) for a in range(5, 64)] + [128.0, 256.0, 512.0]
)


class ClassicRDPAccountant(RDPAccountant):
    """TF Privacy's 2020 RDP accountant: orders ``CLASSIC_ORDERS``, ``eps = min_a rdp(a) + log(1/delta)/(a-1)``.

    Opacus's ``rdp`` uses a finer order grid and the tighter conversion of Balle et al. (2020), so it reports a
    smaller epsilon for the same mechanism; this one reproduces the numbers of TF Privacy-era papers.
    """

    def get_privacy_spent(self, *, delta: float, alphas: Sequence[float] | None = None) -> tuple[float, float]:
        orders = np.asarray(CLASSIC_ORDERS if alphas is None else alphas, dtype=float)
        if not self.history:
            return 0.0, float("nan")
        rdp = sum(compute_rdp(q=q, noise_multiplier=sigma, steps=n, orders=orders) for sigma, q, n in self.history)
        eps = np.asarray(rdp) - math.log(delta) / (orders - 1)
        best = int(np.nanargmin(eps))
        return float(eps[best]), float(orders[best])

    def mechanism(self) -> str:
        return "rdp-classic"


def classic_dp_sgd_history(n: int, batch_size: int, noise: float, epochs: float) -> History:
    """TF Privacy's step rule: ``[(noise, batch_size / n, ceil(epochs * n / batch_size))]``."""
    if batch_size > n:
        raise ValueError(f"n ({n}) must be at least the batch size ({batch_size})")
    return [(float(noise), batch_size / n, int(math.ceil(epochs * n / batch_size)))]


def classic_dp_sgd_epsilon(n: int, batch_size: int, noise: float, epochs: float, delta: float) -> float:
    """epsilon as TF Privacy's ``compute_dp_sgd_privacy`` (2019-2020) printed it: its step rule, ``rdp-classic``."""
    return epsilon(classic_dp_sgd_history(n, batch_size, noise, epochs), delta, "rdp-classic")


# The accountant registry: ``--accountant`` names one of these (a new accountant is one more entry, an IAccountant,
# or ``@register_accountant("name")`` on the class).
ACCOUNTANTS: dict[str, type[IAccountant]] = {
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
    "rdp-classic": ClassicRDPAccountant,
}


def register_accountant(name: str) -> Callable[[type[IAccountant]], type[IAccountant]]:
    """Class decorator: make an ``IAccountant`` available as ``--accountant name``. A name can be registered once."""
    return register(ACCOUNTANTS, name)


def make_accountant(name: str, history: History | None = None) -> IAccountant:
    """A new accountant of a kind in ``ACCOUNTANTS`` holding ``history``; UserError naming the choices when ``name``
    is not one."""
    accountant = lookup(ACCOUNTANTS, name, "--accountant")()
    accountant.history = [tuple(step) for step in history or []]
    return accountant


def epsilon(history: History, delta: float, accountant: str = "rdp") -> float:
    """epsilon spent after ``history`` at ``delta``: 0 with no steps, inf if any step had no noise."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


def total_steps(history: History) -> int:
    return int(sum(n for _, _, n in history))


def history_to_lists(history: History) -> dict[str, list]:
    """Serialisable form (for a Flower ConfigRecord or JSON)."""
    return {
        "noise": [float(s) for s, _, _ in history],
        "sample-rate": [float(q) for _, q, _ in history],
        "steps": [int(n) for _, _, n in history],
    }


def history_from_lists(record: dict) -> History:
    return [
        (float(s), float(q), int(n))
        for s, q, n in zip(record["noise"], record["sample-rate"], record["steps"], strict=True)
    ]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """DP-SGD steps per local epoch with Poisson sampling of expected size ``batch_size`` (Opacus's rule)."""
    return math.ceil(n_train / batch_size)


def sample_rate(n_train: int, batch_size: int) -> float:
    """Poisson sampling rate q: Opacus sets q = 1 / (steps per epoch)."""
    return 1.0 / steps_per_epoch(n_train, batch_size)


def noise_for_target(
    target_epsilon: float, delta: float, q: float, steps: int, accountant: str = "rdp", tol: float = 1e-3
) -> float:
    """Smallest noise multiplier (to ``tol``) whose epsilon after ``steps`` steps at rate ``q`` is <= target."""
    lo, hi = 0.0, 1.0
    while epsilon([(hi, q, steps)], delta, accountant) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"epsilon {target_epsilon} is unreachable with {steps} steps at q={q:.4g}")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if mid > 0 and epsilon([(mid, q, steps)], delta, accountant) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def noise_for_clients(
    target_epsilon: float, delta: float, n_trains: Sequence[int], batch_size: int, epochs: int, accountant: str = "rdp"
) -> float:
    """One noise multiplier for every client such that none exceeds ``target_epsilon`` after ``epochs`` epochs.

    Each client's q and step count follow from its own training-set size; the largest needed sigma wins.
    Assumes every client trains every round (an upper bound when --fraction-train < 1).
    """
    return max(
        noise_for_target(
            target_epsilon, delta, sample_rate(n, batch_size), epochs * steps_per_epoch(n, batch_size), accountant
        )
        for n in sorted(set(n_trains))
    )


def describe_dp_sgd(n: int, batch_size: int, noise: float, epochs: int, delta: float, accountant: str = "rdp") -> str:
    """One line: the epsilon of ``epochs`` epochs of DP-SGD over ``n`` examples, counted as training counts it
    (q = 1 / ceil(n / batch), ceil(n / batch) steps per epoch), so it equals the ledger's for a client of ``n``
    training images that trained every round."""
    q, steps = sample_rate(n, batch_size), epochs * steps_per_epoch(n, batch_size)
    eps = epsilon([(noise, q, steps)], delta, accountant)
    return (
        f"DP-SGD with sampling rate q = {q:.4g} and noise multiplier {noise:g} for {steps} steps "
        f"({epochs} epochs of {n} examples): epsilon = {eps:.3f} at delta = {delta:g} ({accountant} accountant)"
    )
