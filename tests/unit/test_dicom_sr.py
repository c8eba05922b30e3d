"""The biomarker as a TID 1500 SR (rgops.dicom_sr) and generated images as Secondary Capture:
both valid for dciodvfy (Debian dicom3tools), no identifiers where none may be."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from rgops.dicom_sr import ModelRef, measurement_report, read_measurements, to_bytes
from rgops.export import to_secondary_capture
from tests.study_factory import multi_series_study
from tests.system_tools import dciodvfy_errors

#: The Debian build of dciodvfy (dicom3tools 2022-06) predates the Synthetic Data attribute
#: (0008,001C, added to the standard later); its dictionary calls it unknown. Only that one line is
#: tolerated, and only for that tag.
UNKNOWN_SYNTHETIC_DATA = "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)"


def _study(cohort):
    study = multi_series_study(cohort)
    seg = next(d for d in study if d.Modality == "SEG")
    cts = [d for d in study if d.Modality == "CT" and "LOCALIZER" not in d.ImageType]
    return cts, seg


@pytest.mark.parametrize("patient", ["source", "anonymous"])
def test_sr_passes_dciodvfy_and_round_trips(tiny_cohort, tmp_path, patient) -> None:
    cts, seg = _study(tiny_cohort)
    model = ModelRef("rgops-cae", "7", "champion", trained_on="synthetic")
    sr = measurement_report(cts, seg, [0.5, -1.25, 2.0], {"proliferation": 0.75, "hypoxia": -0.5}, model,
                            patient=patient)
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_bytes(sr))
    assert dciodvfy_errors(str(path)) == []
    back = pydicom.dcmread(path)
    assert read_measurements(back) == {"RGL-0": 0.5, "RGL-1": -1.25, "RGL-2": 2.0, "RGP-0": 0.75, "RGP-1": -0.5}
    text = str(back)
    assert "rgops-cae" in text and "7@champion" in text and "Research use only" in text and "map fit on synthetic data" in text
    # references: the SEG instance and the CT series it was drawn on; the study is the source study
    assert back.StudyInstanceUID == cts[0].StudyInstanceUID
    assert seg.SOPInstanceUID in text and cts[0].SeriesInstanceUID in text
    if patient == "source":  # for the hospital's own PACS: its own patient module
        assert back.PatientID == cts[0].PatientID
    else:
        assert back.PatientID == "ANONYMOUS" and back.PatientIdentityRemoved == "YES"
        for kw in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
            value = str(cts[0].get(kw, "") or "")
            assert not value or value not in text, kw


def test_no_program_scores_no_program_measurements(tiny_cohort) -> None:
    cts, seg = _study(tiny_cohort)
    sr = measurement_report(cts, seg, [1.0], None, ModelRef("rgops-cae", "1", "champion", "site"))
    assert read_measurements(sr) == {"RGL-0": 1.0}
    assert "synthetic" not in str(sr)


def test_secondary_capture_is_synthetic_and_complete(tmp_path) -> None:
    data = to_secondary_capture(np.zeros((1, 32, 32)), "rgops-gan", "3")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds[0x0008, 0x001C].value == "YES"
    assert "Laterality" in ds and "PatientOrientation" in ds and ds.PatientID == "SYNTHETIC"
    path = tmp_path / "sc.dcm"
    path.write_bytes(data)
    errors = dciodvfy_errors(str(path))
    assert [e for e in errors if not e.startswith(UNKNOWN_SYNTHETIC_DATA)] == []
