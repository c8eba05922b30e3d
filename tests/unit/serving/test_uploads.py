"""rgops.serving.uploads: every limit and every malformed file becomes a typed error naming the file
(by position) and the attribute, before the work it bounds. Real pydicom files, real zips."""

from __future__ import annotations

import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rgops.errors import DicomDecodeError, DicomError, LimitExceeded, ShapeError
from rgops.serving import patch_from_dicom
from rgops.serving.config import UploadLimits
from rgops.serving.uploads import read_dicom_upload, read_npy_patches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from rg_dicom_factory import ct_slices, seg_for, tumour_mask  # noqa: E402

S = 32
LIMITS = UploadLimits()


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _series() -> list[pydicom.Dataset]:
    mask = tumour_mask((6, S, S), (3.0, 15.0, 17.0), 4.0)
    slices = ct_slices("R01-123", 6, S, mask=mask, seed=1)
    return [*slices, seg_for(slices, mask)]


def _upload(datasets: list[pydicom.Dataset]) -> list[tuple[str, bytes]]:
    return [(f"f{i}.dcm", _bytes(d)) for i, d in enumerate(datasets)]


def _zip(files: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for n, b in files:
            zf.writestr(n, b)
    return buf.getvalue()


def test_a_valid_series_reads_and_cuts() -> None:
    datasets = read_dicom_upload(_upload(_series()), LIMITS)
    from rgops.data.patch import PatchSpec

    patches, prov = patch_from_dicom(datasets, PatchSpec(size=S))
    assert patches.shape[1:] == (1, S, S) and np.isfinite(patches).all() and prov["n_slices"] == 6


@pytest.mark.parametrize("keyword, value, why", [
    ("PixelSpacing", "abc\\0.8", "PixelSpacing"),
    ("PixelSpacing", "0.8", "PixelSpacing has 1 value"),
    ("ImagePositionPatient", "0\\x\\1", "ImagePositionPatient"),
    ("RescaleSlope", "abc", "RescaleSlope"),
    ("RescaleSlope", "NaN", "RescaleSlope is not a finite number"),
    ("RescaleIntercept", "inf", "RescaleIntercept is not a finite number"),
])
def test_bad_numbers_in_a_ct_header_are_named(keyword: str, value: str, why: str) -> None:
    from pydicom.dataelem import RawDataElement

    from rgops.data.patch import PatchSpec

    series = _series()
    tag = series[2][keyword].tag
    raw = value.encode() + (b" " if len(value) % 2 else b"")
    series[2][tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)  # as a client's file holds it
    with pytest.raises(DicomError, match=why):
        patch_from_dicom(read_dicom_upload(_upload(series), LIMITS), PatchSpec(size=S))


def test_unknown_transfer_syntax_and_huge_frames_refused_on_the_header() -> None:
    data = _bytes(_series()[0])
    assert b"1.2.840.10008.1.2.1\0" in data
    bad = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0", 1)
    with pytest.raises(DicomDecodeError, match="not a DICOM transfer syntax"):
        read_dicom_upload([("a", bad)], LIMITS)
    ct = _series()[0]
    ct.NumberOfFrames = 300000  # 32 x 32 x 300,000 > 2^28 pixels
    with pytest.raises(LimitExceeded, match="serve.max_voxels"):
        read_dicom_upload([("a", _bytes(ct))], LIMITS)


def test_corrupt_vr_is_named_by_element() -> None:
    data = bytearray(_bytes(_series()[-1]))  # the SEG
    pos = data.find(b"SQ", 400)
    data[pos:pos + 2] = b"zz"
    with pytest.raises(DicomError, match=r"file 1"):
        read_dicom_upload([("seg", bytes(data))], LIMITS)


def test_zip_limits_and_refusals() -> None:
    files = _upload(_series())
    assert len(read_dicom_upload([("s.zip", _zip(files))], LIMITS)) == len(files)
    with pytest.raises(LimitExceeded, match="max_zip_members"):
        read_dicom_upload([("s.zip", _zip(files))], UploadLimits(max_zip_members=3))
    with pytest.raises(LimitExceeded, match="max_decompressed_mb"):
        read_dicom_upload([("s.zip", _zip(files))], UploadLimits(max_decompressed_bytes=20_000))
    data = bytearray(_zip(files[:1], zipfile.ZIP_STORED))
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(sig) + off] |= 1
    with pytest.raises(DicomError, match="encrypted"):
        read_dicom_upload([("s.zip", bytes(data))], LIMITS)
    data = bytearray(_zip(files[:1], zipfile.ZIP_STORED))
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        data[data.find(sig) + off:data.find(sig) + off + 2] = struct.pack("<H", 99)
    with pytest.raises(DicomError, match="compression method 99"):
        read_dicom_upload([("s.zip", bytes(data))], LIMITS)


def test_zip_bomb_stops_before_memory_grows() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a.dcm", "w", force_zip64=True) as w:
        for _ in range(256):
            w.write(b"\0" * (1 << 20))  # 256 MiB of zeros in ~250 KB
    with pytest.raises(DicomError, match="not a DICOM Part 10 file"):
        read_dicom_upload([("s.zip", buf.getvalue())], LIMITS)


def test_npy_header_that_does_not_parse() -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": ()})
    data = buf.getvalue().replace(b"{", b" ", 1) + b"\0" * 64  # found by the fuzz suite: a tokenize error
    with pytest.raises(ShapeError, match="cannot be read"):
        read_npy_patches(data, S, 256)


def test_npy_header_checked_before_loading() -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (2**38, 1, S, S)})
    with pytest.raises(LimitExceeded, match="header declares shape"):
        read_npy_patches(buf.getvalue() + b"\0" * 64, S, 256)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (4, 1, S, S)})
    with pytest.raises(ShapeError, match="truncated"):
        read_npy_patches(buf.getvalue() + b"\0" * 64, S, 256)


def test_instances_from_a_pacs_get_the_per_file_checks() -> None:
    from rgops.serving.uploads import check_retrieved

    # as dicomweb-client hands them over: parsed datasets, not bytes
    study = [pydicom.dcmread(io.BytesIO(b)) for _, b in _upload(_series())]
    check_retrieved(study, LIMITS)  # a whole, valid study passes
    truncated = [pydicom.dcmread(io.BytesIO(b)) for _, b in _upload(_series())]
    truncated[1].PixelData = truncated[1].PixelData[:100]
    with pytest.raises(DicomError, match=r"instance 2 of 7 from the PACS has 100 bytes of pixel data"):
        check_retrieved(truncated, LIMITS)
    with pytest.raises(LimitExceeded, match=r"serve.max_voxels"):
        check_retrieved(study, UploadLimits(max_voxels=3 * S * S))


def test_read_datasets_do_not_keep_the_file_bytes() -> None:
    # pydicom keeps the stream a dataset was read from; held (and deep-copied by de-identification)
    # for every file of a thin-slice study, it tripled the server's memory (bench/upload_rss.py)
    datasets = read_dicom_upload(_upload(_series()), LIMITS)
    assert all(getattr(ds, "buffer", None) is None for ds in datasets)
    assert datasets[0].pixel_array.shape == (S, S)
