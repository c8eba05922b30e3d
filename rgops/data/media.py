"""DICOM media: DICOMDIR folders and zips (a CD export, Orthanc's "media" archive).

A DICOMDIR is a Media Storage Directory object: a DICOM file without pixel data that lists the
files of the media (``ReferencedFileID``, path components relative to the DICOMDIR). It is an index,
not an image: readers drop it, and when a folder or zip holds one, read exactly the files it lists
(media may also carry a viewer, autorun files, PDFs).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from rgops.errors import DicomError

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def is_dicomdir(ds: Dataset) -> bool:
    """True for a Media Storage Directory (DICOMDIR) object."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def referenced_files(dicomdir: Dataset, where: str = "DICOMDIR") -> list[str]:
    """Paths (``/``-separated, relative to the DICOMDIR's folder) of the files a DICOMDIR lists.

    Raises:
        DicomError: a record whose file id climbs out of the media (``..`` or an absolute path).
    """
    out = []
    for record in dicomdir.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
        if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts):
            raise DicomError(f"{where} lists a file id {'/'.join(parts)!r} outside the media; expected path "
                             "components inside the DICOMDIR's folder: re-export the media")
        out.append("/".join(parts))
    return out


def _lookup(names: Sequence[str]) -> dict[str, str]:
    return {n.upper(): n for n in names}


def media_members(names: Sequence[str], read: Callable[[str], bytes]) -> list[str]:
    """Of the member names of an archive, those to read as DICOM instances.

    Without a DICOMDIR: every name. With one (or more): the files the DICOMDIRs list, matched
    case-insensitively (ISO 9660 media upper-case their names); the DICOMDIRs and unlisted files
    (viewers, README) are dropped with a log line. ``read(name)`` returns a member's bytes.

    Raises:
        DicomError: a DICOMDIR that is not readable, or that lists a file the archive lacks.
    """
    dirs = [n for n in names if PurePosixPath(n).name.upper() == "DICOMDIR"]
    if not dirs:
        return list(names)
    by_upper, chosen = _lookup(names), []
    for d in dirs:
        try:
            ds = pydicom.dcmread(io.BytesIO(read(d)), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            raise DicomError(f"the media's DICOMDIR is not readable ({type(exc).__name__}); re-export the "
                             "media or send the DICOM files without it") from None
        base = PurePosixPath(d).parent
        for rel in referenced_files(ds):
            full = str(base / rel) if str(base) != "." else rel
            if full.upper() not in by_upper:
                raise DicomError(f"the DICOMDIR lists {rel!r}, which the archive lacks; send the complete media")
            chosen.append(by_upper[full.upper()])
    dropped = len(names) - len(dirs) - len(set(chosen))
    log.info("media with %d DICOMDIR: reading the %d file(s) it lists; %d other file(s) ignored",
             len(dirs), len(set(chosen)), max(dropped, 0))
    return list(dict.fromkeys(chosen))


def media_files(folder: str | Path) -> list[Path]:
    """The DICOM files of a folder: those its DICOMDIR lists, or every file under it.

    Raises:
        DicomError: no such folder, or a DICOMDIR listing files that are not there.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DicomError(f"{str(root)!r} is not a folder; expected a DICOM media folder or a folder of DICOM files")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    names = [p.relative_to(root).as_posix() for p in files]
    chosen = media_members(names, lambda n: (root / n).read_bytes())
    return [root / n for n in chosen]
