"""attack/metrics.py against numpy and scikit-image on real Omniglot images (and attack/figures.py's two helpers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from skimage.filters import gaussian
from skimage.metrics import structural_similarity

from attack.figures import pick, save_grid
from attack.metrics import (
    PerImage,
    chance,
    leakage_metrics,
    mean_image_baseline,
    mse,
    per_image,
    psnr,
    reid_ranks,
    reidentification,
    ssim,
    ssim_per_image,
    summarize,
)
from data.base import ImageSet


@pytest.fixture(scope="module")
def originals(small2: ImageSet) -> np.ndarray:
    """500 small2 images, float32 [500,1,105,105], spread over the whole set."""
    return small2.as_float(np.linspace(0, len(small2) - 1, 500).astype(np.int64))


@pytest.fixture(scope="module")
def noisy(originals: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(originals + rng.normal(0.0, 0.2, originals.shape), 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def blurred(originals: np.ndarray) -> np.ndarray:
    return np.stack([gaussian(image, sigma=(0, 1.5, 1.5)) for image in originals]).astype(np.float32)


def _skimage_ssim(orig: np.ndarray, rec: np.ndarray) -> float:
    return float(
        np.mean(
            [
                structural_similarity(
                    a[0], b[0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
                )
                for a, b in zip(orig, rec, strict=True)
            ]
        )
    )


def test_mse_and_psnr_by_hand() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((7, 1, 105, 105), dtype=np.float32)
    b = rng.random((7, 1, 105, 105), dtype=np.float32)
    expected = float(np.mean((a.astype(np.float64) - b) ** 2))
    assert mse(a, b) == pytest.approx(expected, rel=1e-6)  # float32 arithmetic
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / expected), rel=1e-6)
    # A constant error of 0.1 on every pixel: MSE 0.01, PSNR exactly 20 dB.
    assert psnr(np.zeros((3, 105, 105)), np.full((3, 105, 105), 0.1)) == pytest.approx(20.0, abs=1e-5)


def test_mse_is_over_all_pixels_across_chunks(originals: np.ndarray, noisy: np.ndarray) -> None:
    big_a = np.concatenate([originals] * 3)  # 1,500 images: more than one 1,024-image chunk
    big_b = np.concatenate([noisy] * 3)
    assert mse(big_a, big_b) == pytest.approx(float(np.mean((originals.astype(np.float64) - noisy) ** 2)), rel=1e-6)


def test_identical_sets(originals: np.ndarray) -> None:
    assert mse(originals, originals) == 0.0
    assert psnr(originals, originals) == math.inf
    assert ssim(originals[:50], originals[:50]) == pytest.approx(1.0, abs=1e-6)
    assert reidentification(originals, originals) == 1.0


@pytest.mark.parametrize("damage", ["noisy", "blurred", "flat"])
def test_ssim_agrees_with_scikit_image(
    originals: np.ndarray, noisy: np.ndarray, blurred: np.ndarray, damage: str
) -> None:
    orig = originals[:60]
    rec = {"noisy": noisy[:60], "blurred": blurred[:60], "flat": np.full_like(orig, 0.9)}[damage]
    reference = _skimage_ssim(orig, rec)
    assert ssim(orig, rec, batch_size=16) == pytest.approx(reference, abs=1e-5)
    # The damages are distinct enough that this test would catch a metric that ignores its input.
    assert {"noisy": 0.2 < reference < 0.45, "blurred": reference > 0.8, "flat": 0.6 < reference < 0.8}[damage]


def test_ssim_batches_do_not_change_the_mean(originals: np.ndarray, noisy: np.ndarray) -> None:
    assert ssim(originals[:40], noisy[:40], batch_size=7) == pytest.approx(ssim(originals[:40], noisy[:40]), abs=1e-9)


def test_reidentification_of_a_permutation_is_chance(originals: np.ndarray) -> None:
    perm = np.random.default_rng(2).permutation(len(originals))
    rate = reidentification(originals, originals[perm])
    # rec[i] is exactly original perm[i]: re-identified only where perm has a fixed point.
    assert rate == np.count_nonzero(perm == np.arange(len(perm))) / len(perm)
    assert rate <= 5 / 500


def test_reidentification_matches_brute_force_with_small_chunks(originals: np.ndarray) -> None:
    orig = originals[:100].astype(np.float64)
    # Faint, noisy reconstructions: 30 % of each image's difference from the mean image, plus noise.
    mean = orig.mean(axis=0)
    rec = np.clip(mean + 0.3 * (orig - mean) + np.random.default_rng(3).normal(0.0, 0.3, orig.shape), 0, 1)
    dist = np.stack([((orig - r) ** 2).sum(axis=(1, 2, 3)) for r in rec])  # [rec, orig], float64
    expected = float(np.mean(dist.argmin(axis=1) == np.arange(100)))
    assert 0.2 < expected < 0.8  # a case where both hits and misses occur
    assert reidentification(originals[:100], rec.astype(np.float32), chunk=32) == pytest.approx(expected)


def test_reidentification_counts_ties_as_misses(originals: np.ndarray) -> None:
    # Two copies of one original: its reconstruction is equally close to both, so neither copy counts.
    orig = np.concatenate([originals[:5], originals[:1]])
    assert reidentification(orig, orig) == pytest.approx(4 / 6)


def test_chance_and_leakage_keys(originals: np.ndarray, noisy: np.ndarray) -> None:
    assert chance(500) == 1 / 500
    with pytest.raises(ValueError):
        chance(0)
    metrics = leakage_metrics(originals[:100], noisy[:100])
    point = ["n", "pool", "mse", "psnr", "ssim", "reid_top1", "reid_top5", "reid_chance"]
    intervals = [f"{k}_{e}" for k in ("mse", "psnr", "ssim", "reid_top1", "reid_top5") for e in ("lo", "hi")]
    assert list(metrics) == point + intervals
    assert metrics["n"] == 100 and metrics["pool"] == 100 and metrics["reid_chance"] == 0.01
    assert metrics["mse"] == pytest.approx(mse(originals[:100], noisy[:100]))
    assert metrics["reid_top1"] == 1.0  # noise of sigma 0.2 hides no Omniglot character among 100


def test_shape_mismatch_is_an_error(originals: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        mse(originals[:3], originals[:4])


def test_mean_image_baseline(small1: ImageSet, originals: np.ndarray) -> None:
    surrogate = small1.as_float()
    baseline = mean_image_baseline(surrogate, len(originals))
    assert baseline.shape == originals.shape and baseline.dtype == np.float32
    np.testing.assert_allclose(baseline[0], surrogate.mean(axis=0, dtype=np.float64), atol=1e-6)
    assert np.array_equal(baseline[0], baseline[-1])
    # Knowing nothing: better than a flat white guess, never re-identifies more than one image.
    assert mse(originals, baseline) < mse(originals, np.ones_like(originals))
    assert reidentification(originals, baseline) <= 1 / len(originals)


def test_pick_is_sorted_seeded_and_clamped() -> None:
    chosen = pick(100, 10, seed=0)
    assert chosen.shape == (10,) and np.all(np.diff(chosen) > 0) and chosen.max() < 100
    assert np.array_equal(chosen, pick(100, 10, seed=0)) and not np.array_equal(chosen, pick(100, 10, seed=1))
    assert np.array_equal(pick(5, 10, seed=0), np.arange(5))


def test_save_grid_writes_a_png(tmp_path, originals: np.ndarray, blurred: np.ndarray) -> None:
    target = save_grid(originals[:4], blurred[:4], tmp_path / "figs" / "grid.png", "test grid", n=3)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > image.height > 100
    assert [p.name for p in target.parent.iterdir()] == ["grid.png"]  # no temporary file left behind


def test_per_image_ssim_matches_scikit_image_image_by_image(originals: np.ndarray, blurred: np.ndarray) -> None:
    values = ssim_per_image(originals[:20], blurred[:20])
    reference = [
        structural_similarity(a[0], b[0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
        for a, b in zip(originals[:20], blurred[:20], strict=True)
    ]
    np.testing.assert_allclose(values, reference, atol=1e-5)


def test_top5_and_ranks_match_brute_force(originals: np.ndarray) -> None:
    orig = originals[:120].astype(np.float64)
    mean = orig.mean(axis=0)
    rec = np.clip(mean + 0.2 * (orig - mean) + np.random.default_rng(4).normal(0.0, 0.35, orig.shape), 0, 1)
    dist = np.stack([((orig - r) ** 2).sum(axis=(1, 2, 3)) for r in rec])
    own = dist[np.arange(120), np.arange(120)]
    # Others at least as close as its own original, within the float32 tie margin of 0.05 (squared distance).
    expected_rank = (dist <= own[:, None] + 0.05).sum(axis=1) - 1
    ranks = reid_ranks(originals[:120], rec.astype(np.float32), chunk=50)
    np.testing.assert_array_equal(ranks, expected_rank)
    top1, top5 = float(np.mean(expected_rank < 1)), float(np.mean(expected_rank < 5))
    assert 0.0 < top1 < top5 < 1.0  # both hits and misses, and top-5 finds more
    assert reidentification(originals[:120], rec.astype(np.float32), k=5) == pytest.approx(top5)


def test_a_sample_is_ranked_among_the_whole_pool(originals: np.ndarray, noisy: np.ndarray) -> None:
    rows = np.array([3, 50, 51, 499])
    sample = per_image(originals[rows], noisy[rows], candidates=originals, own=rows)
    whole = per_image(originals, noisy)
    np.testing.assert_array_equal(sample.rank, whole.rank[rows])
    np.testing.assert_allclose(sample.ssim, whole.ssim[rows])
    assert sample.pool == 500 and summarize(sample)["reid_chance"] == 1 / 500


def test_bootstrap_intervals_cover_the_point_and_shrink_with_n(originals: np.ndarray, noisy: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    hits = (rng.random(400) < 0.3).astype(np.int64)
    part = PerImage(rng.random(400) * 0.1, rng.random(400), np.where(hits, 0, 7), 400)
    small = PerImage(part.mse[:40], part.ssim[:40], part.rank[:40], 400)
    big, few = summarize(part), summarize(small)
    for key in ("mse", "psnr", "ssim", "reid_top1", "reid_top5"):
        assert big[f"{key}_lo"] <= big[key] <= big[f"{key}_hi"]
        assert few[f"{key}_lo"] <= few[key] <= few[f"{key}_hi"]
        assert big[f"{key}_hi"] - big[f"{key}_lo"] < few[f"{key}_hi"] - few[f"{key}_lo"]
    # The re-id interval of 400 Bernoulli(0.3) draws: about +-1.96 sqrt(0.21 / 400) = +-0.045 around the point.
    assert big["reid_top1_hi"] - big["reid_top1_lo"] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 400), rel=0.2)
    assert summarize(part, seed=1) != big and summarize(part) == big  # seeded
    # Clients weighted equally: the mean of two parts' means, whatever their sizes.
    both = summarize([part, small])
    assert both["ssim"] == pytest.approx((part.ssim.mean() + small.ssim.mean()) / 2)
    assert both["n"] == 440 and both["pool"] == 800


def test_identical_sets_give_degenerate_intervals(originals: np.ndarray) -> None:
    metrics = leakage_metrics(originals[:30], originals[:30])
    assert metrics["psnr"] == metrics["psnr_lo"] == metrics["psnr_hi"] == math.inf
    assert metrics["reid_top1_lo"] == metrics["reid_top1_hi"] == 1.0
