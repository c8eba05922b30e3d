"""Choosing the CT series and SEG of a whole study (rgops.data.study), shared by ingest and serving."""

from __future__ import annotations

import copy
import logging
import shutil

import pydicom
import pytest
from pydicom.uid import generate_uid

from rgops.data.ingest import IngestConfig, ingest_patient
from rgops.data.study import pick_referenced, select_study
from rgops.errors import StudyError
from tests.conftest import TINY_KEY
from tests.study_factory import localizer, media_folder, multi_series_study


def _reconstruction(cts):
    """A second reconstruction of the same CT (own series, sharper kernel)."""
    series, out = generate_uid(), []
    for ds in cts:
        d = copy.deepcopy(ds)
        d.SeriesInstanceUID, d.SOPInstanceUID, d.SeriesNumber = series, generate_uid(), 3
        out.append(d)
    return out


def test_the_series_the_seg_references_is_chosen_and_the_others_are_logged(tiny_cohort, caplog) -> None:
    study = multi_series_study(tiny_cohort)
    cts = [d for d in study if d.Modality == "CT" and "LOCALIZER" not in d.ImageType]
    study += _reconstruction(cts)
    with caplog.at_level(logging.INFO, logger="rgops.data.study"):
        sel = select_study(study)
    assert sel.ct_series_uid == cts[0].SeriesInstanceUID and len(sel.ct) == len(cts)
    assert sel.seg is not None and sel.seg.Modality == "SEG"
    roles = [(s.role, s.reason) for s in sel.series]
    assert ("ignored", "localizer (ImageType LOCALIZER)") in roles
    assert ("ignored", "CT series the SEG does not reference") in roles
    assert sum(r == "ct" for r, _ in roles) == 1
    assert "localizer" in caplog.text and "does not reference" in caplog.text


def test_a_study_without_a_seg_names_the_series_and_what_to_send(tiny_cohort) -> None:
    study = [d for d in multi_series_study(tiny_cohort) if d.Modality != "SEG"]
    with pytest.raises(StudyError) as err:
        select_study(study)
    msg = str(err.value)
    assert "no DICOM SEG" in msg and "series 1: CT, 1 instance(s)" in msg and "LOCALIZER" in msg
    assert "send the CT series together with a DICOM SEG" in msg and "'box'" in msg


def test_a_seg_of_another_series_is_refused(tiny_cohort) -> None:
    study = multi_series_study(tiny_cohort)
    study += _reconstruction([d for d in study[2:]])
    study[0].ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    with pytest.raises(StudyError, match="references none of the 2 CT series.*send the CT series the SEG was drawn on"):
        select_study(study)


def test_a_box_needs_one_ct_series(tiny_cohort) -> None:
    study = [d for d in multi_series_study(tiny_cohort) if d.Modality != "SEG"]
    one = [study[0], study[1]]  # the localizer and one axial slice: the localizer is ignored
    sel = select_study(one, allow_no_seg=True)
    assert sel.seg is None and len(sel.ct) == 1 and "LOCALIZER" not in sel.ct[0].ImageType
    with pytest.raises(StudyError, match="no usable CT series"):
        select_study([study[0]], allow_no_seg=True)


def test_pick_referenced_prefers_the_seg_that_references_a_series(tiny_cohort) -> None:
    study = multi_series_study(tiny_cohort)
    seg = study[0]
    stray = copy.deepcopy(seg)
    stray.ReferencedSeriesSequence = pydicom.Sequence([pydicom.Dataset()])
    stray.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3"
    ct_uid = study[2].SeriesInstanceUID
    assert pick_referenced(["9.9", ct_uid], [stray, seg]) == (1, 1)
    assert pick_referenced(["9.9"], [seg]) == (0, 0)  # a lone series: the SEG check names the mismatch
    assert pick_referenced(["9.9", "8.8"], [seg]) == (0, None)


def test_ingest_ignores_a_localizer_folder_and_a_dicomdir_as_serving_does(tiny_cohort, tmp_path) -> None:
    patient = sorted((tiny_cohort / "ct").iterdir())[0]
    dst = tmp_path / patient.name
    shutil.copytree(patient, dst)
    first = next(p for d in sorted(dst.iterdir()) if d.name != "seg" for p in sorted(d.iterdir()))
    (dst / "localizer").mkdir()
    localizer(pydicom.dcmread(first)).save_as(dst / "localizer" / "loc.dcm", enforce_file_format=True)
    media = media_folder([pydicom.dcmread(first)], tmp_path / "cd")  # a series copied from a CD, index included
    shutil.copy(media / "DICOMDIR", first.parent / "DICOMDIR")
    config = IngestConfig()
    plain, with_loc = ingest_patient(patient, config, TINY_KEY), ingest_patient(dst, config, TINY_KEY)
    assert plain.ok and with_loc.ok
    assert (with_loc.patch == plain.patch).all()
