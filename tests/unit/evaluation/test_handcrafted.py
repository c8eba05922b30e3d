"""Handcrafted shape + texture features on drawn shapes with known answers."""

import numpy as np
import pytest

from rgops.errors import ShapeError
from rgops.evaluation.handcrafted import FEATURES, handcrafted_features

S = 64
YY, XX = np.mgrid[:S, :S]
R = np.hypot(YY - 32, XX - 32)


def _one(mask, hu):
    f, names = handcrafted_features(hu[None], mask[None], np.array([0.5]))
    return dict(zip(names, f[0]))


def test_disc_area_diameter_and_compactness():
    mask = R < 12
    hu = np.where(mask, 40.0, -850.0)
    f = _one(mask, hu)
    assert f["area_mm2"] == pytest.approx(np.pi * 12**2 * 0.25, rel=0.05)  # a digitised disc
    assert f["diameter_mm"] == pytest.approx(12.0, rel=0.05)
    assert f["compactness"] == pytest.approx(1.0, abs=0.1) and f["radial_irregularity"] < 0.06
    assert f["hu_mean"] == pytest.approx(40.0) and f["ggo_fraction"] == 0.0


def test_star_is_less_compact_and_more_irregular_than_a_disc():
    ang = np.arctan2(YY - 32, XX - 32)
    star = R < 12 + 5 * np.cos(7 * ang)
    disc = R < 12
    hu = np.full((S, S), -850.0)
    fs, fd = _one(star, np.where(star, 40.0, hu)), _one(disc, np.where(disc, 40.0, hu))
    assert fs["compactness"] < 0.5 * fd["compactness"]
    assert fs["radial_irregularity"] > 4 * fd["radial_irregularity"]


def test_ground_glass_ring_and_dark_core():
    mask = R < 14
    hu = np.where(R < 9, 40.0, -500.0)  # solid centre, ground-glass outer ring
    hu = np.where(mask, hu, -850.0)
    assert _one(mask, hu)["ggo_fraction"] > 0.4
    necrotic = np.where(mask, np.where(R < 6, 10.0, 50.0), -850.0)
    solid = np.where(mask, 50.0, -850.0)
    assert _one(mask, necrotic)["core_minus_rim_hu"] < -10 < _one(mask, solid)["core_minus_rim_hu"] + 11
    assert _one(mask, necrotic)["core_low_fraction"] > _one(mask, solid)["core_low_fraction"]


def test_physical_scale_changes_size_not_shape():
    mask = R < 10
    hu = np.where(mask, 40.0, -850.0)
    f, _ = handcrafted_features(np.stack([hu, hu]), np.stack([mask, mask]), np.array([0.5, 1.0]))
    area, comp = FEATURES.index("area_mm2"), FEATURES.index("compactness")
    assert f[1, area] == pytest.approx(4 * f[0, area]) and f[1, comp] == pytest.approx(f[0, comp])


def test_empty_mask_gives_nan_and_bad_shapes_are_refused():
    f, _ = handcrafted_features(np.zeros((1, S, S)), np.zeros((1, S, S), bool), np.ones(1))
    assert np.isnan(f).all()
    with pytest.raises(ShapeError, match="mm per pixel"):
        handcrafted_features(np.zeros((2, S, S)), np.zeros((2, S, S), bool), np.ones(3))
    with pytest.raises(ShapeError, match="> 0"):
        handcrafted_features(np.zeros((1, S, S)), np.ones((1, S, S), bool), np.zeros(1))
