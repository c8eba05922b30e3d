"""Reading the bytes a client uploads: ``.npy`` arrays, DICOM files and zips of them.

This is the input boundary for files: every limit of :class:`~rgops.serving.config.UploadLimits`
is checked here *before* the work it bounds (a zip's members are counted before one is read and
decompressed in chunks against a byte budget; a ``.npy`` header's shape is checked before the
array is allocated; a DICOM header's frames x rows x columns before pixel data is decoded), and
every parser error on client bytes becomes a typed :class:`~rgops.errors.RgopsError` naming the
file (by position: client file names are neither echoed nor logged) and the attribute.
"""

from __future__ import annotations

import io
import logging
import lzma
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rgops.data.media import is_dicomdir, media_members
from rgops.errors import DicomDecodeError, DicomError, LimitExceeded, RgopsError, ShapeError
from rgops.serving.config import MIB, UploadLimits
from rgops.serving.extract import check_patches

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
#: Compression methods Python's zipfile reads: stored, deflate, bzip2, LZMA (implode, AES: refused).
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
               zipfile.ZIP_LZMA: "lzma"}
CHUNK = 1 << 20

Upload = bytes | Path


def _head(data: Upload, n: int) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data[:n])
    with open(data, "rb") as fh:
        return fh.read(n)


def _size(data: Upload) -> int:
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.stat().st_size


def _open(data: Upload) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else open(data, "rb")


def is_npy(data: Upload) -> bool:
    """Whether an upload is a NumPy ``.npy`` file (ready patches or a mask) rather than DICOM."""
    return _head(data, 6) == NPY_MAGIC


def _load_npy(data: Upload, what: str, max_items: int) -> np.ndarray:
    """A numeric ``.npy`` whose header is checked first: a shape of more than ``max_items`` values is
    refused before anything is allocated, and the file must hold the bytes its header promises."""
    try:
        with _open(data) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh, max_header_size=10000)
            items = math.prod(shape)
            if dtype.hasobject or dtype.kind not in "biuf":
                raise ShapeError(f"the .npy {what} has dtype {dtype}; send a numeric array (object arrays are "
                                 "refused, never unpickled)")
            if items > max_items:
                raise LimitExceeded(f"the .npy {what} header declares shape {tuple(shape)} ({items} values); at "
                                    f"most {max_items} values are accepted (serve.max_patches / serve.max_side)")
            if _size(data) - fh.tell() < items * dtype.itemsize:
                raise ShapeError(f"the .npy {what} holds fewer bytes than its header's shape {tuple(shape)} "
                                 "needs; the upload was truncated, send it again")
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
    except (ShapeError, LimitExceeded):
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: numpy's header parser raises even tokenize errors
        raise ShapeError(f"the .npy {what} cannot be read ({type(exc).__name__}); send a numeric array saved "
                         "with numpy.save (object arrays are refused)") from None


def read_npy_patches(data: Upload, size: int, max_patches: int) -> np.ndarray:
    """Ready patches uploaded as a ``.npy`` file -> checked float32 ``(B, 1, S, S)``.

    Raises:
        ShapeError: not a readable numeric ``.npy`` or out of contract (see :func:`check_patches`).
        LimitExceeded: more than ``max_patches`` patches (checked on the header, before loading).
    """
    arr = _load_npy(data, "patches", max_patches * size * size)
    patches = check_patches(arr, size)
    if len(patches) > max_patches:
        raise LimitExceeded(f"the .npy holds {len(patches)} patches; at most {max_patches} per request "
                            "(serve.max_patches)")
    return patches


def read_npy_mask(arrays: Sequence[Upload], max_side: int = 4096) -> np.ndarray:
    """The one tumour mask ``(rows, columns)`` uploaded as ``.npy`` beside a single CT slice.

    Raises:
        ShapeError: more than one array, not 2-D, not numeric, or empty (no tumour pixel).
    """
    if len(arrays) != 1:
        raise ShapeError(f"{len(arrays)} .npy files uploaded with DICOM; send one tumour mask (rows, columns)")
    mask = _load_npy(arrays[0], "tumour mask", max_side * max_side)
    if mask.ndim != 2 or mask.dtype.kind not in "biuf" or not np.any(mask):
        raise ShapeError(f"tumour mask has shape {mask.shape} and dtype {mask.dtype}; expected a numeric 2-D "
                         "array on the CT slice's grid with at least one non-zero (tumour) pixel")
    return mask


class _Budget:
    """Decompressed bytes left to the zips of one request."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise LimitExceeded(f"the zips of this request expand to more than {self.limit} bytes (serve."
                                "max_decompressed_mb); send fewer files per request, or the files unzipped")


Opener = Callable[[], BinaryIO]
#: The most bytes read to find a header's end (the pixel data start): a SEG with a few hundred frames
#: has a header of some 100 KB, an enhanced multi-frame CT of 500 frames about 0.5 MB.
HEADER_BYTES = 2 * MIB


def read_dicom_upload(files: Sequence[tuple[str, Upload]], limits: UploadLimits) -> list[Any]:
    """Uploaded files (DICOM files and/or zips of them) -> pydicom datasets, pixel data included.

    Each file's header is read and checked (:func:`check_dataset`) before its pixel data, and a
    file is never read past what its header declares, so neither a zip bomb nor a header that
    declares 100,000 frames makes the server allocate more than the limits allow.

    Raises:
        DicomError: nothing uploaded, a zip that cannot be read, a file that is not DICOM (truncated
            uploads land here: the message names the file's position) or whose header does not hold.
        DicomDecodeError: a transfer syntax that is not DICOM's.
        LimitExceeded: a limit of ``limits`` is exceeded.
    """
    state = {"files": 0, "voxels": 0}
    budget = _Budget(limits.max_decompressed_bytes)
    datasets: list[Any] = []
    for k, (name, data) in enumerate(files):
        if _head(data, 4) == ZIP_MAGIC or (name or "").lower().endswith(".zip"):
            datasets += _read_zip(data, f"upload {k + 1}", limits, budget, state)
        else:
            datasets.append(_read_counted(f"file {state['files'] + 1}", lambda d=data: _open(d), limits, None, state))
    datasets = [ds for ds in datasets if ds is not None]  # DICOMDIRs and non-image objects skipped
    if not datasets:
        raise DicomError("no files uploaded; send the CT series and its SEG (or a zip of them)")
    return datasets


def _read_zip(data: Upload, where: str, limits: UploadLimits, budget: _Budget, state: dict[str, int]) -> list[Any]:
    out: list[Any] = []
    try:
        with _open(data) as raw, zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_zip_members:
                raise LimitExceeded(f"{where} lists {len(infos)} entries; at most {limits.max_zip_members} "
                                    "(serve.max_zip_members)")
            members = [m for m in infos if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
            # media (a CD export, Orthanc's "media" archive): read exactly the files its DICOMDIR lists
            listed = set(media_members([m.filename for m in members],
                                       lambda n: _read_capped(lambda: zf.open(n), HEADER_BYTES, budget) or b""))
            members = [m for m in members if m.filename in listed]
            if state["files"] + len(members) > limits.max_files:
                raise LimitExceeded(f"{where} holds {len(members)} files; at most {limits.max_files} files per "
                                    "request (serve.max_files); split the upload")
            for i, m in enumerate(members):
                label = f"{where} member {i + 1}"
                if m.flag_bits & 0x1:
                    raise DicomError(f"{label} is encrypted; send an unencrypted zip (or the files themselves)")
                if m.compress_type not in ZIP_METHODS:
                    raise DicomError(f"{label} uses zip compression method {m.compress_type}; accepted are "
                                     f"{sorted(ZIP_METHODS.values())}: re-zip it with deflate")
                out.append(_read_counted(label, lambda m=m: zf.open(m), limits, budget, state))
    except RgopsError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError, zlib.error, lzma.LZMAError, KeyError, TypeError) as exc:
        raise DicomError(f"{where} is not a readable zip ({type(exc).__name__}); send a complete zip of DICOM "
                         "files, or the files themselves") from None
    return out


def _read_counted(where: str, opener: Opener, limits: UploadLimits, budget: _Budget | None,
                  state: dict[str, int]) -> Any:
    state["files"] += 1
    if state["files"] > limits.max_files:
        raise LimitExceeded(f"more than {limits.max_files} files uploaded; at most {limits.max_files} per request "
                            "(serve.max_files); split the upload")
    ds, voxels = _read_dicom(where, opener, limits, budget)
    state["voxels"] += voxels
    if state["voxels"] > limits.max_voxels:
        raise LimitExceeded(f"the DICOM of this request declares {state['voxels']} pixels (frames x rows x "
                            f"columns) so far; at most {limits.max_voxels} (serve.max_voxels); send one series "
                            "per request")
    return ds


def _read_capped(opener: Opener, cap: int, budget: _Budget | None) -> bytes | None:
    """At most ``cap`` bytes from a fresh stream (None when there are more), counted against ``budget``."""
    buf = bytearray()
    with opener() as fh:
        while chunk := fh.read(min(CHUNK, cap + 1 - len(buf))):
            if budget is not None:
                budget.take(len(chunk))
            buf += chunk
            if len(buf) > cap:
                return None
    return bytes(buf)


def _read_dicom(where: str, opener: Opener, limits: UploadLimits, budget: _Budget | None) -> tuple[Any, int]:
    """One DICOM file: header read and checked, then the file read no further than the header declares."""
    head = _first(opener, HEADER_BYTES + 1)
    if budget is not None:
        budget.take(len(head))
    if len(head) < 140 or head[128:132] != b"DICM" or head[132:134] != b"\x02\x00":
        raise DicomError(f"{where} is not a DICOM Part 10 file (no 'DICM' prefix followed by the file meta "
                         "group); send .dcm files with the 128-byte preamble, 'DICM' and the file meta")
    header = _dcmread(head, where, stop_before_pixels=True)
    if _skipped(header, where):
        return None, 0
    voxels, pixel_bytes = check_header(header, where, limits)
    data: bytes | None = head
    if len(head) > HEADER_BYTES:
        data = _read_capped(opener, HEADER_BYTES + pixel_bytes + MIB, budget)
    if data is None:
        raise LimitExceeded(f"{where} holds more bytes than its header's {pixel_bytes} bytes of pixel data "
                            "explain; send the file as exported")
    ds = _dcmread(data, where, stop_before_pixels=False)
    check_dataset(ds, where, limits)
    return ds, voxels


#: SOP classes without pixel data that a study may hold: SR (and KO), presentation states, RT
#: structure sets and plans, encapsulated documents. Anything else without pixels was truncated.
NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                      "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.104.")
RT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.1"


def _skipped(header: Any, where: str) -> bool:
    """A DICOMDIR (a media index) or a non-image object of a study (an SR, a presentation state): not
    an error, not an instance to extract from; logged and skipped."""
    if is_dicomdir(header):
        log.info("%s is a DICOMDIR (media index); not an instance, skipped", where)
        return True
    sop = str(header.get("SOPClassUID", ""))
    if sop.startswith(NON_IMAGE_PREFIXES) and sop != RT_IMAGE_STORAGE and "Rows" not in header:
        log.info("%s is a non-image object (Modality %s); skipped", where, str(header.get("Modality", "?"))[:16])
        return True
    return False


def _first(opener: Opener, n: int) -> bytes:
    with opener() as fh:
        return fh.read(n)


def _dcmread(data: bytes, where: str, stop_before_pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise DicomError(f"{where} ({len(data)} bytes) is not a DICOM Part 10 file; send .dcm files "
                         "with the 128-byte preamble and 'DICM' prefix") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is the client's
        raise DicomError(f"{where} ({len(data)} bytes) could not be parsed as DICOM "
                         f"({type(exc).__name__}); the upload may be truncated, send it again") from None
    # The dataset keeps the stream it was read from (the whole file) and a deep copy copies it: drop
    # it, every element has been read (a 300 MB study otherwise held, then copied, twice more).
    ds.buffer = None
    return ds


def _parse_all(ds: Any, where: str) -> None:
    """Convert every element (sequences included), so a corrupt one is named here, not deep in a library."""
    from pydicom.datadict import keyword_for_tag

    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            items = list(elem.value) if elem.VR == "SQ" else ()
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any conversion failure is the client's
            raise DicomError(f"{where}: element {tag} ({keyword_for_tag(tag) or 'unknown'}) cannot be parsed "
                             f"({type(exc).__name__}); the file is corrupt: re-export it") from None
        for item in items:
            _parse_all(item, where)


def _int_attr(ds: Any, keyword: str, where: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        if value is None or value == "":
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        what = "missing (the upload may be truncated)" if value is None else "not an integer"
        raise DicomError(f"{where}: {keyword} is {what}; an image needs Rows, Columns and BitsAllocated as "
                         "integers: send the complete file, re-exported") from None


def check_header(ds: Any, where: str, limits: UploadLimits) -> tuple[int, int]:
    """The image attributes of one file's header; returns the pixels (frames x rows x columns x
    samples) and the bytes of uncompressed pixel data it declares.

    Raises:
        DicomError: a missing or non-integer image attribute, or values no image has.
        DicomDecodeError: a TransferSyntaxUID that is not a DICOM transfer syntax.
        LimitExceeded: a frame larger than ``max_side`` or more pixels than ``max_voxels``.
    """
    from pydicom.uid import AllTransferSyntaxes

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts not in AllTransferSyntaxes:
        raise DicomDecodeError(f"{where} declares TransferSyntaxUID {ts[:64]!r}, which is not a DICOM transfer "
                               "syntax; re-export the file (explicit VR little endian is always read)")
    rows, cols = _int_attr(ds, "Rows", where), _int_attr(ds, "Columns", where)
    bits = _int_attr(ds, "BitsAllocated", where)
    frames = _int_attr(ds, "NumberOfFrames", where, default=1)
    samples = _int_attr(ds, "SamplesPerPixel", where, default=1)
    if not (1 <= rows <= limits.max_side and 1 <= cols <= limits.max_side):
        raise LimitExceeded(f"{where} has frames of {rows} x {cols} pixels; at most {limits.max_side} per side "
                            "(serve.max_side)")
    if bits not in (1, 8, 16, 32, 64) or samples not in (1, 3) or frames < 1:
        raise DicomError(f"{where} has BitsAllocated {bits}, SamplesPerPixel {samples}, NumberOfFrames {frames}; "
                         "expected 1/8/16/32/64 bits, 1 or 3 samples and at least one frame")
    voxels = rows * cols * frames * samples
    if voxels > limits.max_voxels:
        raise LimitExceeded(f"{where} declares {frames} frame(s) of {rows} x {cols} pixels ({voxels}); at most "
                            f"{limits.max_voxels} pixels per request (serve.max_voxels)")
    return voxels, (voxels * bits + 7) // 8


def check_retrieved(datasets: Sequence[Any], limits: UploadLimits, source: str = "the PACS") -> None:
    """The per-file checks of an upload (:func:`check_dataset`), on instances retrieved from a PACS:
    a PACS stores what it was sent, so a corrupt or oversized instance gets the same typed refusal
    as in an upload, naming the instance, and the study's pixels are bounded like one request's.

    Raises:
        DicomError, DicomDecodeError, LimitExceeded: as :func:`check_dataset`, or more pixels in the
            study than ``max_voxels``.
    """
    voxels = 0
    for i, ds in enumerate(datasets):
        where = f"instance {i + 1} of {len(datasets)} from {source}"
        check_dataset(ds, where, limits)
        voxels += check_header(ds, where, limits)[0]
        if voxels > limits.max_voxels:
            raise LimitExceeded(f"the retrieved series declare {voxels} pixels (frames x rows x columns) by {where}; "
                                f"at most {limits.max_voxels} per request (serve.max_voxels): choose the series with "
                                "series_uid, or raise the limit")


def check_dataset(ds: Any, where: str, limits: UploadLimits) -> None:
    """The checks of one whole file: every element parses, pixel data is there and, uncompressed,
    as long as the header promises.

    Raises:
        DicomError: a corrupt element, no pixel data, or truncated pixel data.
    """
    from pydicom.uid import UID

    _parse_all(ds, where)
    if "PixelData" not in ds:
        raise DicomError(f"{where} has no pixel data: the upload was truncated or it is not an image; send the "
                         "complete CT and SEG files")
    _, expected = check_header(ds, where, limits)
    if not UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed and len(ds.PixelData) < expected:
        raise DicomError(f"{where} has {len(ds.PixelData)} bytes of pixel data, its header promises "
                         f"{expected}: the upload was truncated; send the complete file again")
