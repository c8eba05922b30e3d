"""The imaging biomarker as a DICOM Structured Report (TID 1500 Measurement Report, highdicom).

One volumetric measurement group references the tumour segment of the SEG (and, through it, the CT
series it was drawn on); its measurements are the biomarker components (``RGL-<i>``) and the
program scores (``RGP-<i>``), codes of the private scheme ``99RGOPS``; the algorithm
identification names the model, its registered version and alias; a qualitative evaluation says
that program scores are research use, not for diagnosis (and, for a model trained on a synthetic
cohort, that the map behind them was fitted on synthetic data).

Patient module (a decision, see README "Connecting a PACS"): ``patient="source"`` copies the
Patient and Study modules of the study the result describes, so that the hospital's PACS files the
SR into the same patient and study; it is meant only for the SR sent back to the PACS the study
came from, built in memory, never written to disk, logged or returned. ``patient="anonymous"``
writes ``ANONYMOUS`` with Patient Identity Removed = YES (tests, exports outside the hospital).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset

from rgops.errors import DicomError

log = logging.getLogger(__name__)

SCHEME = "99RGOPS"
#: Patient and Study module attributes copied for ``patient="source"`` (and blanked otherwise).
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "StudyID", "AccessionNumber", "ReferringPhysicianName")
RESEARCH_USE = "Research use only, not for diagnosis"  # a CodeMeaning: 64 characters at most


@dataclass(frozen=True)
class ModelRef:
    """The model behind a result: registered name, version, alias, and where its training data came from."""

    name: str
    version: str
    alias: str = ""
    trained_on: str = ""  # "synthetic" or "site" (model card trained_on.origin)


def _code(value: str, meaning: str):  # -> hd.sr.CodedConcept
    import highdicom as hd

    return hd.sr.CodedConcept(value=value[:16], scheme_designator=SCHEME, meaning=meaning[:64])


def _evidence(ds: Dataset, study: Dataset, patient: str) -> Dataset:
    """A header-only stand-in of ``ds`` (UIDs, Patient and Study modules): the SR copies no pixels."""
    out = Dataset()
    for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if kw not in ds:
            raise DicomError(f"a referenced instance lacks {kw}; expected complete DICOM headers")
        setattr(out, kw, ds.data_element(kw).value)
    for kw in PATIENT_STUDY:
        value = study.get(kw, "") if patient == "source" else ""
        setattr(out, kw, value if value is not None else "")
    if patient != "source":
        out.PatientName, out.PatientID = "ANONYMOUS^", "ANONYMOUS"
    return out


def _measurements(latent: Sequence[float], programs: Mapping[str, float] | None, algo):  # noqa: ANN001
    import highdicom as hd
    from pydicom.sr.codedict import codes

    unit = codes.UCUM.NoUnits
    out = [hd.sr.Measurement(name=_code(f"RGL-{i}", f"rgops biomarker component {i}"), value=float(v),
                             unit=unit, algorithm_id=algo) for i, v in enumerate(latent)]
    for i, (name, v) in enumerate((programs or {}).items()):
        out.append(hd.sr.Measurement(name=_code(f"RGP-{i}", f"program score {name} (research use)"),
                                     value=float(v), unit=unit, algorithm_id=algo))
    return out


def measurement_report(ct: Sequence[Dataset], seg: Dataset, latent: Sequence[float],
                       programs: Mapping[str, float] | None, model: ModelRef,
                       patient: Literal["source", "anonymous"] = "anonymous", segment_number: int = 1) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) of one tumour's biomarker and program scores.

    Args:
        ct: headers of the CT series the SEG references (pixels not needed).
        seg: header of the SEG.
        latent: the biomarker (mean latent over the tumour's slices).
        programs: program name -> score, or None when the model has no program head.
        model: the model's name, version, alias and training-data origin.
        patient: ``"source"`` (the study's own Patient/Study modules, for the PACS it came from)
            or ``"anonymous"``.

    Raises:
        DicomError: headers lacking the UIDs the references need.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not ct:
        raise DicomError("an SR needs the CT series it describes; got no CT headers")
    # highdicom logs the SOPInstanceUID it copies the patient module from at INFO: an identifier
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    evidence = [_evidence(ds, ct[0], patient) for ds in (*ct, seg)]
    algo = hd.sr.AlgorithmIdentification(name=model.name[:64], version=f"{model.version}@{model.alias}"[:64])
    use = RESEARCH_USE + ("; map fit on synthetic data" if model.trained_on == "synthetic" else "")
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="tumour"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(ct[0].SeriesInstanceUID))),
        finding_type=codes.SCT.Neoplasm, algorithm_id=algo,
        measurements=_measurements(latent, programs, algo),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=_code("RGU", "Intended use of these results"), value=_code("RUO", use))])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name=f"rgops {model.name}"[:64]))),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=generate_uid(), series_number=9901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="rgops", is_complete=True,
        series_description=f"rgops biomarker {model.name} v{model.version} - research use"[:64])
    if patient != "source":
        sr.PatientIdentityRemoved = "YES"
        sr.DeidentificationMethod = "rgops: no patient or study identifier copied"
    return sr


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_measurements(sr: Dataset) -> dict[str, float]:
    """Code value -> numeric value of every measurement of an rgops SR (``RGL-<i>``, ``RGP-<i>``)."""
    out: dict[str, float] = {}

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "NUM" and item.get("ConceptNameCodeSequence"):
                code = item.ConceptNameCodeSequence[0]
                if code.CodingSchemeDesignator == SCHEME:
                    out[str(code.CodeValue)] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))
    return out
