"""Choosing the CT series and SEG of a real study.

A study as a hospital sends it (an upload, media or a PACS study) holds several series: a
localizer, one or more CT reconstructions, the SEG, perhaps structured reports or presentation
states. The tumour's series is the one the SEG references; everything else is ignored with a
logged reason. Ingest (series grouped by folder) and serving (a flat list of instances) share
:func:`pick_referenced`, so both choose the same series for the same study.

Series are named by their position in the study, modality, instance count, SeriesNumber and
ImageType, never by a UID or description (those may identify the patient before de-identification).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from rgops.data.dicom import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    SEGMENTATION_STORAGE,
    referenced_series_uids,
)
from rgops.errors import StudyError

log = logging.getLogger(__name__)

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

WHAT_TO_SEND = ("send the CT series together with a DICOM SEG that references it (or one CT slice with a "
                "tumour 'box' or 'mask')")


def pick_referenced(series_uids: Sequence[str], segs: Sequence[Dataset]) -> tuple[int, int | None]:
    """Which SEG, and which of the CT series ``series_uids``, describe the tumour.

    The SEG is the first one that references one of the series (else the first SEG); the series
    is the one that SEG references. When the SEG references none of them and there is exactly one
    series, that series is returned, so that the SEG check itself names the mismatch.

    Returns:
        ``(seg index, series index or None)``.
    """
    if not segs:
        raise StudyError("no SEG given; " + WHAT_TO_SEND)
    uids = [str(u) for u in series_uids]
    seg_idx = next((i for i, s in enumerate(segs) if referenced_series_uids(s) & set(uids)), 0)
    refs = referenced_series_uids(segs[seg_idx])
    chosen = next((j for j, u in enumerate(uids) if u in refs), None)
    if chosen is None and len(uids) == 1:
        chosen = 0
    return seg_idx, chosen


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study, described without identifiers."""

    position: int
    modality: str
    sop_class_uid: str
    n_instances: int
    series_number: str
    image_type: str
    role: str = "ignored"  # "ct", "seg" or "ignored"
    reason: str = ""

    def describe(self) -> str:
        number = f", SeriesNumber {self.series_number}" if self.series_number else ""
        kind = f", ImageType {self.image_type}" if self.image_type else ""
        why = f" -> {self.role}" + (f" ({self.reason})" if self.reason else "")
        return f"series {self.position}: {self.modality or '?'}, {self.n_instances} instance(s){number}{kind}{why}"


@dataclass
class StudySelection:
    """The chosen CT series (``ct``) and SEG (``seg``, None with a box/mask) of a study."""

    ct: list[Dataset]
    seg: Dataset | None
    series: list[SeriesSummary] = field(default_factory=list)

    @property
    def ct_series_uid(self) -> str:
        return str(self.ct[0].get("SeriesInstanceUID", "")) if self.ct else ""

    @property
    def seg_series_uid(self) -> str:
        return str(self.seg.get("SeriesInstanceUID", "")) if self.seg is not None else ""

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.series)


def group_series(datasets: Sequence[Dataset]) -> list[list[Dataset]]:
    """Instances grouped by SeriesInstanceUID, in order of first appearance."""
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    return list(groups.values())


def _image_type(ds: Dataset) -> str:
    value = ds.get("ImageType")
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if not isinstance(value, str) else value


def classify(position: int, group: Sequence[Dataset]) -> SeriesSummary:
    """Describe one series and say whether it can be the tumour's CT, a SEG, or must be ignored."""
    first = group[0]
    modality, sop = str(first.get("Modality", "")), str(first.get("SOPClassUID", ""))
    types = {_image_type(ds).upper() for ds in group}
    base = dict(position=position, modality=modality, sop_class_uid=sop, n_instances=len(group),
                series_number=str(first.get("SeriesNumber", "") or ""), image_type=sorted(types)[0] if types else "")
    if sop == SEGMENTATION_STORAGE:
        return SeriesSummary(**base, role="seg")
    if sop == RTSTRUCT_STORAGE:
        return SeriesSummary(**base, reason="RTSTRUCT is not read; export the contour as a DICOM SEG")
    if modality != "CT" or sop not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE):
        return SeriesSummary(**base, reason=f"not a CT image series (SOPClassUID {sop or '?'})")
    if any("LOCALIZER" in t for t in types):
        return SeriesSummary(**base, reason="localizer (ImageType LOCALIZER)")
    if any("PixelData" not in ds for ds in group):
        return SeriesSummary(**base, reason="instances without pixel data")
    return SeriesSummary(**base, role="ct")


def select_study(datasets: Sequence[Dataset], allow_no_seg: bool = False) -> StudySelection:
    """Choose the CT series and SEG of a study from all its instances (any order).

    Args:
        datasets: every instance of the study (CT slices of all series, SEGs, others).
        allow_no_seg: a tumour box or mask is given instead of a SEG: then one CT series suffices.

    Raises:
        StudyError: no SEG (and no box/mask), no CT series, a SEG that references none of the CT
            series found, or several CT series and no SEG to choose between them. The message lists
            the series found and what to send.
    """
    groups = group_series(datasets)
    summaries = [classify(i + 1, g) for i, g in enumerate(groups)]
    cts = [(s, g) for s, g in zip(summaries, groups) if s.role == "ct"]
    segs = [ds for s, g in zip(summaries, groups) if s.role == "seg" for ds in g]
    found = "; ".join(s.describe() for s in summaries) or "nothing"
    if not cts:
        raise StudyError(f"the study holds no usable CT series (found {found}); {WHAT_TO_SEND}")
    if not segs:
        if allow_no_seg and len(cts) == 1:
            return _selected(summaries, cts[0][1], None, cts[0][0].position)
        if allow_no_seg:
            raise StudyError(f"a tumour box or mask needs exactly one CT series, the study holds {len(cts)} "
                             f"(found {found}); send only the CT slice the box or mask is drawn on")
        raise StudyError(f"the study holds no DICOM SEG (found {found}); {WHAT_TO_SEND}")
    seg_idx, chosen = pick_referenced([g[0].get("SeriesInstanceUID", "") for _, g in cts], segs)
    if chosen is None:
        raise StudyError(f"the SEG references none of the {len(cts)} CT series of the study (found {found}); "
                         "send the CT series the SEG was drawn on")
    if len(segs) > 1:
        log.info("study has %d SEG instances; using SEG %d, which references the chosen CT series",
                 len(segs), seg_idx + 1)
    return _selected(summaries, cts[chosen][1], segs[seg_idx], cts[chosen][0].position)


def _selected(summaries: list[SeriesSummary], ct: list[Dataset], seg: Dataset | None,
              ct_position: int) -> StudySelection:
    final = []
    for s in summaries:
        if s.role == "ct" and s.position != ct_position:
            s = SeriesSummary(**{**s.__dict__, "role": "ignored", "reason": "CT series the SEG does not reference"})
        final.append(s)
        if s.role == "ignored":
            log.info("ignored %s", s.describe())
    return StudySelection(ct=list(ct), seg=seg, series=final)
