"""Feature extraction: checked patches (ready, or cut from de-identified DICOM) -> the CAE's latent
(the imaging biomarker) and, when the model carries a program head, gene-program scores."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgops.data.patch import PatchSpec, log_scale
from rgops.data.provenance import program_score_warning
from rgops.errors import DicomError, GeneMismatchError, RgopsError, ShapeError
from rgops.models.program_head import ProgramHead
from rgops.serving.generate import normalise_profile
from rgops.serving.slots import ServedModel

log = logging.getLogger(__name__)

NO_PROGRAM_HEAD = ("this model version carries no program head (a latent -> gene-program map fitted at "
                   "evaluation time); program scores are not predicted rather than guessed")


@dataclass(frozen=True)
class Features:
    """The output of feature extraction for a batch of patches.

    ``program_scores`` is None with ``program_reason`` set when the model has no program head;
    ``program_warning`` says so when the head was fitted on a synthetic cohort.
    """

    latent: np.ndarray
    program_names: tuple[str, ...] | None
    program_scores: np.ndarray | None
    program_reason: str | None
    program_warning: str | None = None

    def mean(self, head: "ProgramHead | None") -> "Features":
        """The per-patient biomarker: the mean latent over a patient's slices, and its program scores."""
        latent = self.latent.mean(axis=0, keepdims=True)
        scores = None if head is None or self.program_scores is None else head(latent)
        return Features(latent, self.program_names, scores, self.program_reason, self.program_warning)

    def row(self, i: int) -> dict[str, Any]:
        """One patch's features as JSON-able values."""
        scores = (None if self.program_scores is None
                  else dict(zip(self.program_names or (), map(float, self.program_scores[i]))))
        return {"latent": [float(v) for v in self.latent[i]], "program_scores": scores,
                "program_scores_reason": self.program_reason,
                "program_scores_warning": self.program_warning if scores is not None else None}


def check_patches(patches: np.ndarray | Sequence[Any], size: int) -> np.ndarray:
    """Ready patches from a client -> float32 ``(B, 1, S, S)``, checked.

    Accepts ``(B, 1, S, S)``, ``(B, S, S)`` or one ``(S, S)`` patch, values in [-1, 1] (the ingest
    scaling of HU [-1000, 500]).

    Raises:
        ShapeError: wrong shape, side other than ``size``, empty, non-finite or out-of-range values.
    """
    try:
        arr = np.asarray(patches, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"patches are not a rectangular array of numbers ({exc}); send (B, 1, {size}, {size}) "
                         "floats in [-1, 1]") from None
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2:] != (size, size) or arr.shape[0] < 1:
        raise ShapeError(f"patches have shape {tuple(np.shape(patches))}, expected (B, 1, {size}, {size}) "
                         f"with B >= 1; this model was trained on {size} x {size} patches")
    if not np.isfinite(arr).all():
        raise ShapeError("patches hold NaN or infinite values; send finite values in [-1, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise ShapeError(f"patch values span [{lo:.3g}, {hi:.3g}], expected [-1, 1] (HU [-1000, 500] scaled); "
                         "send patches preprocessed like ingest, or send the DICOM to /extract")
    return np.clip(arr, -1.0, 1.0)


def check_scale(model: ServedModel, mm_per_px: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray | None:
    """The scale input ``log2(mm_per_px)`` ``(n,)`` for a model that reads it (None for one that does not).

    Raises:
        ShapeError: the model reads the scale and none, the wrong number, or non-positive values came.
    """
    if not model.reads_scale:
        return None
    if mm_per_px is None:
        raise ShapeError(f"{model.name} version {model.version} reads each patch's physical scale: send "
                         "'mm_per_px' (crop side in mm / patch side, patch contract v2) with ready patches, "
                         "or send the DICOM to /extract")
    try:
        arr = np.asarray(mm_per_px, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ShapeError(f"mm_per_px must be numbers; got {str(mm_per_px)[:40]!r}") from None
    if arr.size == 1 and n > 1:
        arr = np.repeat(arr, n)
    if arr.size != n or not np.isfinite(arr).all() or (arr <= 0).any() or (arr > 100).any():
        raise ShapeError(f"mm_per_px must be {n} finite value(s) in (0, 100] mm, one per patch; got {arr.size}")
    return log_scale(arr)


def encode(model: ServedModel, patches: np.ndarray, genes: np.ndarray | None = None,
           scale: np.ndarray | None = None) -> Features:
    """Checked patches ``(B, 1, S, S)`` (normalised genes ``(B, G)`` for an encoder-conditioned CAE,
    and the scale ``log2(mm_per_px)`` ``(B,)`` from :func:`check_scale` for a scale-reading CAE)
    -> :class:`Features`.

    Raises:
        GeneMismatchError: the CAE reads genes in its encoder and none were given.
        ShapeError: the CAE reads the scale and none was given.
    """
    import torch

    needs_genes = getattr(model.module.config, "conditioning", "none") == "encoder"
    if needs_genes and genes is None:
        raise GeneMismatchError(
            f"{model.name} version {model.version} reads a gene profile with the image (encoder "
            "conditioning); send the patient's profile with the images"
        )
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(model.device)
        g = torch.from_numpy(np.ascontiguousarray(genes, dtype=np.float32)).to(model.device) if needs_genes else None
        if model.reads_scale and scale is None:
            raise ShapeError(f"{model.name} version {model.version} reads each patch's scale; send mm_per_px")
        sc = torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)).to(model.device) if model.reads_scale else None
        latent = model.module.encode(x, g, sc).cpu().numpy().astype(np.float64)
    if model.program_head is None:
        return Features(latent, None, None, NO_PROGRAM_HEAD)
    return Features(latent, model.program_head.names, model.program_head(latent), None,
                    program_score_warning(dict(model.card or {})))


def decode_patch_b64(text: str, size: int) -> np.ndarray:
    """One patch sent as base64 of ``size * size`` little-endian float32 values (row-major) -> ``(S, S)``.

    A quarter of the JSON float-list body and parsed without a float-by-float decode.

    Raises:
        ShapeError: not base64, or not ``size * size`` float32 values.
    """
    import base64
    import binascii

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ShapeError(f"pixels_b64 is not base64; send base64 of {size} x {size} little-endian float32 "
                         "values, row by row") from None
    if len(raw) != size * size * 4:
        raise ShapeError(f"pixels_b64 holds {len(raw)} bytes; expected {size * size * 4} ({size} x {size} float32)")
    return np.frombuffer(raw, dtype="<f4").reshape(size, size)


def encode_items(model: ServedModel, items: Sequence[tuple[Any, Mapping[str, Any] | None, float | None]],
                 out: Callable[..., Any] = dict) -> list[Any]:
    """A batch of ready patches from several requests -> one result per item, in order.

    Each item is ``(pixels, raw_profile or None, mm_per_px or None)``; ``pixels`` is an S x S array
    (nested lists) or a base64 string (:func:`decode_patch_b64`). Items are checked one by one, so one client's
    bad patch gives *that item* an ``error`` (with its reason) instead of failing the others in
    the batch; the valid ones are encoded in one model call.

    Args:
        out: constructor of a result (keyword arguments ``latent``, ``program_scores``,
            ``program_scores_reason``, ``model``, ``error``).
    """
    needs_genes = getattr(model.module.config, "conditioning", "none") == "encoder"
    good: list[int] = []
    arrays: list[np.ndarray] = []
    genes: list[np.ndarray] = []
    scales: list[float] = []
    errors: dict[int, str] = {}
    for i, (pixels, profile, mm_per_px) in enumerate(items):
        try:
            scale = check_scale(model, None if mm_per_px is None else [mm_per_px], 1)
            pixels = decode_patch_b64(pixels, model.image_size) if isinstance(pixels, str) else pixels
            arrays.append(check_patches(pixels, model.image_size)[0])
            if needs_genes:
                if profile is None:
                    raise GeneMismatchError(f"{model.name} version {model.version} reads a gene profile "
                                            "with the image; send 'profile' with each patch")
                genes.append(normalise_profile(model.panel, profile, impute=False).genes[0])
            if scale is not None:
                scales.append(float(scale[0]))
            good.append(i)
        except RgopsError as exc:
            if len(arrays) > len(good):
                arrays.pop()
            errors[i] = f"{type(exc).__name__}: {exc}"
    results: list[Any] = [None] * len(items)
    if good:
        feats = encode(model, np.stack(arrays), np.stack(genes) if needs_genes else None,
                       np.asarray(scales, dtype=np.float32) if model.reads_scale else None)
        for j, i in enumerate(good):
            results[i] = out(**feats.row(j), model=model.describe(), error=None)
    for i, reason in errors.items():
        results[i] = out(latent=None, program_scores=None, program_scores_reason=None,
                         model=model.describe(), error=reason)
    log.debug("encoded %d patches (%d refused) with %s v%s", len(good), len(errors), model.name, model.version)
    return results


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def patch_from_dicom(datasets: Sequence[Any], spec: PatchSpec, box: Sequence[int] | None = None,
                     mask2d: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Uploaded DICOM -> de-identified tumour patches ``(K, 1, S, S)`` cut exactly as ingest cuts them.

    ``spec`` is the patch contract recorded in the model card (:attr:`ServedModel.spec`), so the
    served crop, window and slice rule are the ones the model was trained on.

    Three forms: a study holding a CT series and a SEG that references it (the tumour mask comes from
    the SEG; localizers, other reconstructions and non-image series are ignored with a logged reason,
    :func:`rgops.data.study.select_study`, the choice ingest makes); one CT slice with
    ``box = (r0, c0, r1, c1)`` (the tumour box, end-exclusive, in pixels of that slice); or one CT
    slice with ``mask2d``, a ``(rows, columns)`` array, non-zero on the tumour.

    The files are de-identified first (PS3.15 basic profile, :func:`rgops.data.deid.deidentify`)
    under a key that lives only in this process, so nothing identifying is held past this call and
    no pseudonym is returned.

    Returns:
        The patches (one per slice of the contract's slice rule) and their provenance: ``slices``
        (slice index, crop side, ``mm_per_px`` of each), pixel spacing, number of slices, ``study``
        (each series found and whether it was used or why not); no identifiers.

    Raises:
        StudyError: no SEG (and no box/mask), no CT series, a SEG referencing none of the CT series
            (the message lists the series found and what to send).
        DicomError / SegmentationError: a series that cannot be stacked,
            a SEG that does not fit the series, an empty or out-of-image box.
        DeidentificationError: de-identification could not be guaranteed.
    """
    from rgops.data import deid, dicom
    from rgops.data.ingest import extract_patches
    from rgops.data.study import select_study

    key = _process_key()
    clean = [_on_client_data(f"de-identifying file {i + 1}", deid.deidentify, ds, key,
                             str(ds.get("PatientID", "") or "unknown")) for i, ds in enumerate(datasets)]
    n_segs = sum(str(d.get("SOPClassUID", "")) == SEGMENTATION_STORAGE for d in clean)
    if (box is not None or mask2d is not None) and n_segs:
        raise DicomError(f"a tumour box or mask replaces the SEG; got {n_segs} SEG file(s) as well: send one or "
                         "the other")
    # the same series choice as ingest: the CT series the SEG references; localizers and others ignored
    selection = _on_client_data("choosing the study's series", select_study, clean,
                                box is not None or mask2d is not None)
    names = [f"CT file {i + 1}" for i in range(len(selection.ct))]
    series = _on_client_data("reading the CT series", dicom.ct_series, selection.ct, names)
    if selection.seg is not None:
        mask = _on_client_data("reading the SEG", dicom.segmentation_mask, selection.seg, series, "the uploaded SEG")
    else:
        mask = _drawn_mask(series, box, mask2d)
    # the very function ingest cuts with
    patches, _, infos = _on_client_data("cutting the tumour patch", extract_patches, series.hu, mask,
                                        float(series.pixel_spacing[0]), spec)
    slices = [{"slice_index": int(i["slice_index"]), "crop_side_px": int(i["crop_side_px"]),
               "tumour_area_px": int(i["tumour_area_px"]), "mm_per_px": float(i["mm_per_px"])} for i in infos]
    provenance = {"slices": slices, "slice_index": slices[0]["slice_index"],
                  "pixel_spacing_mm": [float(v) for v in series.pixel_spacing], "n_slices": series.n_slices,
                  "patch_spec": spec.to_json()["format"],
                  "study": [x.describe() for x in selection.series]}
    return patches, provenance


def _drawn_mask(series: Any, box: Sequence[int] | None, mask2d: np.ndarray | None) -> np.ndarray:
    """The tumour mask of one CT slice from a client's box ``(r0, c0, r1, c1)`` or 2-D mask."""
    if series.n_slices != 1 or (box is not None and mask2d is not None):
        raise DicomError(f"a tumour box or mask goes with exactly one CT slice (and not both); got a series of "
                         f"{series.n_slices} slice(s)")
    rows, cols = series.hu.shape[1:]
    if mask2d is not None:
        if mask2d.shape != (rows, cols):
            raise ShapeError(f"tumour mask has shape {mask2d.shape}, the CT slice {(rows, cols)}; "
                             "send a mask on the slice's pixel grid")
        return (np.asarray(mask2d) != 0).astype(np.uint8)[None]
    r0, c0, r1, c1 = (int(v) for v in box) if box is not None and len(box) == 4 else (0, 0, 0, 0)
    if box is None or len(box) != 4 or not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
        raise DicomError(f"tumour box {list(box or [])} is not (r0, c0, r1, c1) with 0 <= r0 < r1 <= {rows} and "
                         f"0 <= c0 < c1 <= {cols} on this {rows}x{cols} slice")
    mask = np.zeros(series.hu.shape, dtype=np.uint8)
    mask[0, r0:r1, c0:c1] = 1
    return mask


#: What pydicom, highdicom and numpy raise on malformed client data that passed the header checks.
CLIENT_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError,
                      OverflowError, ZeroDivisionError, EOFError, RuntimeError)


def _on_client_data(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one step of the DICOM path; a library error on the client's data becomes a DicomError
    naming the step (rgops's own errors pass through with their messages)."""
    try:
        return fn(*args)
    except RgopsError:
        raise
    except CLIENT_DATA_ERRORS as exc:
        raise DicomError(f"{stage} failed on the uploaded DICOM ({type(exc).__name__}); a header element is "
                         "corrupt or inconsistent: re-export the files") from None


_KEY: list[bytes] = []


def _process_key() -> bytes:
    import secrets

    if not _KEY:
        _KEY.append(secrets.token_hex(32).encode())
    return _KEY[0]


def extract_dicom(model: ServedModel, datasets: Sequence[Any], genes: np.ndarray | None = None,
                  box: Sequence[int] | None = None, mask2d: np.ndarray | None = None,
                  per_slice: bool = False) -> dict[str, Any]:
    """DICOM (a study with its SEG, or one CT slice and a box/mask) -> the ``/extract`` answer.

    The answer: ``model`` (name, version, alias, trained_on), the per-patient biomarker ``latent``
    (mean over the tumour's slices), ``program_scores`` (+ reason or warning), ``patch`` (the
    provenance of :func:`patch_from_dicom`) and, with ``per_slice``, ``slices``. Used by
    ``/extract``, ``/extract_study`` and the PACS watcher, so all three answer alike.
    """
    patches, provenance = patch_from_dicom(datasets, model.spec, box=box, mask2d=mask2d)
    g = None if genes is None else genes.repeat(len(patches), axis=0)
    scale = check_scale(model, [s["mm_per_px"] for s in provenance["slices"]], len(patches))
    feats = encode(model, patches, g, scale)
    out = {"model": model.describe(), **feats.mean(model.program_head).row(0), "patch": provenance}
    if per_slice:
        out["slices"] = [feats.row(i) for i in range(len(patches))]
    return out
