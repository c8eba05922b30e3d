"""Phenotype measures on drawn shapes: each measure moves the way its phenotype says."""

import numpy as np
import pytest

from rgops.errors import ShapeError
from rgops.evaluation import phenotype as P

S = 64
LUNG, SOLID, GGO, CORE = -850.0, 40.0, -550.0, -40.0


def _polar():
    r, c = np.mgrid[0:S, 0:S] - (S - 1) / 2
    return np.hypot(r, c), np.arctan2(r, c)


def disc(radius=16.0, hu=SOLID, ggo_rim=0.0, core_radius=0.0, core_hu=CORE, spikes=0, spike_len=0.0):
    """A lesion on lung: solid disc, optional ground-glass rim (share of the radius), dark core, spikes."""
    dist, ang = _polar()
    edge = radius * (1 + spike_len * np.clip(np.cos(spikes * ang), 0, 1) ** 8) if spikes else radius
    img = np.full((S, S), LUNG)
    img[dist <= edge] = hu
    if ggo_rim:
        img[(dist <= edge) & (dist > edge * (1 - ggo_rim))] = GGO
    if core_radius:
        img[dist <= core_radius] = core_hu
    return img


def test_disc_is_compact_and_star_is_not():
    d, star = P.measure(disc(), 1.0), P.measure(disc(radius=12, spikes=9, spike_len=0.9), 1.0)
    assert d["compactness"] > 0.85
    assert star["compactness"] < d["compactness"] - 0.3


def test_area_follows_size_and_scale():
    small, big = P.measure(disc(radius=8), 1.0), P.measure(disc(radius=16), 1.0)
    assert big["area_mm2"] == pytest.approx(4 * small["area_mm2"], rel=0.15)
    # The smoothing before the threshold widens the edge by about one pixel: within 15% at r = 16.
    assert big["area_mm2"] == pytest.approx(np.pi * 16**2, rel=0.15)
    # The same pixels at twice the mm per pixel: four times the area (the bbox crop hides size in the scale).
    assert P.measure(disc(radius=8), 2.0)["area_mm2"] == pytest.approx(4 * small["area_mm2"], rel=1e-6)


def test_ground_glass_fraction():
    solid, ggo = P.measure(disc(), 1.0), P.measure(disc(ggo_rim=0.5), 1.0)
    assert solid["ggo_fraction"] < 0.1
    assert 0.6 < ggo["ggo_fraction"] < 0.85  # a rim of half the radius is 75% of the area
    assert ggo["area_mm2"] == pytest.approx(solid["area_mm2"], rel=0.15)  # the extent includes the glass


def test_dark_core_lowers_core_attenuation():
    plain, necrotic = P.measure(disc(), 1.0), P.measure(disc(core_radius=7), 1.0)
    assert plain["core_hu"] == pytest.approx(SOLID, abs=5)
    assert necrotic["core_hu"] < SOLID - 50


def test_lesion_is_the_central_component_and_blank_scores_zero():
    img = disc(radius=10)
    img[:6, :6] = SOLID  # a vessel in the corner is not the lesion
    mask = P.lesion_mask(img)
    assert not mask[:6, :6].any() and mask[S // 2, S // 2]
    blank = P.measure(np.full((S, S), LUNG), 1.0)
    assert blank["area_mm2"] == 0 and blank["compactness"] == 0


def test_batch_and_rho_directions():
    rng = np.random.default_rng(0)
    n = 12
    program = np.linspace(-2, 2, n)
    imgs = np.stack([disc(radius=10 + 2 * k, ggo_rim=0.05 * k, spikes=7, spike_len=0.1 * (n - k)) for k in range(n)])
    meas = P.measure_batch(imgs[:, None], 1.0)
    assert meas.shape == (n, len(P.MEASURES))
    progs = np.stack([program, program, program, rng.normal(size=n)], axis=1)
    names = ["proliferation", "egfr_signalling", "emt", "immune"]
    rho = P.phenotype_rho(meas, progs, names, names[:3], ["immune"], "x")
    assert rho["x.proliferation"] > 0.9 and rho["x.egfr_signalling"] > 0.9
    assert rho["x.emt"] < -0.5  # compactness rises with k here, the wrong way for emt: signed negative
    assert rho["x.linked_min"] == min(rho["x.proliferation"], rho["x.egfr_signalling"], rho["x.emt"])
    assert 0 <= rho["x.decoy_max_abs"] <= 1
    flat = P.phenotype_rho(np.ones((n, len(P.MEASURES))), progs, names, names[:3], ["immune"], "x")
    assert flat["x.linked_min"] == 0 and flat["x.decoy_max_abs"] == 0  # a collapsed generator scores 0
    strip = P.strip_rho({"proliferation": meas[::3]}, [-2, -1, 1, 2], "s")
    assert strip["s.proliferation"] == pytest.approx(1.0)


def test_shape_errors():
    with pytest.raises(ShapeError):
        P.measure_batch(np.zeros((S, S)), 1.0)
    with pytest.raises(ShapeError):
        P.phenotype_rho(np.zeros((4, 2)), np.zeros((4, 1)), ["a"], ["a"], [], "x")
