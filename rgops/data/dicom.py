"""Reading CT series and DICOM SEG tumour masks.

A CT series is read from its slice files in any order and stacked along the slice normal
(``ImageOrientationPatient`` row x column direction) by ``ImagePositionPatient``; pixel values
become Hounsfield units with :func:`pydicom.pixels.apply_modality_lut`. A SEG is read with
highdicom and its frames are placed on the series' slices by the CT instance each frame
references (``ReferencedSOPInstanceUID``), or, when a SEG lacks those references, by
``ImagePositionPatient``: a SEG usually covers only the tumour slices.

Errors name the file (by the name given, so callers can redact it) and say what to do:
:class:`~rgops.errors.DicomError` for unusable files or series,
:class:`~rgops.errors.DicomDecodeError` for transfer syntaxes no installed plugin decodes,
:class:`~rgops.errors.SegmentationError` for SEGs that do not fit their series.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array

from rgops.data import header
from rgops.data.rawseq import raw_items
from rgops.errors import DicomDecodeError, DicomError, SegmentationError

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: Tolerances: orientation cosines, pixel spacing (mm) and slice-gap uniformity (fraction).
ORIENTATION_TOL = 1e-3
SPACING_TOL_MM = 1e-3
GAP_TOL = 0.05


def quiet_value_warnings() -> None:
    """Stop pydicom from quoting header values in warnings and log records.

    pydicom warns about values that break their VR (a UI of 808 characters, a malformed date) and
    quotes the raw value, which for a header not yet de-identified (a raw cohort, a client upload)
    can carry the patient's name or id into a log. rgops validates every value it uses itself and
    names attributes, never values, so the servers and the CLI call this once at start: value
    validation on read is switched off and pydicom's remaining warnings are dropped.
    """
    import warnings

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def read_dicom(path: str | Path, stop_before_pixels: bool = False, name: str | None = None) -> Dataset:
    """Read one DICOM file.

    Args:
        path: the file.
        stop_before_pixels: read the header only.
        name: how to name the file in errors (default: its path).

    Raises:
        DicomError: the file is missing, not DICOM, or truncated in its header.
    """
    p = Path(path)
    label = name if name is not None else str(p)
    try:
        return pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise DicomError(f"DICOM file {label!r} does not exist") from None
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(
            f"{label!r} is not a readable DICOM file ({type(exc).__name__}: {exc}); "
            "check that the transfer was complete or remove the file"
        ) from None


def _plugin_hint(ds: Dataset) -> str:
    ts = ds.file_meta.TransferSyntaxUID
    try:
        from pydicom.pixels.decoders.base import get_decoder

        missing = get_decoder(ts).missing_dependencies
    except NotImplementedError:
        return "pydicom has no decoder for it at all; convert the series to an uncompressed syntax (e.g. `gdcmconv --raw`)"
    if missing:
        return "install one of: " + "; ".join(missing) + " (e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`)"
    return "convert the series to an uncompressed syntax"


def decode_pixels(ds: Dataset, name: str) -> np.ndarray:
    """Stored pixel values of ``ds`` (decoded by pydicom's installed plugins).

    Args:
        ds: a dataset read with pixel data.
        name: how to name the file in errors.

    Raises:
        DicomDecodeError: no installed plugin decodes the transfer syntax (names it and the plugin).
        DicomError: no pixel data, or pixel data truncated/corrupt.
    """
    if "PixelData" not in ds:
        raise DicomError(f"{name!r} has no pixel data; expected a CT image")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise DicomError(f"{name!r} has no TransferSyntaxUID in its file meta; re-export it as a DICOM Part 10 file")
    if ts.is_compressed:
        try:
            from pydicom.pixels.decoders.base import get_decoder

            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DicomDecodeError(
                f"{name!r} is compressed with {ts.name} ({ts}) and no installed plugin decodes it; "
                f"{_plugin_hint(ds)}"
            )
    try:
        # pydicom.pixels.pixel_array decodes without caching the array on the dataset (ds.pixel_array
        # keeps a copy for the dataset's lifetime: 300 MB more for a thin-slice study).
        return np.asarray(pixel_array(ds))
    except (ValueError, RuntimeError, EOFError, OSError, AttributeError, NotImplementedError) as exc:
        raise DicomError(
            f"{name!r}: pixel data cannot be decoded ({type(exc).__name__}: {exc}); the file is "
            "probably truncated or corrupt: re-export it"
        ) from None


def _exact_in_float32(pixels: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether ``pixels * slope + intercept`` stays in whole numbers below 2**24 in magnitude, where
    float32 holds every value and every step exactly: pixels of at most 16-bit integers (below 2**16),
    a whole slope of at most 2**7 and a whole intercept of at most 2**22 in magnitude."""
    return (pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2
            and slope.is_integer() and abs(slope) <= 2**7
            and intercept.is_integer() and abs(intercept) <= 2**22)


def to_hu(ds: Dataset, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Pixel data of a CT slice in Hounsfield units, float32 ``(rows, columns)``, written into ``out``
    when given (a slice of a series' volume: no slice-sized temporary is kept).

    The values are pydicom's ``apply_modality_lut`` in float64, rounded once to float32.
    """
    pixels = decode_pixels(ds, name)
    if pixels.ndim != 2:
        raise DicomError(f"{name!r} has pixel data of shape {pixels.shape}; expected one 2-D CT slice")
    if out is not None and out.shape != pixels.shape:
        raise DicomError(f"{name!r} has {pixels.shape[0]}x{pixels.shape[1]} pixels but the series' first "
                         f"slice has {out.shape[0]}x{out.shape[1]}; send one reconstruction per series")
    rescale = {}
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        try:
            values = header.numbers(ds, keyword)
        except (TypeError, ValueError, OverflowError):
            values = []
        if values is not None:  # present
            value = values[0] if len(values) == 1 else float("nan")
            if not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
                raise DicomError(f"{name!r}: {keyword} is not a finite number (a slope must not be 0); "
                                 "Hounsfield units cannot be computed: re-export the file")
            rescale[keyword] = value
    hu = np.empty(pixels.shape, dtype=np.float32) if out is None else out
    if len(rescale) == 2 and "ModalityLUTSequence" not in ds:  # apply_modality_lut's rescale, in place
        slope, intercept = rescale["RescaleSlope"], rescale["RescaleIntercept"]
        if _exact_in_float32(pixels, slope, intercept):
            # whole numbers below 2**24 all the way: float32 arithmetic gives the float64 result
            # exactly (the common CT rescale, slope 1 and intercept -1024, in a quarter of the time)
            if slope == 1:
                np.add(pixels, np.float32(intercept), out=hu, dtype=np.float32)
            else:
                np.multiply(pixels, np.float32(slope), out=hu, dtype=np.float32)
                hu += np.float32(intercept)
            return hu  # finite by construction
        wide = pixels.astype(np.float64)
        wide *= slope
        wide += intercept
        hu[...] = wide
    else:
        try:
            hu[...] = apply_modality_lut(pixels, ds)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise DicomError(f"{name!r}: the modality LUT cannot be applied ({type(exc).__name__}); re-export the "
                             "file with RescaleSlope/RescaleIntercept") from None
    if not np.isfinite(hu).all():
        raise DicomError(f"{name!r}: Hounsfield units are not finite; check RescaleSlope/RescaleIntercept")
    return hu


@dataclass(frozen=True)
class CTSeries:
    """A CT series stacked along its slice normal.

    Attributes:
        hu: float32 ``(Z, rows, columns)``, Hounsfield units, slices by increasing ``z_mm``.
        z_mm: ``(Z,)`` slice positions along the normal (mm).
        positions: ``(Z, 3)`` ImagePositionPatient per slice.
        orientation: ``(6,)`` ImageOrientationPatient.
        pixel_spacing: (row spacing, column spacing) in mm.
        slice_spacing: distance between slice centres (mm), median of the gaps.
        slice_thickness: SliceThickness (mm) or None.
        sop_uids: SOPInstanceUID per slice, in stacking order.
        series_uid: SeriesInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID ('' when absent).
        manufacturer: Manufacturer ('' when absent).
    """

    hu: np.ndarray
    z_mm: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float | None
    sop_uids: tuple[str, ...]
    series_uid: str
    frame_of_reference_uid: str = ""
    manufacturer: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    def index_of(self, sop_uid: str) -> int | None:
        """Slice index of the instance ``sop_uid`` (None when not in the series)."""
        if not self._index:
            self._index.update({u: i for i, u in enumerate(self.sop_uids)})
        return self._index.get(sop_uid)


def _matrix(ds: Dataset, name: str) -> tuple[int, int]:
    """``(Rows, Columns)`` of a slice, or a DicomError naming the file."""
    try:
        shape = (header.integer(ds, "Rows"), header.integer(ds, "Columns"))
    except (TypeError, ValueError, OverflowError):
        shape = (None, None)
    if None in shape:
        raise DicomError(f"{name!r} lacks a readable Rows/Columns; a CT slice needs both: re-export the file")
    return shape  # type: ignore[return-value]


def _one_number(ds: Dataset, keyword: str) -> float | None:
    """One DS value, or None when absent, empty, several or not a number (an optional attribute)."""
    try:
        values = header.numbers(ds, keyword)
    except (TypeError, ValueError, OverflowError):
        return None
    return values[0] if values and len(values) == 1 else None


def _float_list(ds: Dataset, keyword: str, n: int, name: str) -> np.ndarray:
    """``n`` finite numbers from a multi-valued attribute, or a DicomError naming the file and attribute."""
    try:
        values = header.numbers(ds, keyword)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(f"{name!r}: {keyword} holds a value that is not a number; expected {n} numbers: "
                         "re-export the file") from None
    if values is None:
        raise DicomError(f"{name!r} lacks {keyword} ({n} numbers expected); a CT slice needs it: re-export the file")
    if len(values) != n:
        raise DicomError(f"{name!r}: {keyword} has {len(values)} value(s); expected {n} numbers: re-export the file")
    out = np.asarray(values, dtype=np.float64)
    if not np.isfinite(out).all():
        raise DicomError(f"{name!r}: {keyword} holds a non-finite number; expected {n} finite numbers")
    return out


def ct_series(datasets: Sequence[Dataset], names: Sequence[str] | None = None) -> CTSeries:
    """Stack CT slices (in any order) into a :class:`CTSeries`.

    Args:
        datasets: the slices, read with pixel data (already de-identified or not).
        names: how to name each slice in errors (default ``slice <i>``).

    Raises:
        DicomError: empty input, a non-CT object, slices of several series, inconsistent
            orientation, pixel spacing or matrix size, duplicate positions, or uneven gaps.
        DicomDecodeError: a slice in a transfer syntax no installed plugin decodes.
    """
    if not datasets:
        raise DicomError("no CT slices given; expected the files of one CT series")
    names = list(names) if names is not None else [f"slice {i}" for i in range(len(datasets))]
    first, first_name = datasets[0], names[0]
    for ds, name in zip(datasets, names):
        modality = header.text(ds, "Modality")
        sop_class = header.text(ds, "SOPClassUID")
        if modality != "CT" or sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE):
            raise DicomError(
                f"{name!r} has Modality {modality!r} and SOPClassUID {sop_class!r}; expected a CT Image "
                f"(Modality 'CT', {CT_IMAGE_STORAGE}): move other objects out of the series folder"
            )
    series = {header.text(ds, "SeriesInstanceUID") for ds in datasets}
    if len(series) != 1:
        raise DicomError(
            f"the slices given belong to {len(series)} series; expected one series per folder "
            "(split mixed series into one folder each)"
        )
    orient0 = _float_list(first, "ImageOrientationPatient", 6, first_name)
    spacing0 = _float_list(first, "PixelSpacing", 2, first_name)
    shape0 = _matrix(first, first_name)
    normal = np.cross(orient0[:3], orient0[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise DicomError(f"{first_name!r} has ImageOrientationPatient {orient0.tolist()} whose rows and columns "
                         "are not orthonormal; the file is corrupt")
    positions = []
    for ds, name in zip(datasets, names):
        orient = _float_list(ds, "ImageOrientationPatient", 6, name)
        if np.abs(orient - orient0).max() > ORIENTATION_TOL:
            raise DicomError(
                f"{name!r} has ImageOrientationPatient {orient.tolist()}, others {orient0.tolist()}; "
                "a series must share one orientation (was a localizer or a reformat mixed in?)"
            )
        spacing = _float_list(ds, "PixelSpacing", 2, name)
        if np.abs(spacing - spacing0).max() > SPACING_TOL_MM:
            raise DicomError(f"{name!r} has PixelSpacing {spacing.tolist()}, others {spacing0.tolist()}; "
                             "a series must share one pixel spacing")
        if (shape := _matrix(ds, name)) != shape0:
            raise DicomError(f"{name!r} has {shape[0]}x{shape[1]} pixels, others {shape0[0]}x{shape0[1]}")
        positions.append(_float_list(ds, "ImagePositionPatient", 3, name))
    pos = np.stack(positions)
    z = pos @ normal
    order = np.argsort(z, kind="stable")
    z_sorted = z[order]
    gaps = np.diff(z_sorted)
    if len(gaps) and gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise DicomError(
            f"{names[order[i]]!r} and {names[order[i + 1]]!r} lie at the same position "
            f"({z_sorted[i]:.3f} mm along the normal); remove the duplicate slice"
        )
    thickness = _one_number(first, "SliceThickness")
    slice_spacing = float(np.median(gaps)) if len(gaps) else (thickness or 0.0)
    if len(gaps) and np.abs(gaps - slice_spacing).max() > GAP_TOL * slice_spacing:
        j = int(np.argmax(np.abs(gaps - slice_spacing)))
        raise DicomError(
            f"uneven slice spacing: gap of {gaps[j]:.3f} mm after {names[order[j]]!r}, median "
            f"{slice_spacing:.3f} mm; the series has missing slices or mixed reconstructions"
        )
    hu = _hu_volume(datasets, names, order, shape0)
    return CTSeries(
        hu=hu,
        z_mm=z_sorted,
        positions=pos[order],
        orientation=orient0,
        pixel_spacing=(float(spacing0[0]), float(spacing0[1])),
        slice_spacing=slice_spacing,
        slice_thickness=thickness,
        sop_uids=tuple(header.text(datasets[i], "SOPInstanceUID") for i in order),
        series_uid=next(iter(series)),
        frame_of_reference_uid=header.text(first, "FrameOfReferenceUID"),
        manufacturer=str(first.get("Manufacturer", "")),
    )


def _hu_volume(datasets: Sequence[Dataset], names: Sequence[str], order: np.ndarray,
               shape: tuple[int, int]) -> np.ndarray:
    """The slices ``order`` of a series in HU, ``(Z, rows, columns)`` float32, filled in place (a stack
    of per-slice arrays would hold the volume twice: 0.6 GB more for a 580-slice thin-slice CT)."""
    hu = np.empty((len(order), *shape), dtype=np.float32)
    for k, i in enumerate(order):
        to_hu(datasets[i], names[i], out=hu[k])
    return hu


def read_ct_series(paths: Sequence[str | Path]) -> CTSeries:
    """Read the files of one CT series (any order) into a :class:`CTSeries`; errors as :func:`ct_series`."""
    datasets = [read_dicom(p) for p in paths]
    return ct_series(datasets, [str(p) for p in paths])


def referenced_series_uids(seg: Dataset) -> set[str]:
    """SeriesInstanceUIDs a SEG says it was derived from (ReferencedSeriesSequence)."""
    items = raw_items(seg, "ReferencedSeriesSequence") or seg.get("ReferencedSeriesSequence", [])
    return {str(item.get("SeriesInstanceUID", "")) for item in items}


def segmentation_mask(seg_ds: Dataset, series: CTSeries, name: str = "SEG",
                      segment_numbers: Sequence[int] | None = None) -> np.ndarray:
    """The tumour mask of a SEG on the grid of ``series``: uint8 ``(Z, rows, columns)`` of 0/1.

    Segments ``segment_numbers`` (default: all) are combined. Frames are placed by the CT
    instance they reference; a SEG without per-frame references is placed by frame position.

    Raises:
        SegmentationError: not a SEG, references another series, frames that match no slice of
            ``series``, a matrix size that differs from the CT, or an empty mask.
    """
    import highdicom as hd

    if str(seg_ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise SegmentationError(
            f"{name!r} has SOPClassUID {str(seg_ds.get('SOPClassUID', ''))!r}; expected a DICOM SEG "
            f"({SEGMENTATION_STORAGE}) in the patient's seg/ folder"
        )
    refs = referenced_series_uids(seg_ds)
    if refs and series.series_uid not in refs:
        raise SegmentationError(
            f"{name!r} references series {sorted(refs)}, not the CT series {series.series_uid}; "
            "export the SEG against this CT series"
        )
    if (int(seg_ds.Rows), int(seg_ds.Columns)) != series.hu.shape[1:]:
        raise SegmentationError(
            f"{name!r} has {seg_ds.Rows}x{seg_ds.Columns} pixels per frame, the CT "
            f"{series.hu.shape[1]}x{series.hu.shape[2]}; expected the CT's matrix"
        )
    direct = _frames_by_source_instance(seg_ds, segment_numbers)
    if direct is not None:
        source, frames = direct
    else:
        try:
            seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
            numbers = list(segment_numbers) if segment_numbers is not None else list(seg.segment_numbers)
            source = [(se, sop) for _, se, sop in seg.get_source_image_uids()]
        except (ValueError, AttributeError, KeyError, TypeError, IndexError, NotImplementedError) as exc:
            raise SegmentationError(f"{name!r} is not a readable DICOM SEG ({type(exc).__name__}: {exc})") from None
    mask = np.zeros(series.hu.shape, dtype=np.uint8)
    other_series = sorted({se for se, _ in source if se != series.series_uid})
    if other_series:
        raise SegmentationError(
            f"{name!r} has frames derived from series {other_series}, not the CT series "
            f"{series.series_uid}; export the SEG against this CT series"
        )
    sop_uids = [sop for _, sop in source]
    if sop_uids:
        missing = [u for u in sop_uids if series.index_of(u) is None]
        if missing:
            raise SegmentationError(
                f"{name!r} references {len(missing)} CT instance(s) not in the series (e.g. {missing[0]}); "
                "the CT series is incomplete or the SEG belongs to another series"
            )
        if direct is None:
            try:
                frames = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=sop_uids, segment_numbers=numbers, combine_segments=True,
                    skip_overlap_checks=True)
            except (ValueError, KeyError, IndexError, RuntimeError, TypeError, AttributeError) as exc:
                raise SegmentationError(f"{name!r}: frames cannot be mapped to the CT ({exc})") from None
        for uid, frame in zip(sop_uids, frames):
            mask[series.index_of(uid)] |= (np.asarray(frame) > 0).astype(np.uint8)
    else:
        _place_by_position(seg_ds, series, mask, name, set(numbers))
    if not mask.any():
        raise SegmentationError(f"{name!r} holds an empty tumour mask; expected at least one tumour pixel")
    return mask


def _frames_by_source_instance(seg_ds: Dataset, segment_numbers: Sequence[int] | None
                               ) -> tuple[list[tuple[str, str]], np.ndarray] | None:
    """The common SEG read with pydicom alone: ``([(series UID, SOP instance UID) per frame], frames
    (F, rows, columns))``, the frames of unselected segments zeroed. Only for BINARY or FRACTIONAL
    SEGs whose every frame is derived from exactly one source instance and names one segment (in
    its own functional groups, or in the shared ones for a one-segment SEG). None for anything else
    (highdicom reads it instead) and when anything on the way fails, so that a malformed SEG gets
    the highdicom path's errors.

    highdicom builds lookup tables over every frame first (10 ms a SEG against under 1 ms this
    way, a tenth of a small patient's ingest); for this layout both give the same mask
    (``tests/unit/data/test_dicom.py``)."""
    try:
        if str(seg_ds.get("SegmentationType", "")) not in ("BINARY", "FRACTIONAL"):
            return None
        # the functional groups parsed from their bytes when still raw (rgops.data.rawseq): pydicom
        # would build a Dataset per item, several per frame
        groups = raw_items(seg_ds, "PerFrameFunctionalGroupsSequence") or seg_ds.get("PerFrameFunctionalGroupsSequence")
        series_uids = referenced_series_uids(seg_ds)
        if not groups or len(series_uids) != 1:
            return None
        series_uid = next(iter(series_uids))
        shared = (raw_items(seg_ds, "SharedFunctionalGroupsSequence") or seg_ds.get("SharedFunctionalGroupsSequence")
                  or [Dataset()])[0]
        source, numbers = [], []
        for fg in groups:
            derivation = fg.get("DerivationImageSequence")
            ident = fg.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
            if not derivation or len(derivation) != 1 or not ident or len(ident) != 1:
                return None
            images = derivation[0].get("SourceImageSequence")
            if not images or len(images) != 1 or "ReferencedFrameNumber" in images[0]:
                return None
            source.append((series_uid, str(images[0].ReferencedSOPInstanceUID)))
            numbers.append(int(ident[0].ReferencedSegmentNumber))
        frames = decode_pixels(seg_ds, "SEG")
        if frames.ndim == 2:
            frames = frames[None]
        if len(frames) != len(source):
            return None
        if segment_numbers is not None:
            frames = np.where(np.isin(numbers, list(segment_numbers))[:, None, None], frames, 0)
    except Exception:  # noqa: BLE001  any trouble on the way: highdicom's path decides, with its own errors
        return None
    return source, frames


def _place_by_position(seg_ds: Dataset, series: CTSeries, mask: np.ndarray, name: str,
                       numbers: set[int]) -> None:
    """Fallback for SEGs without source references: match frames to slices by position."""
    normal = np.cross(series.orientation[:3], series.orientation[3:])
    pixels = decode_pixels(seg_ds, name)
    if pixels.ndim == 2:
        pixels = pixels[None]
    tol = max(series.slice_spacing, 1e-3) / 2
    shared = (seg_ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    for i, fg in enumerate(seg_ds.get("PerFrameFunctionalGroupsSequence", [])):
        try:
            ident = fg.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
            number = int(ident[0].ReferencedSegmentNumber)
            ipp = np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        except (AttributeError, IndexError) as exc:
            raise SegmentationError(f"{name!r} frame {i + 1} lacks its segment number or position ({exc}); "
                                    "re-export the SEG with source references") from None
        if number not in numbers:
            continue
        k = int(np.argmin(np.abs(series.z_mm - ipp @ normal)))
        if abs(series.z_mm[k] - ipp @ normal) > tol:
            raise SegmentationError(
                f"{name!r} frame {i + 1} lies at {ipp @ normal:.2f} mm along the normal, no CT slice within "
                f"{tol:.2f} mm; the SEG does not belong to this series"
            )
        mask[k] |= (pixels[i] > 0).astype(np.uint8)
