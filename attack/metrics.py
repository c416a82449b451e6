"""Leakage metrics: how close reconstructions are to the private originals, as plain Python floats.

Every function takes two aligned image sets, ``orig`` and ``rec``: float arrays [N,1,105,105] (or [N,105,105])
in [0,1] (background 1.0), where ``rec[i]`` is the attacker's reconstruction of ``orig[i]``. Work is done in chunks,
so sets as large as images_evaluation (13,180 images, 0.6 GB as float32) never need another full-size copy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

_CHUNK = 1024
# Half-width of the 11x11 Gaussian SSIM window (sigma 1.5, truncated at 3.5 sigma): the border scikit-image drops.
_SSIM_BORDER = 5
# Squared-distance margin below which two candidates of a re-identification count as tied (float32 rounding).
_TIE = 0.05


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


def mse(orig: np.ndarray, rec: np.ndarray) -> float:
    """Mean squared pixel error over every pixel of the set (pixel values in [0,1], so squared intensity units)."""
    n = _check_pair(orig, rec)
    total, count = 0.0, 0
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        diff = _flat(orig, start, stop) - _flat(rec, start, stop)
        total += float(np.einsum("ij,ij->", diff, diff))
        count += diff.size
    return total / count


def psnr(orig: np.ndarray, rec: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the set: 10 log10(1 / MSE) (data range 1). Identical sets: inf."""
    error = mse(orig, rec)
    return math.inf if error == 0.0 else 10.0 * math.log10(1.0 / error)


def ssim(orig: np.ndarray, rec: np.ndarray, batch_size: int = 256) -> float:
    """Mean over images of the structural similarity (unitless, 1 = identical), each image's SSIM averaged over its
    pixels. Gaussian window sigma 1.5 (11x11), data range 1, K1 = 0.01, K2 = 0.03; borders within 5 pixels are left
    out, as scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` does.
    """
    n = _check_pair(orig, rec)
    total = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        side = orig.shape[-2:]
        a = torch.from_numpy(np.array(orig[start:stop], dtype=np.float32).reshape(-1, 1, *side))
        b = torch.from_numpy(np.array(rec[start:stop], dtype=np.float32).reshape(-1, 1, *side))
        # torchmetrics averages over the whole image, including a border it fills by reflection; that border alone
        # moves the mean by ~0.04 on Omniglot. Take the SSIM map and drop the border, as scikit-image does.
        _, ssim_map = structural_similarity_index_measure(
            b,
            a,
            data_range=1.0,
            gaussian_kernel=True,
            sigma=1.5,
            kernel_size=11,
            k1=0.01,
            k2=0.03,
            return_full_image=True,
        )
        inner = ssim_map[..., _SSIM_BORDER:-_SSIM_BORDER, _SSIM_BORDER:-_SSIM_BORDER]
        total += float(inner.double().mean(dim=(1, 2, 3)).sum())
    return total / n


def reidentification(orig: np.ndarray, rec: np.ndarray, chunk: int = _CHUNK) -> float:
    """Top-1 re-identification rate in [0,1]: the fraction of reconstructions whose nearest original (pixel L2
    distance, among all N originals of the set) is their own original.

    A tie is not a re-identification: ``rec[i]`` counts only when original ``i`` is closer than every other original
    by more than ``_TIE`` (squared distance), so the result does not depend on the order of the set, and two
    identical originals make both of their reconstructions misses. Compare with ``chance(N)``.
    Distances come from matrix products over [chunk, chunk] blocks (memory O(chunk^2 + chunk * pixels)), in float32
    after subtracting the originals' mean image, which keeps the products small: their rounding (below 0.01 on
    Omniglot, measured against float64) stays under ``_TIE`` and far under the squared distance between two
    different binary images (at least 1, one pixel).
    """
    n = _check_pair(orig, rec)
    center = np.zeros(orig[0].size, dtype=np.float64)
    for start in range(0, n, chunk):
        center += _flat(orig, start, min(start + chunk, n)).sum(axis=0)
    center = (center / n).astype(np.float32)

    correct = 0
    for r_start in range(0, n, chunk):
        r_stop = min(r_start + chunk, n)
        r = _flat(rec, r_start, r_stop, np.float32) - center
        rows = np.arange(r_stop - r_start)
        own = np.empty(len(rows), dtype=np.float32)
        best_other = np.full(len(rows), np.inf, dtype=np.float32)
        for o_start in range(0, n, chunk):
            o_stop = min(o_start + chunk, n)
            o = _flat(orig, o_start, o_stop, np.float32) - center
            # ||r - o||^2 minus the ||r||^2 that is the same for every candidate of a row.
            score = np.einsum("ij,ij->i", o, o)[None, :] - 2.0 * (r @ o.T)
            mine = (rows + r_start >= o_start) & (rows + r_start < o_stop)
            cols = rows[mine] + r_start - o_start
            own[mine] = score[rows[mine], cols]
            score[rows[mine], cols] = np.inf
            np.minimum(best_other, score.min(axis=1), out=best_other)
        correct += int(np.count_nonzero(own < best_other - _TIE))
    return correct / n


def chance(n: int) -> float:
    """Re-identification rate of a random guess among ``n`` originals: 1/n."""
    if n < 1:
        raise ValueError(f"chance needs at least one original, got n={n}")
    return 1.0 / n


def leakage_metrics(orig: np.ndarray, rec: np.ndarray) -> dict[str, float | int]:
    """All leakage numbers for one set: n (images), mse, psnr (dB), ssim, reid_top1, reid_chance (= 1/n)."""
    n = _check_pair(orig, rec)
    return {
        "n": n,
        "mse": mse(orig, rec),
        "psnr": psnr(orig, rec),
        "ssim": ssim(orig, rec),
        "reid_top1": reidentification(orig, rec),
        "reid_chance": chance(n),
    }


def mean_image_baseline(surrogate_images: np.ndarray, n: int) -> np.ndarray:
    """The "knows nothing" reconstruction: the surrogate set's per-pixel mean image, repeated ``n`` times.

    surrogate_images: [M,1,105,105] in [0,1] (the attacker's small1). Returns float32 [n,1,105,105] as a read-only
    broadcast view (one image in memory, whatever ``n``).
    """
    if len(surrogate_images) == 0:
        raise ValueError("the surrogate set is empty")
    total = np.zeros(surrogate_images.shape[1:], dtype=np.float64)
    for start in range(0, len(surrogate_images), _CHUNK):
        total += np.asarray(surrogate_images[start : start + _CHUNK], dtype=np.float64).sum(axis=0)
    mean = (total / len(surrogate_images)).astype(np.float32)
    return np.broadcast_to(mean, (n, *mean.shape))
