"""pyradiomics 2D baseline on a handful of constructed patches with known geometry and intensity."""

from __future__ import annotations

import numpy as np
import pytest

from rgops.errors import ShapeError
from rgops.evaluation.radiomics import RadiomicsConfig, extract_radiomics, patch_to_hu


def _disc(size: int, radius: float, hu: float, noise_hu: float, rng: np.random.Generator):
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2).astype(np.uint8)
    img = np.full((size, size), -800.0)
    img[mask > 0] = hu
    img += rng.normal(0, noise_hu, img.shape)
    patch = (np.clip(img, -1000, 500) + 1000) / 1500 * 2 - 1
    return patch.astype(np.float32), mask


@pytest.fixture(scope="module")
def extracted():
    rng = np.random.default_rng(0)
    specs = [(6, 0.0, 5.0), (10, 0.0, 5.0), (10, 40.0, 80.0), (14, 40.0, 5.0)]  # radius, HU, noise
    pairs = [_disc(32, r, hu, nz, rng) for r, hu, nz in specs]
    patches = np.stack([p for p, _ in pairs])[:, None]
    masks = np.stack([m for _, m in pairs])[:, None]
    # one patch with an empty mask: skipped, logged, counted
    patches = np.concatenate([patches, patches[:1]])
    masks = np.concatenate([masks, np.zeros_like(masks[:1])])
    spacing = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    return extract_radiomics(patches, masks, spacing), specs


def test_patch_to_hu_inverts_scaling():
    np.testing.assert_allclose(patch_to_hu(np.array([-1.0, 0.0, 1.0])), [-1000, -250, 500])


def test_about_a_hundred_features_from_all_classes(extracted):
    feats, _ = extracted
    assert 90 <= len(feats.names) <= 110
    for cls in ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        assert any(f"_{cls}_" in n for n in feats.names), cls
    assert feats.values.shape == (5, len(feats.names))


def test_known_geometry_and_intensity(extracted):
    feats, specs = extracted
    col = {n: i for i, n in enumerate(feats.names)}
    area = feats.values[:4, col["original_shape2D_PixelSurface"]]
    expected = [np.pi * r**2 for r, _, _ in specs]
    np.testing.assert_allclose(area, expected, rtol=0.12)
    mean_hu = feats.values[:4, col["original_firstorder_Mean"]]
    np.testing.assert_allclose(mean_hu, [hu for _, hu, _ in specs], atol=10)
    # the noisier tumour has the larger intensity spread
    sd = feats.values[:4, col["original_firstorder_RootMeanSquared"]]
    var = feats.values[:4, col["original_firstorder_Variance"]]
    assert var[2] > 10 * var[1]
    assert np.isfinite(sd).all()


def test_spacing_scales_shape_features():
    rng = np.random.default_rng(1)
    p, m = _disc(24, 6, 0.0, 5.0, rng)
    a = extract_radiomics(p[None, None], m[None, None], [1.0], RadiomicsConfig(feature_classes=("shape2D",)))
    b = extract_radiomics(p[None, None], m[None, None], [0.5], RadiomicsConfig(feature_classes=("shape2D",)))
    i = a.names.index("original_shape2D_PixelSurface")
    assert b.values[0, i] == pytest.approx(a.values[0, i] / 4)


def test_empty_mask_is_skipped_and_imputed(extracted):
    feats, _ = extracted
    assert feats.skipped == (4,)
    assert np.isnan(feats.values[4]).all()
    imp = feats.imputed()
    assert np.isfinite(imp).all()
    np.testing.assert_allclose(imp[4], np.median(feats.values[:4], axis=0))


def test_shape_mismatch_and_unknown_class():
    with pytest.raises(ShapeError, match=r"\(N, 1, S, S\)"):
        extract_radiomics(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9)))
    with pytest.raises(ShapeError, match="shape3D"):
        extract_radiomics(np.zeros((1, 1, 8, 8)), np.ones((1, 1, 8, 8)),
                          cfg=RadiomicsConfig(feature_classes=("shape3D",)))
