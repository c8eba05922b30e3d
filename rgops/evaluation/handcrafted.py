"""The handcrafted shape + texture baseline, in physical units, one row per slice patch.

A second baseline beside pyradiomics: a few dozen features a radiologist would name, each computed
on the tumour mask of a patch with the patch's physical scale (``mm_per_px``, patch contract v2),
so size survives the bounding-box crop. Vectorised numpy/scipy over all patches at once (about
10,000 64 x 64 patches a minute on one core).

Features (``FEATURES``):

* size: area (mm^2), equivalent diameter (mm), perimeter (mm);
* margin: compactness ``4 pi A / P^2`` (1 for a disc, lower for spiculated margins), radial
  irregularity (relative spread of the boundary's distance from the centroid), convexity proxy
  (area over bounding-box area);
* density: mean, standard deviation, 10th/50th/90th percentile of HU inside the tumour;
* ground glass: fraction of tumour pixels in [-750, -300] HU, and of the ring just outside;
* core: mean HU of the inner half (eroded) minus the rim, and the fraction of core pixels
  below 25 HU (a low-attenuation necrotic core);
* texture at tumour scale: HU standard deviation inside the tumour after Gaussian smoothing at
  sigma 1 and 2 px, and of the residual (fine texture), and a neighbour-difference contrast.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rgops.errors import ShapeError

FEATURES: tuple[str, ...] = (
    "area_mm2", "diameter_mm", "perimeter_mm", "compactness", "radial_irregularity", "extent",
    "hu_mean", "hu_std", "hu_p10", "hu_p50", "hu_p90", "ggo_fraction", "ggo_ring_fraction",
    "core_minus_rim_hu", "core_low_fraction", "smooth1_std", "smooth2_std", "fine_std", "contrast",
)
GGO_HU = (-750.0, -300.0)
LOW_CORE_HU = 25.0


def _masked_stats(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``values`` over ``mask`` per patch: ``(N, S, S) -> (N,), (N,)``."""
    n = np.maximum(mask.sum(axis=(1, 2)), 1)
    mean = (values * mask).sum(axis=(1, 2)) / n
    var = ((values - mean[:, None, None]) ** 2 * mask).sum(axis=(1, 2)) / n
    return mean, np.sqrt(var)


def _percentiles(hu: np.ndarray, mask: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``(N, len(qs))`` percentiles of HU inside each mask (NaN for an empty mask)."""
    masked = np.where(mask, hu, np.nan).reshape(len(hu), -1)
    out = np.full((len(hu), len(qs)), np.nan)
    ok = mask.reshape(len(hu), -1).any(axis=1)
    if ok.any():
        out[ok] = np.nanpercentile(masked[ok], qs, axis=1).T
    return out


def _shape(mask: np.ndarray, mm: np.ndarray) -> dict[str, np.ndarray]:
    """Size and margin features of ``(N, S, S)`` boolean masks with ``(N,)`` mm per pixel."""
    n, s, _ = mask.shape
    area_px = mask.sum(axis=(1, 2)).astype(np.float64)
    eroded = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))
    edge = mask & ~eroded
    # perimeter: pixel-edge crossings x pi/4 (Crofton's estimate: exact on average for a disc)
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1))).astype(np.int8)
    crossings = np.abs(np.diff(padded, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(padded, axis=2)).sum(axis=(1, 2))
    perim_px = crossings * np.pi / 4
    yy, xx = np.mgrid[:s, :s]
    safe = np.maximum(area_px, 1)
    cy, cx = (mask * yy).sum(axis=(1, 2)) / safe, (mask * xx).sum(axis=(1, 2)) / safe
    dist = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None])
    r_mean, r_std = _masked_stats(dist, edge)
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    height = s - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1)
    width = s - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1)
    return {
        "area_mm2": area_px * mm**2,
        "diameter_mm": 2 * np.sqrt(area_px / np.pi) * mm,
        "perimeter_mm": perim_px * mm,
        "compactness": np.clip(4 * np.pi * area_px / np.maximum(perim_px, 1) ** 2, 0, 2),
        "radial_irregularity": r_std / np.maximum(r_mean, 1e-6),
        "extent": area_px / np.maximum(height * width, 1),
    }


def _density(hu: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Attenuation, ground glass and core features."""
    mean, std = _masked_stats(hu, mask)
    p10, p50, p90 = _percentiles(hu, mask, (10.0, 50.0, 90.0)).T
    ggo = (hu >= GGO_HU[0]) & (hu <= GGO_HU[1])
    ring = ndimage.binary_dilation(mask, structure=np.ones((1, 3, 3), bool), iterations=2) & ~mask
    n_in, n_ring = np.maximum(mask.sum(axis=(1, 2)), 1), np.maximum(ring.sum(axis=(1, 2)), 1)
    # inner half of the tumour: pixels at more than half the maximum depth from the boundary
    depth = np.stack([ndimage.distance_transform_edt(m) for m in mask])
    core = depth > 0.5 * depth.reshape(len(hu), -1).max(axis=1)[:, None, None]
    rim = mask & ~core
    core_mean, _ = _masked_stats(hu, core)
    rim_mean, _ = _masked_stats(hu, rim)
    return {
        "hu_mean": mean, "hu_std": std, "hu_p10": p10, "hu_p50": p50, "hu_p90": p90,
        "ggo_fraction": (ggo & mask).sum(axis=(1, 2)) / n_in,
        "ggo_ring_fraction": (ggo & ring).sum(axis=(1, 2)) / n_ring,
        "core_minus_rim_hu": core_mean - rim_mean,
        "core_low_fraction": ((hu < LOW_CORE_HU) & core).sum(axis=(1, 2)) / np.maximum(core.sum(axis=(1, 2)), 1),
    }


def _texture(hu: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Texture at tumour scale: smoothed and residual HU spread inside the tumour, neighbour contrast."""
    inner = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool)) | (mask.sum(axis=(1, 2)) < 16)[:, None, None] & mask
    s1 = ndimage.gaussian_filter(hu, sigma=(0, 1, 1))
    s2 = ndimage.gaussian_filter(hu, sigma=(0, 2, 2))
    _, sd1 = _masked_stats(s1, inner)
    _, sd2 = _masked_stats(s2, inner)
    _, fine = _masked_stats(hu - s1, inner)
    both = inner[:, 1:, :] & inner[:, :-1, :]
    diff = np.abs(np.diff(hu, axis=1))
    contrast = (diff * both).sum(axis=(1, 2)) / np.maximum(both.sum(axis=(1, 2)), 1)
    return {"smooth1_std": sd1, "smooth2_std": sd2, "fine_std": fine, "contrast": contrast}


def handcrafted_features(hu: np.ndarray, mask: np.ndarray, mm_per_px: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Shape, density and texture features of each patch: ``(N, S, S)`` HU, ``(N, S, S)`` masks,
    ``(N,)`` mm per pixel -> ``(N, len(FEATURES))`` float64 (NaN where a mask is empty) and the names.

    Raises:
        ShapeError: the arrays do not line up, or a scale is not positive.
    """
    hu = np.asarray(hu, dtype=np.float64)
    mask = np.asarray(mask) > 0
    mm = np.asarray(mm_per_px, dtype=np.float64).reshape(-1)
    if hu.ndim != 3 or mask.shape != hu.shape or mm.shape != (len(hu),):
        raise ShapeError(f"handcrafted features need HU (N, S, S), masks of the same shape and (N,) mm per pixel; "
                         f"got {hu.shape}, {mask.shape}, {mm.shape}")
    if not (np.isfinite(mm) & (mm > 0)).all():
        raise ShapeError("mm_per_px must be finite and > 0 for every patch (patch contract v2 records it)")
    parts = {**_shape(mask, mm), **_density(hu, mask), **_texture(hu, mask)}
    out = np.stack([parts[name] for name in FEATURES], axis=1).astype(np.float64)
    out[~mask.any(axis=(1, 2))] = np.nan
    return out, list(FEATURES)


__all__ = ["FEATURES", "handcrafted_features"]
