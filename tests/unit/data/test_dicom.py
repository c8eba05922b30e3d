"""Reading CT series (order, HU, consistency checks) and SEG masks."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
import rg_dicom_factory as f
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from rgops.data.dicom import ct_series, decode_pixels, read_ct_series, read_dicom, segmentation_mask, to_hu
from rgops.errors import DicomDecodeError, DicomError, SegmentationError


@pytest.fixture(scope="module")
def case():
    mask = f.tumour_mask((8, 32, 32), (4.2, 14, 18), 4)
    slices = f.ct_slices("R02-001", n_slices=8, mask=mask, seed=3)
    return slices, mask


def test_pydicom_ct_small_read_to_hu():
    path = get_testdata_file("CT_small.dcm")
    series = read_ct_series([path])
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert series.hu.shape == (1, 128, 128)
    assert np.allclose(series.hu[0], expected)
    assert series.pixel_spacing == (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


def test_shuffled_files_sorted_along_normal(case, tmp_path):
    slices, _ = case
    paths = []
    for k, ds in enumerate(slices):
        p = tmp_path / f"{random.Random(k).random():.6f}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    random.Random(1).shuffle(paths)
    series = read_ct_series(paths)
    assert np.all(np.diff(series.z_mm) > 0)
    assert series.sop_uids == tuple(str(s.SOPInstanceUID) for s in slices)
    assert series.slice_spacing == pytest.approx(2.0)
    assert np.allclose(series.hu[3], to_hu(slices[3], "s3"))


def test_slices_sorted_by_normal_not_by_z_for_oblique_stacks(case):
    # feet-first stack: the normal points along -z when the columns run the other way
    slices = [copy.deepcopy(ds) for ds in case[0]]
    for ds in slices:
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    series = ct_series(list(reversed(slices)))
    assert np.all(np.diff(series.z_mm) > 0)
    assert series.sop_uids[0] == slices[-1].SOPInstanceUID


def test_non_ct_modality_refused(case):
    slices = [copy.deepcopy(ds) for ds in case[0]]
    slices[2].Modality = "MR"
    with pytest.raises(DicomError, match="Modality 'MR'"):
        ct_series(slices)


def test_mixed_series_refused(case):
    slices = [copy.deepcopy(ds) for ds in case[0]]
    slices[5].SeriesInstanceUID = "1.2.3.999"
    with pytest.raises(DicomError, match="2 series"):
        ct_series(slices)


def test_inconsistent_orientation_and_spacing_refused(case):
    slices = [copy.deepcopy(ds) for ds in case[0]]
    slices[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(DicomError, match="ImageOrientationPatient"):
        ct_series(slices)
    slices = [copy.deepcopy(ds) for ds in case[0]]
    slices[4].PixelSpacing = [0.7, 0.7]
    with pytest.raises(DicomError, match="PixelSpacing"):
        ct_series(slices)
    slices = [copy.deepcopy(ds) for ds in case[0]]
    del slices[3]  # a missing slice leaves a double gap
    with pytest.raises(DicomError, match="uneven slice spacing"):
        ct_series(slices)


def test_truncated_file_names_the_file(case, tmp_path):
    p = tmp_path / "cut.dcm"
    case[0][0].save_as(p, enforce_file_format=True)
    p.write_bytes(p.read_bytes()[:700])
    with pytest.raises(DicomError, match="cut.dcm"):
        to_hu(read_dicom(p), str(p))
    q = tmp_path / "junk.dcm"
    q.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DicomError, match="junk.dcm"):
        read_dicom(q)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_jpeg2000_ct_decoded_by_installed_plugin(name):
    # Pillow (installed, built with OpenJPEG) decodes JPEG 2000: these real CTs are read, not refused.
    path = get_testdata_file(name)
    series = read_ct_series([path])
    ds = pydicom.dcmread(path)
    assert series.hu.shape == (1, 512, 512)
    assert np.allclose(series.hu[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    soft_tissue = ((series.hu > -100) & (series.hu < 100)).mean()
    assert soft_tissue > 0.01  # a real body, not noise or a wrong sign


def test_transfer_syntax_without_decoder_refused(case):
    ds = copy.deepcopy(case[0][0])
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"])
    with pytest.raises(DicomDecodeError, match=r"JPEG Lossless.*1\.2\.840\.10008\.1\.2\.4\.70.*pylibjpeg-libjpeg"):
        decode_pixels(ds, "compressed.dcm")


def test_partial_seg_reindexed_on_the_series(case):
    slices, mask = case
    seg = f.seg_for(slices, mask)  # tumour slices only
    assert int(seg.NumberOfFrames) < len(slices)
    shuffled = list(slices)
    random.Random(0).shuffle(shuffled)
    got = segmentation_mask(seg, ct_series(shuffled))
    assert got.dtype == np.uint8 and got.shape == mask.shape
    assert (got == mask).all()


def test_seg_placed_by_position_without_source_references(case):
    slices, mask = case
    seg = f.seg_for(slices, mask)
    for fg in seg.PerFrameFunctionalGroupsSequence:
        del fg.DerivationImageSequence
    del seg.ReferencedSeriesSequence
    got = segmentation_mask(seg, ct_series(slices))
    assert (got == mask).all()


def test_seg_of_another_series_refused(case):
    slices, mask = case
    other = f.ct_slices("R02-001", n_slices=8, mask=mask, seed=4)
    seg = f.seg_for(other, mask)
    with pytest.raises(SegmentationError, match="references series"):
        segmentation_mask(seg, ct_series(slices))


def test_ct_passed_as_seg_refused(case):
    with pytest.raises(SegmentationError, match="expected a DICOM SEG"):
        segmentation_mask(case[0][0], ct_series(case[0]))


def _two_segment_seg(slices, masks):
    import highdicom as hd
    from pydicom.uid import generate_uid

    descs = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"s{n}",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n in (1, 2)]
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=np.stack(masks, axis=-1).astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
        series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="m", manufacturer_model_name="m", software_versions="1", device_serial_number="1")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direct_seg_read_matches_highdicom(case, monkeypatch, seed):
    """The pydicom-only read of a plain SEG gives highdicom's mask, for every segment selection."""
    import rgops.data.dicom as dicom

    slices, _ = case
    rng = np.random.default_rng(seed)
    m1 = f.tumour_mask((8, 32, 32), (rng.uniform(2, 6), rng.uniform(10, 22), rng.uniform(10, 22)), 3)
    m2 = f.tumour_mask((8, 32, 32), (rng.uniform(2, 6), rng.uniform(10, 22), rng.uniform(10, 22)), 2)
    seg = _two_segment_seg(slices, [m1, m2])
    series = ct_series(slices)
    assert dicom._frames_by_source_instance(seg, None) is not None  # this SEG takes the direct path
    direct = {numbers: segmentation_mask(seg, series, segment_numbers=numbers) for numbers in (None, (1,), (2,))}
    monkeypatch.setattr(dicom, "_frames_by_source_instance", lambda ds, numbers: None)  # highdicom's path
    for numbers, got in direct.items():
        assert (got == segmentation_mask(seg, series, segment_numbers=numbers)).all(), numbers
    assert (direct[(1,)] == m1).all() and (direct[(2,)] == m2).all() and (direct[None] == (m1 | m2)).all()


def test_direct_seg_read_leaves_unusual_layouts_to_highdicom(case):
    import rgops.data.dicom as dicom

    slices, mask = case
    seg = f.seg_for(slices, mask)
    for change in ("labelmap", "two_sources", "no_ident"):
        odd = copy.deepcopy(seg)
        fg = odd.PerFrameFunctionalGroupsSequence[0]
        if change == "labelmap":
            odd.SegmentationType = "LABELMAP"
        elif change == "two_sources":
            src = fg.DerivationImageSequence[0].SourceImageSequence
            src.append(copy.deepcopy(src[0]))
        else:  # a one-segment SEG names it in the shared groups
            del odd.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        assert dicom._frames_by_source_instance(odd, None) is None, change
    assert dicom._frames_by_source_instance(seg, None) is not None  # the unchanged SEG takes the direct path


@pytest.mark.parametrize("rescale", [(0.5, -1024.3), (1.0, -1024.0), (2.5, None), None, "lut"])
def test_hu_are_pydicom_modality_lut_rounded_once_to_float32(case, rescale):
    """to_hu rescales in place (no slice-sized temporaries) but must give pydicom's values exactly."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut

    ds = copy.deepcopy(case[0][2])
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            del ds[keyword]
    if rescale == "lut":
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.add_new(0x00283006, "US", list(range(0, 4096 * 3, 3)))  # LUTData
        ds.ModalityLUTSequence = [item]
    elif rescale is not None:
        ds.RescaleSlope = rescale[0]
        if rescale[1] is not None:
            ds.RescaleIntercept = rescale[1]
    want = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    got = to_hu(ds, "s2")
    assert got.dtype == np.float32 and np.array_equal(got, want)
    out = np.full((2, *want.shape), np.nan, dtype=np.float32)
    assert np.shares_memory(to_hu(ds, "s2", out=out[1]), out)
    assert np.array_equal(out[1], want) and np.isnan(out[0]).all()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (1.0, 0.0), (3.0, -1024.0), (-128.0, 2.0**22), (128.0, -(2.0**22)),
                                     (129.0, 0.0), (1.0, 2.0**22 + 1), (1.0, -1024.5), (0.3, -1024.0)])
def test_whole_number_rescale_in_float32_gives_the_float64_values_at_every_pixel_value(signed, rescale):
    """to_hu computes whole-number rescales in float32 (a quarter of the time); over every 16-bit
    value and at the limits of that path (and just past them, where the float64 path takes over) the
    values must be pydicom's float64 ones rounded once to float32."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import apply_modality_lut
    from pydicom.uid import ExplicitVRLittleEndian

    values = np.arange(-(2**15), 2**15, dtype=np.int16) if signed else np.arange(2**16, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 256, 256, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.PixelData = values.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    want = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    assert np.array_equal(to_hu(ds, "all values"), want)
