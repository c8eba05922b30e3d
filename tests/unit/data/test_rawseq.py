"""Sequences parsed from and encoded to their bytes (rgops.data.rawseq) read as pydicom reads them."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
import rg_dicom_factory as f
from pydicom.dataelem import RawDataElement
from pydicom.uid import ImplicitVRLittleEndian

from rgops.data.rawseq import RawItem, RawSequenceError, encode, parse, raw_items, replaced


def _seg_file(tmp_path: Path, implicit: bool) -> Path:
    mask = f.tumour_mask((5, 32, 32), (2, 16, 16), 4)
    seg = f.seg_for(f.ct_slices("R01-011", n_slices=5, mask=mask), mask)
    path = tmp_path / ("implicit.dcm" if implicit else "explicit.dcm")
    if implicit:
        seg.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    seg.save_as(path, enforce_file_format=True)
    return path


def _raw_sequences(ds: pydicom.Dataset) -> list[tuple[int, RawDataElement]]:
    out = [(int(t), e) for t, e in ds.items() if isinstance(e, RawDataElement)
           and (e.VR == "SQ" or (e.VR is None and pydicom.datadict.dictionary_VR(t) == "SQ"))]
    assert out, "the file has no sequence left raw by pydicom: nothing is tested"
    return out


@pytest.mark.parametrize("implicit", [False, True])
def test_parse_then_encode_reads_back_as_the_original(tmp_path, implicit) -> None:
    path = _seg_file(tmp_path, implicit)
    original, rewritten = pydicom.dcmread(path), pydicom.dcmread(path)
    for tag, elem in _raw_sequences(rewritten):
        items = parse(elem.value, elem.is_implicit_VR)
        assert all(isinstance(item, RawItem) for item in items)
        rewritten[tag] = replaced(elem, items)
    for tag, _ in _raw_sequences(original):
        want = original[tag].to_json_dict(None, None)
        assert rewritten[tag].to_json_dict(None, None) == want, pydicom.datadict.keyword_for_tag(tag)
    # and pydicom writes the rewritten dataset as a file it reads back the same
    rewritten.save_as(tmp_path / "again.dcm", enforce_file_format=True)
    again = pydicom.dcmread(tmp_path / "again.dcm")
    assert again.to_json_dict() == original.to_json_dict()


def test_items_answer_the_seg_reads_questions(tmp_path) -> None:
    path = _seg_file(tmp_path, implicit=False)
    groups = raw_items(pydicom.dcmread(path), "PerFrameFunctionalGroupsSequence")
    decoded = pydicom.dcmread(path).PerFrameFunctionalGroupsSequence
    assert groups is not None and len(groups) == len(decoded) > 0
    for raw, dec in zip(groups, decoded):
        source = raw.get("DerivationImageSequence")[0].get("SourceImageSequence")[0]
        want = dec.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == want.ReferencedSOPInstanceUID
        assert ("ReferencedFrameNumber" in source) == ("ReferencedFrameNumber" in want)
        assert ("SegmentIdentificationSequence" in raw) == ("SegmentIdentificationSequence" in dec)
        assert raw.PlanePositionSequence[0].ImagePositionPatient == [str(v) for v in
                                                                    dec.PlanePositionSequence[0].ImagePositionPatient]
    shared = raw_items(pydicom.dcmread(path), "SharedFunctionalGroupsSequence")
    assert shared[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1  # US read as an int
    assert groups[0].get("NoSuchKeyword", "absent") == "absent" and "PatientName" not in groups[0]
    with pytest.raises(AttributeError):
        _ = groups[0].PatientName
    decoded_ds = pydicom.dcmread(path)
    _ = decoded_ds.PerFrameFunctionalGroupsSequence
    assert raw_items(decoded_ds, "PerFrameFunctionalGroupsSequence") is None  # already decoded: pydicom's


def _item(body: bytes, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _explicit(group: int, element: int, vr: str, value: bytes) -> bytes:
    if vr in ("SQ", "UN", "OB"):
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def test_undefined_lengths_are_read_and_written_defined() -> None:
    uid = b"1.2.3.4\0"
    nested = struct.pack("<HH2s2xI", 0x0008, 0x2112, b"SQ", 0xFFFFFFFF) + _item(
        _explicit(0x0008, 0x1155, "UI", uid), undefined=True) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    data = _item(nested + _explicit(0x0062, 0x000B, "US", struct.pack("<H", 7)), undefined=True)
    items = parse(data, implicit=False)
    assert items[0].SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert items[0].ReferencedSegmentNumber == 7
    again = parse(encode(items, implicit=False), implicit=False)
    assert again[0].SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert b"\xff\xff\xff\xff" not in encode(items, implicit=False)


@pytest.mark.parametrize("data, why", [
    (_item(_explicit(0x0008, 0x1155, "UI", b"1.2.3.4\0"))[:-3], "truncated"),
    (_explicit(0x0008, 0x1155, "UI", b"1.2.3.4\0"), "an element where an item belongs"),
    (_item(_explicit(0x0008, 0x1115, "UN", _item(b""))), "a known sequence encoded as UN"),
    (_item(struct.pack("<HH2sH", 0x0008, 0x1155, b"\x01\x02", 0)), "no valid VR"),
    (_item(b"", undefined=True)[:-8], "an item of undefined length without its delimiter"),
    (_item(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)), "encapsulated pixel data"),
])
def test_malformed_bytes_are_refused(data, why) -> None:
    with pytest.raises(RawSequenceError):
        parse(data, implicit=False)
