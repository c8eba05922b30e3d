"""Reading the bytes a client uploads: ``.npy`` arrays, DICOM files and zips of them."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from rgops.data.media import is_dicomdir, media_members
from rgops.errors import DicomError, ShapeError
from rgops.serving.extract import check_patches

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"


def is_npy(data: bytes) -> bool:
    """Whether an upload is a NumPy ``.npy`` file (ready patches) rather than DICOM."""
    return data[:6] == NPY_MAGIC


def read_npy_patches(data: bytes, size: int, max_patches: int) -> np.ndarray:
    """Ready patches uploaded as a ``.npy`` file -> checked float32 ``(B, 1, S, S)``.

    Loaded with ``allow_pickle=False``: an object array is refused, never unpickled.

    Raises:
        ShapeError: not a readable numeric ``.npy``, more than ``max_patches`` patches, or out of
            contract (see :func:`check_patches`).
    """
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShapeError(f"the .npy upload cannot be read ({exc}); send a numeric array saved with numpy.save "
                         "(object arrays are refused)") from None
    patches = check_patches(arr, size)
    if len(patches) > max_patches:
        raise ShapeError(f"the .npy holds {len(patches)} patches; at most {max_patches} per request")
    return patches


def read_npy_mask(arrays: Sequence[bytes]) -> np.ndarray:
    """The one tumour mask ``(rows, columns)`` uploaded as ``.npy`` beside a single CT slice.

    Raises:
        ShapeError: more than one array, not 2-D, not numeric, or empty (no tumour pixel).
    """
    if len(arrays) != 1:
        raise ShapeError(f"{len(arrays)} .npy files uploaded with DICOM; send one tumour mask (rows, columns)")
    try:
        mask = np.load(io.BytesIO(arrays[0]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShapeError(f"the .npy tumour mask cannot be read ({exc}); save a numeric 2-D array with numpy.save") from None
    if mask.ndim != 2 or mask.dtype.kind not in "biuf" or not np.any(mask):
        raise ShapeError(f"tumour mask has shape {mask.shape} and dtype {mask.dtype}; expected a numeric 2-D "
                         "array on the CT slice's grid with at least one non-zero (tumour) pixel")
    return mask


def read_dicom_upload(files: Sequence[tuple[str, bytes]], max_files: int) -> list[Any]:
    """Uploaded files (DICOM files and/or zips of them) -> pydicom datasets, pixel data included.

    Raises:
        DicomError: nothing uploaded, too many files, a zip that cannot be read, or a file that is
            not DICOM (truncated uploads land here: the message names the file's position).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    blobs: list[tuple[str, bytes]] = []
    for name, data in files:
        if data[:4] == b"PK\x03\x04" or (name or "").lower().endswith(".zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
                    # media (a CD export, Orthanc's "media" archive): read the files its DICOMDIR lists
                    listed = set(media_members([m.filename for m in members], zf.read))
                    members = [m for m in members if m.filename in listed]
                    if len(blobs) + len(members) > max_files:
                        raise DicomError(f"the zip holds {len(members)} files; at most {max_files} files per "
                                         "request are accepted; split the upload")
                    blobs += [(f"zip member {i + 1}", zf.read(m)) for i, m in enumerate(members)]
            except DicomError:
                raise
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
                raise DicomError(f"upload {len(blobs) + 1} is not a readable zip ({exc}); "
                                 "send a complete zip of DICOM files, or the files themselves") from None
        else:
            blobs.append((f"file {len(blobs) + 1}", data))
        if len(blobs) > max_files:
            raise DicomError(f"{len(blobs)} files uploaded; at most {max_files} per request; split the upload")
    if not blobs:
        raise DicomError("no files uploaded; send the CT series and its SEG (or a zip of them)")
    datasets = []
    for where, data in blobs:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except InvalidDicomError:
            raise DicomError(f"{where} ({len(data)} bytes) is not a DICOM Part 10 file; send .dcm files "
                             "with the 128-byte preamble and 'DICM' prefix") from None
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is the client's
            raise DicomError(f"{where} ({len(data)} bytes) could not be parsed as DICOM "
                             f"({type(exc).__name__}); the upload may be truncated, send it again") from None
        if is_dicomdir(ds):  # the index of a media folder, not an image
            log.info("%s is a DICOMDIR (media index); not an instance, skipped", where)
            continue
        if "PixelData" not in ds and _is_non_image(ds):  # an SR, a presentation state...: part of a study
            log.info("%s is a non-image object (Modality %s); skipped", where, str(ds.get("Modality", "?"))[:16])
            continue
        if "PixelData" not in ds:
            raise DicomError(f"{where} ({len(data)} bytes) has no pixel data: the upload was truncated or it "
                             "is not an image; send the complete CT and SEG files")
        _check_pixel_length(ds, where)
        datasets.append(ds)
    return datasets


#: SOP classes without pixel data that a study may hold: SR (and KO), presentation states, RT
#: structure sets and plans, encapsulated documents. Anything else without pixels was truncated.
NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                      "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.104.")
RT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.1"


def _is_non_image(ds: Any) -> bool:
    sop = str(ds.get("SOPClassUID", ""))
    return sop.startswith(NON_IMAGE_PREFIXES) and sop != RT_IMAGE_STORAGE


def _check_pixel_length(ds: Any, where: str) -> None:
    """Uncompressed pixel data shorter than its header promises means a truncated upload."""
    if not ds.file_meta.get("TransferSyntaxUID") or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    except (AttributeError, TypeError, ValueError):
        raise DicomError(f"{where} lacks Rows/Columns/BitsAllocated; the file is not a usable image") from None
    expected = (n * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise DicomError(f"{where} has {len(ds.PixelData)} bytes of pixel data, its header promises {expected}: "
                         "the upload was truncated; send the complete file again")
