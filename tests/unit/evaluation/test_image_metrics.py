"""Image metrics on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from rgops.errors import ShapeError
from rgops.evaluation import image_metrics as M


def test_frechet_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = rng.standard_normal((4000, 3)) * 2.0 + np.array([1.0, 0.0, 0.0])
    # |mu|^2 = 1; tr(I + 4I - 2*2I) = 3
    assert M.frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_rank_deficient_stays_real_and_nonnegative():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 20))  # fewer samples than dimensions
    d = M.frechet_distance(a, a + 1e-9)
    assert np.isfinite(d) and d >= 0
    with pytest.raises(ShapeError, match="20 and 3 dimensions"):
        M.frechet_distance(a, a[:, :3])


def test_split_reference_is_smaller_than_shifted():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((200, 4))
    a, b = M.split_reference(real, seed=0)
    assert len(a) == len(b) == 100 and not set(a) & set(b)
    ref = M.frechet_distance(real[a], real[b])
    fake = real[b] + 1.0  # a generator with a biased mean
    assert M.frechet_distance(real[a], fake) > ref + 3.0


def test_ms_ssim_scales_reduced_for_small_patches():
    assert M.ms_ssim_scales(64) == 4
    assert M.ms_ssim_scales(32) == 3
    assert M.ms_ssim_scales(256) == 5


def test_ms_ssim_identity_noise_and_order():
    rng = np.random.default_rng(3)
    x = np.tanh(rng.standard_normal((3, 1, 32, 32)))
    assert M.ms_ssim(x, x) == pytest.approx(np.ones(3))
    slight = np.clip(x + 0.05 * rng.standard_normal(x.shape), -1, 1)
    heavy = np.clip(x + 0.8 * rng.standard_normal(x.shape), -1, 1)
    s1, s2 = M.ms_ssim(x, slight), M.ms_ssim(x, heavy)
    assert (s1 > s2).all() and (s1 > 0.8).all() and (s2 < 0.6).all()
    with pytest.raises(ShapeError, match="do not fit"):
        M.ms_ssim(x, x, scales=5)


def test_pairwise_ms_ssim_detects_mode_collapse():
    rng = np.random.default_rng(4)
    base = np.tanh(rng.standard_normal((1, 1, 32, 32)))
    collapsed = np.repeat(base, 6, axis=0) + 0.01 * rng.standard_normal((6, 1, 32, 32))
    diverse = np.tanh(rng.standard_normal((6, 1, 32, 32)))
    assert M.mean_pairwise_ms_ssim(collapsed) > 0.95
    assert M.mean_pairwise_ms_ssim(diverse) < 0.3


def test_conditional_consistency_linked_and_independent():
    rng = np.random.default_rng(5)
    cond = rng.standard_normal((100, 2))
    pred = np.column_stack([cond[:, 0] * 3 + 1, rng.standard_normal(100)])
    r = M.conditional_consistency(pred, cond)
    assert r[0] == pytest.approx(1.0) and abs(r[1]) < 0.3
    assert M.conditional_consistency(np.ones(5), np.arange(5.0))[0] == 0.0


def test_traversal_changes_only_the_module_and_tiles():
    base = np.zeros(5)
    direction = np.array([1, 1, 0, 0, 0.0])
    prof = M.traversal_profiles(base, direction, [-2, 0, 2])
    np.testing.assert_allclose(prof[:, :2], [[-2, -2], [0, 0], [2, 2]])
    assert (prof[:, 2:] == 0).all()
    # a "generator" whose brightness follows the first gene, noise fixed
    strip = M.traversal_strip(lambda g: np.tanh(g[:, :1, None, None] * np.ones((1, 1, 8, 8))), base, direction,
                              [-2, 0, 2])
    assert strip.shape == (3, 1, 8, 8) and strip[0].mean() < strip[2].mean()
    canvas = M.tile(strip)
    assert canvas.shape == (8, 24)
