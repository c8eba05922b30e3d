"""Planted identifiers and the search for them in everything a pipeline wrote.

The synthetic cohort plants realistic PHI in every DICOM header (rgops/data/synth.py). These helpers
collect those values from the raw cohort and search every byte of every file under a folder for
them: raw bytes (SQLite pages, JSON, pickles, logs) and the decoded text of compressed tables
(parquet), so a leak cannot hide behind compression; a parquet file it cannot decode fails the search
(:class:`UndecodableFile`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pydicom

KEYWORDS = ("PatientID", "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
            "OperatorsName", "OtherPatientIDs", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
            "SOPInstanceUID", "PatientBirthDate")
MIN_LEN = 5  # shorter values (a sex, an age) are not identifying on their own and match by chance


def planted_identifiers(cohort: Path, every: int = 3) -> set[str]:
    """Identifying values from the raw cohort's headers (every ``every``-th file, SEGs included)."""
    needles: set[str] = set()
    files = sorted((cohort / "ct").rglob("*.dcm"))
    for path in files[::every] + [f for f in files if f.parent.name == "seg"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in KEYWORDS:
            value = ds.get(kw)
            if value is None:
                continue
            for v in (value if isinstance(value, pydicom.multival.MultiValue) else [value]):
                text = str(v).strip()
                if len(text) >= MIN_LEN:
                    needles.add(text)
        for person in ("PatientName", "ReferringPhysicianName", "OperatorsName"):
            for part in str(ds.get(person, "")).replace("^", " ").split():
                if len(part) >= MIN_LEN:
                    needles.add(part)
        for elem in ds:
            if elem.tag.is_private and isinstance(elem.value, str) and len(elem.value.strip()) >= MIN_LEN:
                needles.add(elem.value.strip())
    needles.update(p.name for p in (cohort / "ct").iterdir() if p.is_dir())  # source PatientIDs
    return needles


class UndecodableFile(AssertionError):
    """A compressed file the search cannot decode: a leak inside it would be searched only as
    compressed bytes, so the search fails instead of passing it by."""


def _texts(path: Path) -> list[bytes]:
    blobs = [path.read_bytes()]
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise UndecodableFile(f"{path} cannot be decoded as parquet ({type(exc).__name__}: {exc}); the "
                                  "privacy search cannot see inside it: fix or remove the file") from exc
        blobs.append(frame.to_csv().encode())
    return blobs


def _pattern(needle: str) -> re.Pattern[bytes]:
    """A purely numeric identifier (an MRN, a study id) must stand alone: ``74932`` is a leak in
    ``MRN 74932`` but not inside the decimals of ``1.749321`` nor inside a hex run id such as
    ``a67970b3``, where short digit runs occur by chance."""
    escaped = re.escape(needle.encode())
    if needle.isdigit():
        return re.compile(rb"(?<![0-9A-Za-z.])" + escaped + rb"(?![0-9A-Za-z])")
    return re.compile(escaped)


def leaks_in_tree(root: Path, needles: set[str]) -> dict[str, list[str]]:
    """``{relative file: [identifiers found]}`` for every file under ``root`` holding one."""
    found: dict[str, list[str]] = {}
    patterns = {n: _pattern(n) for n in needles}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = _texts(path)
        hits = sorted(n for n, pat in patterns.items() if any(pat.search(blob) for blob in blobs))
        if hits:
            found[str(path.relative_to(root))] = hits
    return found
