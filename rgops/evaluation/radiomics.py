"""Handcrafted radiomics baseline: pyradiomics features in 2D on the same patch and mask.

The standard IBSI-style feature classes (first order, 2D shape, GLCM, GLRLM, GLSZM, GLDM, NGTDM;
about 100 features) are extracted on each ``(patch, mask)`` pair that the models see. Patches are
stored scaled to [-1, 1]; they are mapped back to Hounsfield units first, so the fixed bin width
(25 HU by default) means what it means in the radiomics literature. The pixel spacing of a resized
patch is ``pixel_spacing_mm * crop_side_px / S``; pass it and shape features come out in mm.

``pyradiomics`` 3.1.0 does not build here; the maintained fork ``pyradiomics-bhklab`` (imports as
``radiomics``, brings SimpleITK) does. Both are imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgops.data.patch import PatchSpec
from rgops.errors import ShapeError

log = logging.getLogger(__name__)

FEATURE_CLASSES: tuple[str, ...] = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


@dataclass(frozen=True)
class RadiomicsConfig:
    """params.yaml ``evaluate.radiomics``.

    Attributes:
        bin_width: grey-level bin width in HU for texture and first-order entropy features.
        feature_classes: pyradiomics feature classes to enable (2D shape, not 3D shape).
        min_mask_pixels: masks with fewer tumour pixels are skipped (logged and counted), since
            texture matrices of a handful of pixels are meaningless.
    """

    bin_width: float = 25.0
    feature_classes: tuple[str, ...] = FEATURE_CLASSES
    min_mask_pixels: int = 4


@dataclass(frozen=True)
class RadiomicsFeatures:
    """Extracted features: ``values`` ``(N, F)`` float64 with NaN rows for ``skipped`` patches."""

    values: np.ndarray
    names: tuple[str, ...]
    skipped: tuple[int, ...]

    def imputed(self) -> np.ndarray:
        """Values with NaN entries replaced by the column median (0 where a column is all NaN)."""
        v = self.values.copy()
        if np.isnan(v).any():
            med = np.nanmedian(np.where(np.isnan(v).all(axis=0), 0.0, v), axis=0)
            rows, cols = np.nonzero(np.isnan(v))
            v[rows, cols] = med[cols]
        return v


def patch_to_hu(patches: np.ndarray, spec: PatchSpec | None = None) -> np.ndarray:
    """Invert the patch scaling of ``spec`` (default contract: [-1, 1] -> [-1000, 500] HU), float64."""
    return (spec or PatchSpec()).to_hu(patches).astype(np.float64)


def _extractor(cfg: RadiomicsConfig):  # noqa: ANN202 - radiomics.featureextractor type, lazy import
    import radiomics
    from radiomics import featureextractor

    # pyradiomics logs every feature class at INFO and installs its own handler; keep errors only.
    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(force2D=True, force2Ddimension=0, binWidth=cfg.bin_width,
                                                     label=1)
    ext.disableAllFeatures()
    for name in cfg.feature_classes:
        if name not in FEATURE_CLASSES:
            raise ShapeError(f"unknown radiomics feature class {name!r}; expected some of {list(FEATURE_CLASSES)}")
        ext.enableFeatureClassByName(name)
    return ext


def extract_radiomics(
    patches: np.ndarray,
    masks: np.ndarray,
    spacing_mm: Sequence[float] | np.ndarray | None = None,
    cfg: RadiomicsConfig = RadiomicsConfig(),
    progress: Callable[[int, int], None] | None = None,
    spec: PatchSpec | None = None,
) -> RadiomicsFeatures:
    """pyradiomics 2D features of each ``(patch, mask)`` pair.

    Args:
        patches: ``(N, 1, S, S)`` float in [-1, 1] (the datasets contract).
        masks: ``(N, 1, S, S)`` tumour masks (non-zero = tumour).
        spacing_mm: per-patch in-plane pixel spacing of the resized patch, or None for 1 mm.
        progress: called as ``progress(done, total)`` after each patch.
        spec: the patch contract the patches were cut with (its HU window); default contract if None.

    Returns:
        Features with a NaN row for each patch whose mask has fewer than ``cfg.min_mask_pixels``
        pixels or on which pyradiomics fails; those indices are in ``skipped`` and logged.

    Raises:
        ShapeError: patches and masks differ in shape or are not ``(N, 1, S, S)``.
    """
    patches = np.asarray(patches)
    masks = np.asarray(masks)
    if patches.ndim != 4 or patches.shape[1] != 1 or patches.shape != masks.shape:
        raise ShapeError(
            f"patches {patches.shape} and masks {masks.shape} must both be (N, 1, S, S) and equal"
        )
    n = len(patches)
    spacing = np.ones(n) if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64).ravel()
    if spacing.shape != (n,) or not (spacing > 0).all():
        raise ShapeError(f"spacing_mm must hold {n} positive values, got shape {spacing.shape}")
    ext = _extractor(cfg)
    hu = patch_to_hu(patches[:, 0], spec).astype(np.float32)
    rows: list[dict[str, float] | None] = []
    for i in range(n):
        mask = (masks[i, 0] > 0).astype(np.uint8)
        rows.append(_one(ext, hu[i], mask, float(spacing[i]), i) if int(mask.sum()) >= cfg.min_mask_pixels else None)
        if progress is not None:
            progress(i + 1, n)
    skipped = [i for i, r in enumerate(rows) if r is None]
    names = next((tuple(r) for r in rows if r is not None), ())
    values = np.full((n, len(names)), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            values[i] = [r.get(k, np.nan) for k in names]
    if skipped:
        log.warning("radiomics skipped %d of %d patches (mask under %d pixels or degenerate): rows %s",
                    len(skipped), n, cfg.min_mask_pixels, skipped[:20])
    return RadiomicsFeatures(values, names, tuple(skipped))


def _one(ext: Any, hu: np.ndarray, mask: np.ndarray, spacing: float, i: int) -> dict[str, float] | None:
    """pyradiomics on one ``(S, S)`` HU slice and its mask at ``spacing`` mm/px; None when it fails."""
    import SimpleITK as sitk

    img_itk, mask_itk = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(mask)
    for im in (img_itk, mask_itk):
        im.SetSpacing((spacing, spacing))
    try:
        result = ext.execute(img_itk, mask_itk)
    except (ValueError, RuntimeError) as exc:  # pyradiomics raises these on degenerate masks
        log.debug("radiomics failed on patch %d: %s", i, exc)
        return None
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}
