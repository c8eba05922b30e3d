"""DICOM media (DICOMDIR folders and zips): read the files the DICOMDIR lists, nothing else."""

from __future__ import annotations

import warnings

import pydicom
import pytest

from rgops.data.media import is_dicomdir, media_files, media_members
from rgops.errors import DicomError
from tests.study_factory import media_folder, multi_series_study


def test_a_media_folder_yields_the_listed_instances(tiny_cohort, tmp_path) -> None:
    study = multi_series_study(tiny_cohort)
    folder = media_folder(study, tmp_path / "cd")
    files = media_files(folder)
    assert len(files) == len(study)
    assert not any(p.name in ("DICOMDIR", "README.TXT") for p in files)
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert uids == {d.SOPInstanceUID for d in study}
    assert is_dicomdir(pydicom.dcmread(folder / "DICOMDIR"))


def test_without_a_dicomdir_every_file_counts(tmp_path) -> None:
    assert media_members(["a.dcm", "b/c.dcm"], lambda n: b"") == ["a.dcm", "b/c.dcm"]


def test_a_dicomdir_listing_a_missing_file_is_refused(tiny_cohort, tmp_path) -> None:
    folder = media_folder(multi_series_study(tiny_cohort), tmp_path / "cd")
    victim = next(p for p in media_files(folder))
    victim.unlink()
    with pytest.raises(DicomError, match="which the archive lacks; send the complete media"):
        media_files(folder)


def test_a_dicomdir_climbing_out_of_the_media_is_refused(tiny_cohort, tmp_path) -> None:
    folder = media_folder(multi_series_study(tiny_cohort), tmp_path / "cd")
    dd = pydicom.dcmread(folder / "DICOMDIR")
    record = next(r for r in dd.DirectoryRecordSequence if "ReferencedFileID" in r)
    with warnings.catch_warnings():  # pydicom warns that '..' is no valid CS value: that is the point
        warnings.simplefilter("ignore")
        record.ReferencedFileID = ["..", "etc", "passwd"]
        dd.save_as(folder / "DICOMDIR")
    with pytest.raises(DicomError, match="outside the media"):
        media_files(folder)


def test_not_a_folder_is_refused(tmp_path) -> None:
    with pytest.raises(DicomError, match="is not a folder"):
        media_files(tmp_path / "nothing")
