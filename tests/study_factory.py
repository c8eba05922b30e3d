"""Real-looking studies for tests: a synthetic patient's CT + SEG, plus a localizer series, as
files, a flat list of datasets, or DICOM media (a DICOMDIR folder written by pydicom, zipped)."""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid


def patient_files(cohort: Path, index: int = 0) -> list[Path]:
    """Every file (CT slices and SEG) of the cohort's ``index``-th patient."""
    patient = sorted((cohort / "ct").iterdir())[index]
    return sorted(p for p in patient.rglob("*") if p.is_file())


def localizer(ct: Dataset) -> Dataset:
    """A one-slice localizer of the same study: own series, ImageType LOCALIZER, coronal orientation."""
    loc = copy.deepcopy(ct)
    loc.SeriesInstanceUID = generate_uid()
    loc.SOPInstanceUID = generate_uid()
    loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    loc.SeriesNumber = 1
    loc.SeriesDescription = "TOPOGRAM"
    return loc


def multi_series_study(cohort: Path, index: int = 0) -> list[Dataset]:
    """Localizer + CT series + SEG of one patient, in a shuffled-looking order (SEG first)."""
    datasets = [pydicom.dcmread(p) for p in patient_files(cohort, index)]
    segs = [d for d in datasets if d.Modality == "SEG"]
    cts = [d for d in datasets if d.Modality != "SEG"]
    return [*segs, localizer(cts[0]), *cts]


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def media_folder(datasets: list[Dataset], out: Path) -> Path:
    """Write the datasets as DICOM media (a DICOMDIR plus its files, as a CD export) under ``out``."""
    fs = FileSet()
    for ds in datasets:
        fs.add(copy.deepcopy(ds))
    fs.write(out)
    (out / "README.TXT").write_text("viewer not included\n")  # media carry non-DICOM files too
    return out


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()
