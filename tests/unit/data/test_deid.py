"""De-identification (PS3.15 basic profile) of CT and SEG headers."""

from __future__ import annotations

import copy

import pydicom
import pytest
import rg_dicom_factory as f
from pydicom.data import get_testdata_file

from rgops.data.deid import ACTIONS, deidentify, find_identifiers
from rgops.data.dicom import ct_series, segmentation_mask
from rgops.data.pseudonym import pseudonymize, pseudonymous_uid
from rgops.errors import DeidentificationError

KEY = b"unit-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def ct_and_seg():
    mask = f.tumour_mask((6, 32, 32), (3, 16, 16), 4)
    slices = f.ct_slices("R01-007", n_slices=6, mask=mask)
    return slices, f.seg_for(slices, mask), mask


def test_planted_identifiers_removed_from_ct(ct_and_seg):
    slices, _, _ = ct_and_seg
    planted = f.planted_strings("R01-007")
    assert find_identifiers(slices[0], planted)  # the checker sees the raw header's PHI
    out = deidentify(slices[0], KEY)
    assert find_identifiers(out, planted) == []
    text = str(out) + repr(out.file_meta)
    for s in planted:
        assert s.lower() not in text.lower(), s
    assert out.PatientID == pseudonymize("R01-007", KEY) == out.PatientName
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not any(e.tag.is_private for e in out)
    assert "PatientBirthDate" in out and out.PatientBirthDate == ""  # Z: emptied, kept
    assert "InstitutionName" not in out and "OtherPatientIDsSequence" not in out  # X: removed


def test_input_left_untouched(ct_and_seg):
    slices, seg, _ = ct_and_seg
    before = slices[1].SOPInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    deidentify(slices[1], KEY)
    deidentify(seg, KEY)
    assert (slices[1].SOPInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == before
    assert slices[1].PatientName == f.PHI["PatientName"]


def test_copy_shares_pixel_data_and_leaves_the_input_whole(ct_and_seg):
    # The copy must not duplicate pixel data: a thin-slice study is 300 MB of it (bench/upload_rss.py).
    slices, seg, _ = ct_and_seg
    for ds in (slices[0], seg):
        before = list(ds.keys())
        out = deidentify(ds, KEY)
        assert out.PixelData is ds.PixelData  # the same immutable bytes, not a copy
        assert list(ds.keys()) == before and ds.PatientID != out.PatientID  # the input is whole and untouched
        assert (out.pixel_array == ds.pixel_array).all()


def test_uids_remapped_consistently_and_seg_still_resolves(ct_and_seg):
    slices, seg, mask = ct_and_seg
    ct = [deidentify(s, KEY) for s in slices]
    dseg = deidentify(seg, KEY)
    assert ct[0].SeriesInstanceUID == pseudonymous_uid(slices[0].SeriesInstanceUID, KEY)
    assert ct[0].StudyInstanceUID == dseg.StudyInstanceUID == pseudonymous_uid(slices[0].StudyInstanceUID, KEY)
    assert ct[0].file_meta.MediaStorageSOPInstanceUID == ct[0].SOPInstanceUID
    assert dseg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert find_identifiers(dseg, f.planted_strings("R01-007")) == []
    assert dseg.ContentCreatorName == "" and dseg.DeviceSerialNumber == ""
    # the de-identified SEG places the same mask on the de-identified CT
    got = segmentation_mask(dseg, ct_series(ct))
    assert (got == mask).all()


def test_real_ct_from_pydicom_is_cleaned():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    found = find_identifiers(ds)
    assert any("private tag" in x for x in found) and any("OtherPatientIDsSequence" in x for x in found)
    out = deidentify(ds, KEY)
    assert find_identifiers(out, [str(ds.PatientName), str(ds.InstitutionName)]) == []
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_overlay_and_curve_groups_removed(ct_and_seg):
    ds = copy.deepcopy(ct_and_seg[0][0])
    ds.add_new(0x60000010, "US", 32)
    ds.add_new(0x60003000, "OW", b"\x00" * 128)
    ds.add_new(0x50000005, "US", 1)
    assert any("curve/overlay" in x for x in find_identifiers(ds))
    out = deidentify(ds, KEY)
    assert not [e for e in out if 0x5000 <= e.tag.group <= 0x60FF]


def test_missing_patient_id_refused():
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    with pytest.raises(DeidentificationError, match="no PatientID"):
        deidentify(ds, KEY)


def test_checker_flags_each_kind_of_leftover(ct_and_seg):
    out = deidentify(ct_and_seg[0][2], KEY)
    out.AccessionNumber = "ACC1"          # Z attribute with a value
    out.InstitutionName = "Somewhere"     # X attribute present
    out.SeriesInstanceUID = "1.2.3.4"     # U attribute not remapped
    out.PatientID = "R01-007"             # not a pseudonym
    found = find_identifiers(out)
    for needle in ("AccessionNumber: not empty", "InstitutionName: present",
                   "SeriesInstanceUID: UID not remapped", "PatientID: not a pseudonym"):
        assert needle in found


def test_table_covers_core_identifiers_of_e1_1():
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "ReferringPhysicianName", "OperatorsName", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "FrameOfReferenceUID", "ImageComments", "OtherPatientIDsSequence",
               "PatientAddress", "StationName", "DeviceSerialNumber", "StudyID"):
        assert kw in ACTIONS, kw


def test_raw_and_decoded_headers_get_the_same_uids(ct_and_seg, tmp_path):
    """Elements still raw after a read (the ingest path) are replaced without decoding; the keyed
    UIDs must be those of the decoded values: trailing NUL padding dropped, multi-valued split."""
    slices, _, _ = ct_and_seg
    ds = copy.deepcopy(slices[0])
    ds.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]  # a multi-valued UI element of the table
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.456"  # odd length: NUL-padded
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = pydicom.dcmread(path)  # elements stay raw bytes until read
    decoded = pydicom.dcmread(path)
    for elem in decoded:  # force every element to its decoded form
        _ = elem.value
    a, b = deidentify(raw, KEY, in_place=True), deidentify(decoded, KEY, in_place=True)
    assert list(a.FailedSOPInstanceUIDList) == [pseudonymous_uid("1.2.3.4", KEY), pseudonymous_uid("1.2.3.5", KEY)]
    assert list(a.FailedSOPInstanceUIDList) == list(b.FailedSOPInstanceUIDList)
    uid = "1.2.3.456"
    assert pydicom.dcmread(path)["SOPInstanceUID"].value == uid  # decoded: the pad is gone
    assert path.read_bytes().count(b"1.2.3.456\0") >= 1  # on disk: padded with a NUL
    assert a.SOPInstanceUID == b.SOPInstanceUID == pseudonymous_uid(uid, KEY)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDate", "PatientName"):
        assert a.get(keyword) == b.get(keyword), keyword
    assert find_identifiers(a) == [] and find_identifiers(b) == []


def _seg_with_nested_phi(ct_and_seg) -> pydicom.Dataset:
    """The SEG with identifiers planted inside its sequences' items, where only a walk of the items finds them."""
    from pydicom.dataset import Dataset

    seg = copy.deepcopy(ct_and_seg[1])
    item = seg.ReferencedSeriesSequence[0]
    item.OperatorsName = "Tech^Ulrike"  # an X attribute in an item
    item.EvaluatorName = "Dr^Philippa^Quartermain"  # a PN the table does not list
    item.StudyDate = "19410317"  # a date in an item
    item.add_new(0x00090010, "LO", "ACME")  # private creator and element in an item
    item.add_new(0x00091001, "LO", "PRIVMRN-424242")
    seg.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].add_new(0x00081040, "LO", "Wolfgang ward")
    extra = Dataset()
    extra.ReferencedSOPInstanceUID = "1.2.3.4.5"
    seg.SegmentSequence[0].ReferencedImageSequence = [extra]  # a UID three levels down
    return seg


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_cleaned_from_bytes_as_when_decoded(ct_and_seg, tmp_path, implicit):
    """A sequence pydicom has not decoded is cleaned from its bytes (rgops.data.rawseq); the result
    must be what cleaning the decoded sequence gives, element for element."""
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import ImplicitVRLittleEndian

    seg = _seg_with_nested_phi(ct_and_seg)
    if implicit:
        seg.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    raw, decoded = pydicom.dcmread(path), pydicom.dcmread(path)
    for elem in decoded.iterall():  # every element and item decoded by pydicom
        _ = elem.value
    a, b = deidentify(raw, KEY, in_place=True), deidentify(decoded, KEY, in_place=True)
    assert isinstance(a.get_item("PerFrameFunctionalGroupsSequence"), RawDataElement)  # the bytes path ran
    assert find_identifiers(a) == []
    assert a.to_json_dict() == b.to_json_dict()
    assert find_identifiers(a, f.planted_strings("R01-007")) == []  # decoded search of every text value
    assert a.SegmentSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == pseudonymous_uid("1.2.3.4.5", KEY)
    got = segmentation_mask(a, ct_series([deidentify(s, KEY) for s in ct_and_seg[0]]))
    assert (got == ct_and_seg[2]).all()


def test_checker_finds_leftovers_inside_raw_sequences(ct_and_seg, tmp_path):
    from pydicom.dataelem import RawDataElement

    path = tmp_path / "seg.dcm"
    _seg_with_nested_phi(ct_and_seg).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    found = find_identifiers(ds)
    assert isinstance(ds.get_item("ReferencedSeriesSequence"), RawDataElement)  # checked without decoding
    for needle in ("ReferencedSeriesSequence[0].OperatorsName: present",
                   "ReferencedSeriesSequence[0].EvaluatorName: person name",
                   "ReferencedSeriesSequence[0].StudyDate: not empty",
                   "ReferencedSeriesSequence[0].(0009,0010): private tag",
                   "ReferencedSeriesSequence[0].SeriesInstanceUID: UID not remapped",
                   "SegmentSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID: UID not remapped"):
        assert needle in found, (needle, found)
