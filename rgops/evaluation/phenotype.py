"""Phenotypes measured on a tumour patch, real or generated: what a clinician would look at.

Every measure reads the image itself (HU through the patch spec's ``to_hu``) and its physical
scale (mm per pixel); no mask from the cohort is used, so generated images are measured exactly
like real ones. The lesion is segmented from the image: a light Gaussian smoothing (scanner noise
would otherwise break the ground-glass rim apart), a threshold at ``lesion_hu``, the connected
component that holds the patch centre (or, failing that, the one nearest to it), holes filled.

Measures (one row per patch, :data:`MEASURES` in this order):

* ``area_mm2``: lesion area in mm^2 (pixels x mm_per_px^2). Under the bounding-box crop of patch
  contract v2 the lesion fills about the same share of every patch, so the absolute size lives in
  the scale: an image without its scale cannot show size.
* ``compactness``: ``4 pi A / P^2`` with the perimeter estimated from the count of lesion/background
  pixel edges x pi/4 (the Crofton correction for 4-connected edges); about 1 for a disc, lower for a
  spiculated or lobulated margin.
* ``ggo_fraction``: share of lesion pixels between ``ggo_hu`` (-750 .. -300 HU by default): ground
  glass inside the lesion's extent.
* ``core_hu``: mean HU of the central region of the solid part (lesion pixels above the ground-glass
  band whose distance to its border is at least ``core_depth`` x the largest such distance); a
  necrotic core lowers it.

:data:`PHENOTYPE_MEASURE` says which measure shows each phenotype parameter of the synthetic
cohort's ground truth and in which direction; :func:`program_links` turns the truth's
``phenotypes`` map (parameter -> program) into program -> (measure, sign). For the demo cohort
(:data:`PROGRAM_MEASURE`, docs/architecture.md): proliferation -> larger area, emt -> lower
compactness, egfr_signalling -> more ground glass, hypoxia -> lower core attenuation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from rgops.errors import ShapeError

log = logging.getLogger(__name__)

MEASURES: tuple[str, ...] = ("area_mm2", "compactness", "ggo_fraction", "core_hu")

# ground-truth phenotype parameter -> (measure, sign): the sign the measure moves with the parameter.
PHENOTYPE_MEASURE: dict[str, tuple[str, float]] = {
    "diameter_mm": ("area_mm2", 1.0),
    "spiculation": ("compactness", -1.0),
    "ggo_fraction": ("ggo_fraction", 1.0),
    "necrosis": ("core_hu", -1.0),
    "attenuation_hu": ("core_hu", 1.0),
}


def program_links(phenotypes: Mapping[str, str]) -> dict[str, tuple[str, float]]:
    """Ground truth ``{parameter: program}`` -> ``{program: (measure, sign)}``; a program driving
    several measured parameters is judged on the first one listed (proliferation: diameter)."""
    links: dict[str, tuple[str, float]] = {}
    for parameter, program in phenotypes.items():
        if parameter in PHENOTYPE_MEASURE and program not in links:
            links[program] = PHENOTYPE_MEASURE[parameter]
    return links


# The demo cohort's (rgops.data.synth) links, for reference and tests.
PROGRAM_MEASURE: dict[str, tuple[str, float]] = program_links({
    "diameter_mm": "proliferation", "attenuation_hu": "proliferation", "necrosis": "hypoxia",
    "spiculation": "emt", "ggo_fraction": "egfr_signalling"})


@dataclass(frozen=True)
class PhenotypeConfig:
    """Thresholds of the measures (HU).

    Attributes:
        lesion_hu: lesion = smoothed HU above this (ground glass included; lung is about -850).
        ggo_hu: ``(low, high)`` HU counted as ground glass inside the lesion.
        smooth_px: Gaussian sigma (pixels) applied before segmenting (not before measuring HU).
        core_depth: the core is the lesion part at least this share of the deepest point's depth.
    """

    lesion_hu: float = -720.0
    ggo_hu: tuple[float, float] = (-750.0, -300.0)
    smooth_px: float = 1.0
    core_depth: float = 0.5


def lesion_mask(hu: np.ndarray, cfg: PhenotypeConfig = PhenotypeConfig()) -> np.ndarray:
    """``(S, S)`` HU -> ``(S, S)`` bool mask of the central lesion (empty when nothing is above threshold)."""
    img = np.asarray(hu, dtype=np.float64)
    if img.ndim != 2:
        raise ShapeError(f"lesion_mask expects one (S, S) HU image, got shape {img.shape}")
    above = ndimage.gaussian_filter(img, cfg.smooth_px) > cfg.lesion_hu if cfg.smooth_px > 0 else img > cfg.lesion_hu
    labels, n = ndimage.label(above)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    cr, cc = (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    centre = labels[int(round(cr)), int(round(cc))]
    if centre == 0:  # the nearest component to the centre
        rows, cols = np.nonzero(labels)
        k = int(np.argmin((rows - cr) ** 2 + (cols - cc) ** 2))
        centre = labels[rows[k], cols[k]]
    return ndimage.binary_fill_holes(labels == centre)


def _perimeter_px(mask: np.ndarray) -> float:
    """Perimeter in pixels: lesion/background edge count x pi/4 (isotropic Crofton correction)."""
    m = np.pad(mask, 1).astype(np.int8)
    edges = np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()
    return float(edges) * np.pi / 4


def measure(hu: np.ndarray, mm_per_px: float, cfg: PhenotypeConfig = PhenotypeConfig()) -> dict[str, float]:
    """The :data:`MEASURES` of one ``(S, S)`` HU image at ``mm_per_px``.

    An image without a lesion gives area 0, compactness 0, ground glass 0 and the core HU of the
    patch centre pixel (so a blank generator scores, rather than crashes, and scores badly).
    """
    img = np.asarray(hu, dtype=np.float64)
    mask = lesion_mask(img, cfg)
    area_px = int(mask.sum())
    if area_px == 0:
        s = img.shape[0] // 2
        return {"area_mm2": 0.0, "compactness": 0.0, "ggo_fraction": 0.0, "core_hu": float(img[s, s])}
    perim = _perimeter_px(mask)
    lo, hi = cfg.ggo_hu
    inside = img[mask]
    # The core is measured in the solid part: a ground-glass rim would otherwise pull it down.
    smooth = ndimage.gaussian_filter(img, cfg.smooth_px) if cfg.smooth_px > 0 else img
    solid = ndimage.binary_fill_holes(mask & (smooth > hi))
    depth = ndimage.distance_transform_edt(solid if solid.any() else mask)
    core = depth >= cfg.core_depth * depth.max()
    return {
        "area_mm2": float(area_px * float(mm_per_px) ** 2),
        "compactness": float(min(4 * np.pi * area_px / max(perim, 1e-9) ** 2, 1.5)),
        "ggo_fraction": float(((inside >= lo) & (inside <= hi)).mean()),
        "core_hu": float(img[core].mean()),
    }


def measure_batch(hu: np.ndarray, mm_per_px: np.ndarray | float, cfg: PhenotypeConfig = PhenotypeConfig()
                  ) -> np.ndarray:
    """``(n, S, S)`` or ``(n, 1, S, S)`` HU images and ``(n,)`` (or one) mm/px -> ``(n, len(MEASURES))``."""
    imgs = np.asarray(hu)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    if imgs.ndim != 3:
        raise ShapeError(f"measure_batch expects (n, S, S) or (n, 1, S, S) HU images, got shape {np.shape(hu)}")
    scale = np.broadcast_to(np.asarray(mm_per_px, dtype=np.float64), (len(imgs),))
    rows = [measure(im, float(s), cfg) for im, s in zip(imgs, scale)]
    return np.array([[r[k] for k in MEASURES] for r in rows], dtype=np.float64).reshape(len(imgs), len(MEASURES))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; 0 when either side is constant (a collapsed generator)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or len(a) < 3:
        raise ShapeError(f"spearman needs two equal-length vectors of >= 3 values, got {a.shape} and {b.shape}")
    if np.ptp(a) < 1e-12 or np.ptp(b) < 1e-12:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def phenotype_rho(measures: np.ndarray, programs: np.ndarray, names: Sequence[str], linked: Sequence[str],
                  decoys: Sequence[str], prefix: str, links: Mapping[str, tuple[str, float]] | None = None
                  ) -> dict[str, float]:
    """Spearman of each measured phenotype with the program that drives it, across patients.

    Args:
        measures: ``(n, len(MEASURES))`` per-patient phenotype measures.
        programs: ``(n, len(names))`` per-patient program scores (the requested ones for generated
            images, the patients' own for real ones).
        linked / decoys: program names; a linked program missing from ``links`` is skipped.
        links: program -> (measure, sign) (:func:`program_links`); default :data:`PROGRAM_MEASURE`.

    Returns:
        ``<prefix>.<program>``: for a linked program the Spearman signed so that the expected direction
        is positive; for a decoy the largest absolute Spearman with any measure (should be about 0);
        ``<prefix>.linked_min`` / ``.linked_mean`` and ``<prefix>.decoy_max_abs``.
    """
    meas, prog = np.asarray(measures, dtype=np.float64), np.asarray(programs, dtype=np.float64)
    if meas.ndim != 2 or meas.shape[1] != len(MEASURES) or prog.shape != (len(meas), len(names)):
        raise ShapeError(f"phenotype_rho: measures {meas.shape} must be (n, {len(MEASURES)}) and programs "
                         f"{prog.shape} must be (n, {len(names)})")
    links = PROGRAM_MEASURE if links is None else links
    col = {n: j for j, n in enumerate(names)}
    out: dict[str, float] = {}
    linked_vals = []
    for p in linked:
        if p not in links or p not in col:
            continue
        name, sign = links[p]
        out[f"{prefix}.{p}"] = sign * spearman(meas[:, MEASURES.index(name)], prog[:, col[p]])
        linked_vals.append(out[f"{prefix}.{p}"])
    decoy_vals = []
    for p in decoys:
        if p in col:
            out[f"{prefix}.{p}"] = max(abs(spearman(meas[:, j], prog[:, col[p]])) for j in range(len(MEASURES)))
            decoy_vals.append(out[f"{prefix}.{p}"])
    if linked_vals:
        out[f"{prefix}.linked_min"] = float(min(linked_vals))
        out[f"{prefix}.linked_mean"] = float(np.mean(linked_vals))
    if decoy_vals:
        out[f"{prefix}.decoy_max_abs"] = float(max(decoy_vals))
    return out


def strip_rho(measures_by_program: Mapping[str, np.ndarray], values: Sequence[float], prefix: str,
              links: Mapping[str, tuple[str, float]] | None = None) -> dict[str, float]:
    """Spearman of each program's measure with the traversal level along its strip.

    Args:
        measures_by_program: program -> ``(len(values), len(MEASURES))`` measures of its strip
            (programs missing from ``links``, default :data:`PROGRAM_MEASURE`, are skipped).

    Returns:
        ``<prefix>.<program>`` signed like :func:`phenotype_rho` and ``<prefix>.linked_min``.
    """
    links = PROGRAM_MEASURE if links is None else links
    out = {}
    for p, meas in measures_by_program.items():
        if p in links:
            name, sign = links[p]
            out[f"{prefix}.{p}"] = sign * spearman(np.asarray(meas)[:, MEASURES.index(name)], np.asarray(values))
    if out:
        out[f"{prefix}.linked_min"] = float(min(out.values()))
    return out


__all__ = ["MEASURES", "PHENOTYPE_MEASURE", "PROGRAM_MEASURE", "PhenotypeConfig", "program_links", "lesion_mask",
           "measure", "measure_batch",
           "phenotype_rho", "spearman", "strip_rho"]
