"""The one-run lower bound on epsilon (Steinke, Nasr & Jagielski, NeurIPS 2023, "Privacy auditing with one (1)
training run"), from canary scores.

The game: m canaries, each included independently with probability 1/2. The auditor ranks them by a score, guesses
"in" for the k highest and "out" for the k lowest, and abstains on the rest. If the mechanism is (eps, delta)-DP in
each canary, the number W of correct guesses out of r = 2k satisfies (the paper's Corollary 5.4)

    P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v].

So a count v whose bound is below 1 - confidence rejects (eps, delta)-DP, and eps_lower is the largest eps rejected.
Several k are tried, and the best one reported; the confidence is split over them (Bonferroni), so the reported
bound holds at the stated confidence for the maximum too (the paper reports the best k; the split makes that choice
part of the test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

# Guesses per side, as fractions of m: the paper sweeps the number of guesses; these span a strong-and-few to a
# weak-and-many score.
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
EPS_MAX = 50.0  # the search's ceiling: at m canaries the bound cannot exceed about log(m) anyway


def p_value(m: int, guesses: int, correct: int, eps: float, delta: float) -> float:
    """The probability, under (eps, delta)-DP, of at least ``correct`` right guesses out of ``guesses`` with m
    canaries (Corollary 5.4 above)."""
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m, got {correct}, {guesses}, {m}")
    q = special.expit(eps)
    tail = stats.binom.sf(correct - 1, guesses, q)  # f(v)
    if delta == 0 or correct == 0:
        return float(min(tail, 1.0))
    i = np.arange(1, correct + 1)
    between = stats.binom.sf(correct - i - 1, guesses, q) - tail  # f(v - i) - f(v) = P[v - i <= W' < v]
    return float(min(tail + 2 * m * delta * np.max(between / i), 1.0))


def epsilon_lower(m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest eps that ``correct`` of ``guesses`` rejects at ``confidence`` (0 when none is rejected)."""
    alpha = 1 - confidence
    if p_value(m, guesses, correct, 0.0, delta) > alpha:
        return 0.0
    if p_value(m, guesses, correct, EPS_MAX, delta) <= alpha:
        return EPS_MAX
    return float(optimize.brentq(lambda e: p_value(m, guesses, correct, e, delta) - alpha, 0.0, EPS_MAX, xtol=1e-6))


@dataclass(frozen=True)
class Audit:
    """The best guess count of one audit: ``guesses`` (2k: k "in", k "out"), ``correct`` of them, ``epsilon_lower``
    at ``confidence`` (after the split over ``tried`` guess counts), and the table of every count tried:
    ``table`` [(guesses, correct, epsilon_lower)]."""

    m: int
    guesses: int
    correct: int
    epsilon_lower: float
    confidence: float
    tried: int
    table: tuple[tuple[int, int, float], ...]


def audit(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95) -> Audit:
    """The one-run audit of canary ``scores`` float [m] (higher: more likely included) against the truth
    ``included`` bool [m]. Ties in the ranking are broken by canary index (a fixed order, not the truth)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    if m < 2 or included.shape != (m,) or not np.all(np.isfinite(scores)):
        raise ValueError(f"need >= 2 finite scores and a truth of the same length, got {m} and {included.shape}")
    order = np.argsort(-scores, kind="stable")  # highest first
    counts = sorted({max(1, int(round(f * m))) for f in GUESS_FRACTIONS} & set(range(1, m // 2 + 1)))
    split = 1 - (1 - confidence) / len(counts)
    table = []
    for k in counts:
        right = int(included[order[:k]].sum() + (~included[order[m - k :]]).sum())
        table.append((2 * k, right, epsilon_lower(m, 2 * k, right, delta, split)))
    guesses, correct, best = max(table, key=lambda row: row[2])
    return Audit(m, guesses, correct, best, confidence, len(counts), tuple(table))


def bound_ceiling(m: int, delta: float, confidence: float = 0.95) -> float:
    """The most ``audit`` can show with ``m`` canaries: every canary guessed right (k = m / 2 a side), at the
    confidence split over the guess counts it tries."""
    return epsilon_lower(m, m, m, delta, 1 - (1 - confidence) / len(GUESS_FRACTIONS))


IDEAL_DRAWS = 20  # seeded draws of the ideal mechanism's scores: the ceiling is their median bound


def gaussian_mu(eps: float, delta: float) -> float:
    """The mu of the Gaussian mechanism (mu-GDP) whose privacy curve has delta(eps) = ``delta``."""

    def curve(mu: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return float(optimize.brentq(curve, 1e-3, 100.0))


def ideal_bounds(eps: float, delta: float, m: int, draws: int = IDEAL_DRAWS) -> list[float]:
    """What this audit can reach with ``m`` canaries against a mechanism that is exactly (eps, delta)-DP and no more:
    each canary's score drawn from the Gaussian mechanism of that curve (N(mu, 1) included, N(0, 1) not, scored by
    its own likelihood ratio), the bound (``audit``) on each of ``draws`` seeded draws."""
    mu = gaussian_mu(eps, delta)
    found = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        found.append(audit(rng.normal(size=m) + mu * included, included, delta).epsilon_lower)
    return found


def ideal_bound(eps: float, delta: float, m: int) -> float:
    """The ideal audit's median bound (``ideal_bounds``): an audit's epsilon_lower over it is how close it comes to
    what one run of this size can show."""
    return float(np.median(ideal_bounds(eps, delta, m)))


def ideal_fields(epsilon_lower: float, claimed: float, delta: float, m: int) -> dict[str, float | None]:
    """What audit.json says beside a bound: ``ideal_epsilon_lower``, the ideal bound at the ledger's epsilon
    (``ideal_bound``; None when that epsilon is infinite or above EPS_MAX, where no bound is searched), and
    ``fraction_of_ideal``, the audit's epsilon_lower over it (None when the ideal is None or 0)."""
    ideal = ideal_bound(claimed, delta, m) if claimed <= EPS_MAX else None
    return {"ideal_epsilon_lower": ideal, "fraction_of_ideal": epsilon_lower / ideal if ideal else None}


def server_view_bounds(
    history: list[tuple[float, float, int]], delta: float, m: int, draws: int = IDEAL_DRAWS
) -> list[float]:
    """What this audit can reach with ``m`` canaries from the server's seat, at best: the sum of a client's
    returned SGD updates at a canary's coordinate, with no data drift and nothing else moving it. Per DP-SGD step
    (``history``: the client's (sigma, q, steps)) a canary is drawn with probability q and adds C, and the noise
    adds N(0, (sigma C)^2); in units of C an included canary scores Binomial(steps, q) + N(0, steps sigma^2) summed
    over the history, an excluded one the noise alone. That sum is what plain SGD hands the server, round by round;
    the bound (``audit``) on each of ``draws`` seeded draws. Empty when a step had no noise (nothing to bound)."""
    if not history or any(sigma <= 0 for sigma, _, _ in history):
        return []
    noise_sd = float(np.sqrt(sum(steps * sigma**2 for sigma, _, steps in history)))
    steps_at: dict[float, int] = {}  # steps by sample rate: the draws do not depend on how the history is split
    for _, q, steps in history:
        steps_at[q] = steps_at.get(q, 0) + steps
    found = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        drawn = sum(rng.binomial(steps, q, size=m) for q, steps in sorted(steps_at.items())) * included
        found.append(audit(drawn + noise_sd * rng.normal(size=m), included, delta).epsilon_lower)
    return found


def server_view_bound(history: list[tuple[float, float, int]], delta: float, m: int) -> float | None:
    """The median of ``server_view_bounds`` (None without noise): the most a server reading one summed update per
    client and round can show of this history's DP-SGD, however good its score."""
    found = server_view_bounds(history, delta, m)
    return float(np.median(found)) if found else None
