"""Leakage metrics: how close reconstructions are to the private originals, per image and per set.

Every function takes two aligned image sets, ``orig`` and ``rec``: float arrays [N,1,105,105] (or [N,105,105])
in [0,1] (background 1.0), where ``rec[i]`` is the attacker's reconstruction of ``orig[i]``. Re-identification may
rank each reconstruction among a larger pool of ``candidates`` (every original of the set), of which ``orig`` is a
subset given by ``own`` (the row of each original in the pool).

``per_image`` returns the per-image values (``PerImage``); ``summarize`` turns one or more of them into a set's
numbers with bootstrap 95 % intervals (``leakage.json``). Work is done in chunks, so pools as large as
images_evaluation (13,180 images, 0.6 GB as float32) never need another full-size copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

_CHUNK = 1024
# SSIM window: Gaussian sigma 1.5 truncated at 3.5 sigma (radius 5, 11 taps), as scikit-image's
# ``structural_similarity(gaussian_weights=True)``, which also drops the 5-pixel border the window overhangs.
_SSIM_SIGMA, _SSIM_RADIUS = 1.5, 5
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2  # (K1 * data range)^2, (K2 * data range)^2, data range 1
# Squared-distance margin below which two candidates of a re-identification count as tied (float32 rounding).
_TIE = 0.05
TOP_K = (1, 5)  # re-identification ranks reported
BOOTSTRAP = 1000  # resamples behind every 95 % interval
# Metrics with an interval in leakage.json (``<name>_lo`` / ``<name>_hi``); psnr's comes from mse's.
INTERVAL_KEYS = ("mse", "psnr", "ssim", *(f"reid_top{k}" for k in TOP_K))
METRIC_KEYS = ("n", "pool", "mse", "psnr", "ssim", *(f"reid_top{k}" for k in TOP_K), "reid_chance")


def _check_pair(orig: np.ndarray, rec: np.ndarray) -> int:
    """Both sets must have the same shape and at least one image; returns N."""
    if orig.shape != rec.shape:
        raise ValueError(f"originals {orig.shape} and reconstructions {rec.shape} differ in shape")
    if orig.ndim not in (3, 4) or len(orig) == 0:
        raise ValueError(f"expected a non-empty [N,1,H,W] or [N,H,W] image set, got shape {orig.shape}")
    return len(orig)


def _flat(images: np.ndarray, start: int, stop: int, dtype: type = np.float64) -> np.ndarray:
    """Images ``start:stop`` as [n, pixels] of ``dtype`` (a copy only of this chunk)."""
    return np.asarray(images[start:stop], dtype=dtype).reshape(stop - start, -1)


# --- per image ----------------------------------------------------------------------------------------------


def mse_per_image(orig: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """float64 [N]: each image's mean squared pixel error (pixel values in [0,1]); float32 arithmetic, which is
    within 1e-6 (relative) of float64 on 11,025-pixel images and a quarter of its time."""
    n = _check_pair(orig, rec)
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        # np.require(..., "W"): a read-only chunk (a broadcast baseline, a memory map) is copied for torch.
        a, b = (np.require(_flat(x, start, stop, np.float32), requirements="W") for x in (orig, rec))
        diff = torch.from_numpy(a) - torch.from_numpy(b)
        out[start:stop] = (diff * diff).mean(dim=1).double().numpy()
    return out


def _gaussian_band(side: int) -> torch.Tensor:
    """[side, side - 2r] matrix whose product with an image row is the 'valid' Gaussian filter of that row."""
    taps = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / _SSIM_SIGMA) ** 2)
    kernel = (kernel / kernel.sum()).float()
    band = torch.zeros(side, side - 2 * _SSIM_RADIUS)
    for j in range(band.shape[1]):
        band[j : j + 2 * _SSIM_RADIUS + 1, j] = kernel
    return band


def _local_stats(x: torch.Tensor, band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x shifted by the background, its local mean, its local variance): the original's half of SSIM.

    Shifted by the white background (1): the (co)variances are unchanged, and in the background, most of an
    Omniglot image, E[x^2] - E[x]^2 is then 0 - 0 rather than a float32 cancellation of 1 - 1 against C2."""
    x = x - 1.0
    ux, uxx = (band.T @ (torch.cat([x, x * x]) @ band)).split(len(x))
    return x, ux, uxx - ux * ux


def _ssim_from(x_stats: tuple[torch.Tensor, ...], y: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    x, ux, vx = x_stats
    y = y - 1.0
    uy, uyy, uxy = (band.T @ (torch.cat([y, y * y, x * y]) @ band)).split(len(y))
    vy, vxy = uyy - uy * uy, uxy - ux * uy
    ux, uy = ux + 1.0, uy + 1.0
    s = ((2 * ux * uy + _SSIM_C1) * (2 * vxy + _SSIM_C2)) / ((ux * ux + uy * uy + _SSIM_C1) * (vx + vy + _SSIM_C2))
    return s.mean(dim=(1, 2))


def ssim_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable SSIM of image pairs: x, y float32 [B,1,S,S] (or [B,S,S]) -> [B], as ``ssim_per_image``."""
    side = x.shape[-1]
    band = _gaussian_band(side).to(x.device)
    return _ssim_from(_local_stats(x.reshape(-1, side, side), band), y.reshape(-1, side, side), band)


def ssim_per_image(orig: np.ndarray, rec: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """float64 [N]: each image's structural similarity (1 = identical), averaged over its pixels.

    The formula of scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``: Gaussian window sigma 1.5 (11 taps), K1 0.01, K2 0.03, the
    5-pixel border left out. Only the interior is kept, so the filter is a 'valid' separable one, written as two
    matrix products (``_gaussian_band``): 0.5 ms an image on 2 cores, against 1.6 ms for torchmetrics' 2-D grouped
    convolution, which also averages over a border it fills by reflection. Matches scikit-image to ~1e-6 (a test).
    """
    return ssim_many(orig, [rec], batch_size)[0]


def ssim_many(orig: np.ndarray, recs: Sequence[np.ndarray], batch_size: int = 512) -> list[np.ndarray]:
    """``ssim_per_image(orig, rec)`` for each of ``recs``, the originals' local statistics computed once."""
    n = len(orig)
    for rec in recs:
        _check_pair(orig, rec)
    side = orig.shape[-1]
    band = _gaussian_band(side)
    out = [np.empty(n) for _ in recs]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            stats = _local_stats(
                torch.from_numpy(np.array(orig[start:stop], dtype=np.float32)).reshape(-1, side, side), band
            )
            for values, rec in zip(out, recs, strict=True):
                y = torch.from_numpy(np.array(rec[start:stop], dtype=np.float32)).reshape(-1, side, side)
                values[start:stop] = _ssim_from(stats, y, band).double().numpy()
    return out


def reid_ranks(
    orig: np.ndarray,
    rec: np.ndarray,
    candidates: np.ndarray | None = None,
    own: np.ndarray | None = None,
    chunk: int = _CHUNK,
) -> np.ndarray:
    """int64 [N]: for each reconstruction, how many other candidates are at least as close (pixel L2) as its own
    original; 0 means re-identified at top-1, below k at top-k.

    candidates: the pool to pick from, [M,...] (default ``orig`` itself); own: int [N], row of ``orig[i]`` in the
    pool (default ``arange(N)``). A tie is not a win: another candidate counts against ``rec[i]`` unless its own
    original is closer by more than ``_TIE`` (squared distance), so the result does not depend on the order of the
    pool, and two identical candidates make both of their reconstructions miss at top-1.
    Distances come from matrix products over [chunk, chunk] blocks, in float32 after subtracting the pool's mean
    image, which keeps the products small: their rounding (below 0.01 on Omniglot, measured against float64) stays
    under ``_TIE`` and far under the squared distance between two different binary images (at least 1, one pixel).
    """
    n = len(rec)
    if candidates is None:
        _check_pair(orig, rec)
        candidates, own = orig, np.arange(n)
    elif own is None or len(own) != n:
        raise ValueError("give own (the row of each original in candidates) with candidates")
    m = len(candidates)
    center = np.zeros(candidates[0].size, dtype=np.float64)
    for start in range(0, m, chunk):
        center += _flat(candidates, start, min(start + chunk, m)).sum(axis=0)
    center = (center / m).astype(np.float32)
    own = np.asarray(own, dtype=np.int64)
    ranks = np.zeros(n, dtype=np.int64)
    for r_start in range(0, n, chunk):
        r_stop = min(r_start + chunk, n)
        r = _flat(rec, r_start, r_stop, np.float32) - center
        mine = own[r_start:r_stop]
        # ||r - o||^2 minus the ||r||^2 that is the same for every candidate of a row.
        own_vec = np.asarray(candidates[mine], dtype=np.float32).reshape(len(mine), -1) - center
        own_score = np.einsum("ij,ij->i", own_vec, own_vec) - 2.0 * np.einsum("ij,ij->i", r, own_vec)
        for o_start in range(0, m, chunk):
            o_stop = min(o_start + chunk, m)
            o = _flat(candidates, o_start, o_stop, np.float32) - center
            score = np.einsum("ij,ij->i", o, o)[None, :] - 2.0 * (r @ o.T)
            closer = score <= (own_score + _TIE)[:, None]
            inside = (mine >= o_start) & (mine < o_stop)
            closer[np.flatnonzero(inside), mine[inside] - o_start] = False  # its own original does not count
            ranks[r_start:r_stop] += closer.sum(axis=1)
    return ranks


@dataclass(frozen=True)
class PerImage:
    """Per-image leakage of one set: mse, ssim float64 [n]; rank int64 [n] (``reid_ranks``); pool: candidates."""

    mse: np.ndarray
    ssim: np.ndarray
    rank: np.ndarray
    pool: int


def per_image(
    orig: np.ndarray, rec: np.ndarray, candidates: np.ndarray | None = None, own: np.ndarray | None = None
) -> PerImage:
    """Every per-image value for one set (see ``reid_ranks`` for ``candidates`` / ``own``)."""
    return per_image_many(orig, [rec], candidates, own)[0]


def per_image_many(
    orig: np.ndarray, recs: Sequence[np.ndarray], candidates: np.ndarray | None = None, own: np.ndarray | None = None
) -> list[PerImage]:
    """``per_image`` for several reconstructions of the same originals (SSIM's work on the originals done once)."""
    pool = len(orig) if candidates is None else len(candidates)
    ssims = ssim_many(orig, recs)
    return [
        PerImage(mse_per_image(orig, rec), s, reid_ranks(orig, rec, candidates, own), pool)
        for rec, s in zip(recs, ssims, strict=True)
    ]


# --- per set ------------------------------------------------------------------------------------------------


def _part_values(part: PerImage) -> dict[str, np.ndarray]:
    """The per-image values whose means make a set's numbers."""
    return {"mse": part.mse, "ssim": part.ssim} | {f"reid_top{k}": (part.rank < k).astype(np.float64) for k in TOP_K}


def _psnr(error: float) -> float:
    return math.inf if error == 0.0 else 10.0 * math.log10(1.0 / error)


def summarize(parts: PerImage | Sequence[PerImage], seed: int = 0, resamples: int = BOOTSTRAP) -> dict:
    """A set's leakage numbers from its per-image values, with bootstrap 95 % intervals.

    ``parts``: one set, or several (e.g. one per client) weighted equally. Keys: n (images scored), pool
    (candidates per re-identification, summed over parts), mse, psnr (dB, from the mean MSE), ssim, reid_top1,
    reid_top5, reid_chance (1 / pool, averaged over parts), and ``<key>_lo`` / ``<key>_hi`` for ``INTERVAL_KEYS``:
    the 2.5 / 97.5 percentiles over ``resamples`` resamples of the images with replacement, within each part
    (stratified), the candidate pool held fixed. Seeded: the same per-image values give the same intervals.
    """
    parts = [parts] if isinstance(parts, PerImage) else list(parts)
    if not parts or any(len(p.mse) == 0 for p in parts):
        raise ValueError("summarize needs at least one non-empty set")
    rng = np.random.default_rng(seed)
    point: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    for part in parts:  # equal weight: the mean over parts of each part's mean, for the point and every resample
        draw = rng.integers(0, len(part.mse), size=(resamples, len(part.mse)))
        for key, values in _part_values(part).items():
            point[key] = point.get(key, 0.0) + float(values.mean()) / len(parts)
            boot[key] = boot.get(key, 0.0) + values[draw].mean(axis=1) / len(parts)
    point["psnr"] = _psnr(point["mse"])
    with np.errstate(divide="ignore"):
        boot["psnr"] = 10.0 * np.log10(1.0 / boot["mse"])
    out: dict = {"n": int(sum(len(p.mse) for p in parts)), "pool": int(sum(p.pool for p in parts))}
    out |= {key: point[key] for key in METRIC_KEYS if key in point}
    out["reid_chance"] = float(np.mean([1.0 / p.pool for p in parts]))
    for key in INTERVAL_KEYS:
        lo, hi = np.percentile(boot[key], [2.5, 97.5], method="nearest")  # no interpolation: inf stays inf
        out[f"{key}_lo"], out[f"{key}_hi"] = float(lo), float(hi)
    return {key: out[key] for key in (*METRIC_KEYS, *(f"{k}_{e}" for k in INTERVAL_KEYS for e in ("lo", "hi")))}


# --- whole-set shorthands (the numbers of one set, no intervals) -------------------------------------------


def mse(orig: np.ndarray, rec: np.ndarray) -> float:
    """Mean squared pixel error over every pixel of the set (pixel values in [0,1], so squared intensity units)."""
    return float(mse_per_image(orig, rec).mean())


def psnr(orig: np.ndarray, rec: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the set: 10 log10(1 / MSE) (data range 1). Identical sets: inf."""
    return _psnr(mse(orig, rec))


def ssim(orig: np.ndarray, rec: np.ndarray, batch_size: int = 512) -> float:
    """Mean over images of ``ssim_per_image``."""
    return float(ssim_per_image(orig, rec, batch_size).mean())


def reidentification(orig: np.ndarray, rec: np.ndarray, chunk: int = _CHUNK, k: int = 1) -> float:
    """Top-k re-identification rate in [0,1]: the fraction of reconstructions whose own original is among the k
    nearest of all N originals of the set (pixel L2; ties count against it, see ``reid_ranks``). Compare with
    ``chance(N)`` (k / N for top-k)."""
    return float((reid_ranks(orig, rec, chunk=chunk) < k).mean())


def chance(n: int) -> float:
    """Re-identification rate of a random guess among ``n`` originals: 1/n."""
    if n < 1:
        raise ValueError(f"chance needs at least one original, got n={n}")
    return 1.0 / n


def leakage_metrics(orig: np.ndarray, rec: np.ndarray, seed: int = 0) -> dict[str, float | int]:
    """``summarize(per_image(orig, rec))``: every leakage number for one set, with intervals."""
    return summarize(per_image(orig, rec), seed)


def mean_image_baseline(surrogate_images: np.ndarray, n: int) -> np.ndarray:
    """The "knows nothing" reconstruction: the surrogate set's per-pixel mean image, repeated ``n`` times.

    surrogate_images: [M,1,105,105] in [0,1] (the attacker's surrogate). Returns float32 [n,1,105,105] as a
    read-only broadcast view (one image in memory, whatever ``n``).
    """
    if len(surrogate_images) == 0:
        raise ValueError("the surrogate set is empty")
    total = np.zeros(surrogate_images.shape[1:], dtype=np.float64)
    for start in range(0, len(surrogate_images), _CHUNK):
        total += np.asarray(surrogate_images[start : start + _CHUNK], dtype=np.float64).sum(axis=0)
    mean = (total / len(surrogate_images)).astype(np.float32)
    return np.broadcast_to(mean, (n, *mean.shape))
