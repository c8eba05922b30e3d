"""De-identification of DICOM headers (PS3.15 Annex E, Basic Application Level Confidentiality Profile).

Why our own table and not ``dicognito`` or ``deid``: rgops needs the patient's replacement to be the
*keyed* HMAC pseudonym of :mod:`rgops.data.pseudonym` (so imaging links to the genes and clinical
tables, which never pass through a DICOM library) and every UID replaced by
:func:`~rgops.data.pseudonym.pseudonymous_uid` under the same key (so a SEG de-identified in another
run still references its CT). ``dicognito`` replaces names and UIDs with its own seeded random
scheme, and ``deid`` needs a recipe file plus custom functions for exactly those two replacements;
either way the table below would have to be re-checked against theirs. The profile's action table
for the attributes that occur in CT and SEG objects is short enough to keep here, reviewable in one
place, with no extra dependency.

Actions (PS3.15 Table E.1-1 codes):

* ``X`` remove, ``Z`` replace with an empty value, ``D`` replace with a dummy value (here: the
  pseudonym, used for PatientName and PatientID only),
  ``U`` replace UID with a consistent keyed UID, ``K`` keep (sequences: keep and recurse).
* Where the table allows several (``X/Z/D``), the most removing one that keeps CT/SEG objects
  readable is used. Dates and times are *removed* (not shifted): no part of rgops needs them.
* Beyond the table: every private tag, curve (50xx) and overlay (60xx) group is removed; any
  person name (VR ``PN``) and any date/date-time (``DA``/``DT``) not listed is emptied or removed
  (conservative); sequences are recursed into.
* ``PatientID`` and ``PatientName`` become the pseudonym; ``PatientIdentityRemoved`` = ``YES``,
  ``DeidentificationMethod`` and ``DeidentificationMethodCodeSequence`` (DCM 113100 basic profile,
  113107 retain device identity is *not* claimed) are set.

:func:`find_identifiers` checks a dataset for leftovers (used by ingest, tests and validation).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from rgops.data.pseudonym import pseudonymize, pseudonymous_uid
from rgops.errors import DeidentificationError

log = logging.getLogger(__name__)

Action = Literal["X", "Z", "D", "U", "K"]

#: DeidentificationMethod (VR LO: at most 64 characters).
METHOD = "rgops: PS3.15 E.1-1 basic profile, HMAC pseudonym, keyed UIDs"

#: PS3.15 Table E.1-1, attributes that occur (or may occur) in CT Image and Segmentation objects,
#: keyed by DICOM keyword, with the basic-profile action chosen for rgops.
ACTIONS: dict[str, Action] = {
    # --- patient ---
    "PatientName": "D", "PatientID": "D", "IssuerOfPatientID": "X", "PatientBirthDate": "Z",
    "PatientBirthTime": "X", "PatientSex": "Z", "PatientAge": "X", "PatientSize": "X",
    "PatientWeight": "X", "PatientAddress": "X", "PatientBirthName": "X",
    "PatientMotherBirthName": "X", "PatientTelephoneNumbers": "X", "PatientComments": "X",
    "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X", "OtherPatientNames": "X",
    "PatientInsurancePlanCodeSequence": "X", "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X", "PatientReligiousPreference": "X",
    "PatientSexNeutered": "X", "PatientState": "X", "PatientTransportArrangements": "X",
    "PatientInstitutionResidence": "X", "ReferencedPatientPhotoSequence": "X",
    "ReferencedPatientSequence": "X", "ReferencedPatientAliasSequence": "X",
    "AdditionalPatientHistory": "X", "Allergies": "X", "BranchOfService": "X",
    "CountryOfResidence": "X", "RegionOfResidence": "X", "EthnicGroup": "X", "Occupation": "X",
    "MedicalAlerts": "X", "MedicalRecordLocator": "X", "MilitaryRank": "X",
    "InsurancePlanIdentification": "X", "LastMenstrualDate": "X", "PregnancyStatus": "X",
    "SmokingStatus": "X", "SpecialNeeds": "X", "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X", "PersonAddress": "X", "PersonTelephoneNumbers": "X",
    "PersonName": "Z", "PersonIdentificationCodeSequence": "X",
    # --- visit / admission ---
    "AdmissionID": "X", "IssuerOfAdmissionID": "X", "AdmittingDate": "X", "AdmittingTime": "X",
    "AdmittingDiagnosesDescription": "X", "AdmittingDiagnosesCodeSequence": "X",
    "DischargeDiagnosisDescription": "X", "CurrentPatientLocation": "X", "VisitComments": "X",
    "ServiceEpisodeID": "X", "ServiceEpisodeDescription": "X", "IssuerOfServiceEpisodeID": "X",
    "ScheduledPatientInstitutionResidence": "X",
    # --- study ---
    "StudyInstanceUID": "U", "StudyDate": "Z", "StudyTime": "Z", "StudyID": "Z",
    "AccessionNumber": "Z", "StudyDescription": "X", "StudyComments": "X", "StudyIDIssuer": "X",
    "ReferringPhysicianName": "Z", "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X", "ReferringPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X", "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X", "PhysiciansReadingStudyIdentificationSequence": "X",
    "RequestingPhysician": "X", "RequestingService": "X", "ReasonForStudy": "X",
    "RequestedProcedureDescription": "X", "RequestedProcedureID": "X",
    "RequestedProcedureComments": "X", "RequestedProcedureLocation": "X",
    "RequestedContrastAgent": "X", "ReasonForImagingServiceRequest": "X",
    "ImagingServiceRequestComments": "X", "PlacerOrderNumberImagingServiceRequest": "Z",
    "FillerOrderNumberImagingServiceRequest": "Z", "OrderEnteredBy": "X",
    "OrderEntererLocation": "X", "OrderCallbackPhoneNumber": "X", "ReferencedStudySequence": "X",
    "RequestAttributesSequence": "X", "NamesOfIntendedRecipientsOfResults": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X", "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X", "ConfidentialityConstraintOnPatientDataDescription": "X",
    # --- series / procedure step ---
    "SeriesInstanceUID": "U", "SeriesDate": "X", "SeriesTime": "X", "SeriesDescription": "X",
    "PerformingPhysicianName": "X", "PerformingPhysicianIdentificationSequence": "X",
    "OperatorsName": "X", "OperatorIdentificationSequence": "X", "ProtocolName": "X",
    "PerformedProcedureStepID": "X", "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X", "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X", "PerformedProcedureStepEndTime": "X",
    "PerformedLocation": "X", "PerformedStationAETitle": "X", "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X", "PerformedStationGeographicLocationCodeSequence": "X",
    "CommentsOnThePerformedProcedureStep": "X", "ReferencedPerformedProcedureStepSequence": "X",
    "ScheduledProcedureStepDescription": "X", "ScheduledProcedureStepLocation": "X",
    "ScheduledProcedureStepStartDate": "X", "ScheduledProcedureStepStartTime": "X",
    "ScheduledProcedureStepEndDate": "X", "ScheduledProcedureStepEndTime": "X",
    "ScheduledPerformingPhysicianName": "X", "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledStationAETitle": "X", "ScheduledStationName": "X",
    "ScheduledStationNameCodeSequence": "X", "ScheduledStationGeographicLocationCodeSequence": "X",
    "ScheduledHumanPerformersSequence": "X", "ActualHumanPerformersSequence": "X",
    "HumanPerformerName": "X", "HumanPerformerOrganization": "X",
    "PreMedication": "X", "AcquisitionContextSequence": "X",
    # --- equipment / institution ---
    "InstitutionName": "X", "InstitutionAddress": "X", "InstitutionCodeSequence": "X",
    "InstitutionalDepartmentName": "X", "StationName": "X", "DeviceSerialNumber": "Z",
    "DeviceUID": "U", "DetectorID": "X", "GantryID": "X", "GeneratorID": "X", "PlateID": "X",
    "CassetteID": "X", "ModifyingDeviceID": "X", "ModifyingDeviceManufacturer": "X",
    "CustodialOrganizationSequence": "X", "TimezoneOffsetFromUTC": "X",
    # --- image / acquisition ---
    "SOPInstanceUID": "U", "MediaStorageSOPInstanceUID": "U", "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U", "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U", "ReferencedSOPInstanceUID": "U", "ConcatenationUID": "U",
    "InstanceCreatorUID": "U", "IrradiationEventUID": "U", "StorageMediaFileSetUID": "U",
    "LargePaletteColorLookupTableUID": "U", "DoseReferenceUID": "U", "FiducialUID": "U",
    "TransactionUID": "U", "UID": "U", "FailedSOPInstanceUIDList": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "RequestedSOPInstanceUID": "U", "DimensionOrganizationUID": "U",
    "ContentDate": "Z", "ContentTime": "Z", "AcquisitionDate": "X", "AcquisitionTime": "X",
    "AcquisitionDateTime": "X", "InstanceCreationDate": "X", "InstanceCreationTime": "X",
    "CurveDate": "X", "CurveTime": "X", "OverlayDate": "X", "OverlayTime": "X",
    "EndAcquisitionDateTime": "X", "StartAcquisitionDateTime": "X",
    "AcquisitionComments": "X", "AcquisitionDeviceProcessingDescription": "X",
    "ContrastBolusAgent": "Z", "DerivationDescription": "X", "ImageComments": "X",
    "FrameComments": "X", "ImagePresentationComments": "X", "IdentifyingComments": "X",
    "ModifiedImageDescription": "X", "IconImageSequence": "X", "TextComments": "X",
    "TextString": "X", "Arbitrary": "X", "ContributionDescription": "X",
    "ContentCreatorName": "Z", "ContentCreatorIdentificationCodeSequence": "X",
    "ContentSequence": "X", "AuthorObserverSequence": "X", "ParticipantSequence": "X",
    "VerifyingObserverName": "Z", "VerifyingObserverSequence": "X",
    "VerifyingObserverIdentificationCodeSequence": "Z", "VerifyingOrganization": "X",
    "ReviewerName": "X", "GraphicAnnotationSequence": "X",
    # --- interpretation / results / distribution ---
    "InterpretationAuthor": "X", "InterpretationApproverSequence": "X",
    "InterpretationDiagnosisDescription": "X", "InterpretationIDIssuer": "X",
    "InterpretationRecorder": "X", "InterpretationText": "X", "InterpretationTranscriber": "X",
    "PhysicianApprovingInterpretation": "X", "Impressions": "X", "ResultsComments": "X",
    "ResultsDistributionListSequence": "X", "ResultsIDIssuer": "X", "DistributionAddress": "X",
    "DistributionName": "X",
    # --- signatures / provenance of edits ---
    "DigitalSignaturesSequence": "X", "ReferencedDigitalSignatureSequence": "X",
    "ReferencedSOPInstanceMACSequence": "X", "MAC": "X", "ModifiedAttributesSequence": "X",
    "OriginalAttributesSequence": "X", "DataSetTrailingPadding": "X",
    # --- topics (media) ---
    "TopicAuthor": "X", "TopicKeywords": "X", "TopicSubject": "X", "TopicTitle": "X",
}

#: Sequences the table marks ``X/Z/U*`` or that SEG needs to resolve its source images: kept,
#: recursed into, and their UIDs remapped (``U*``).
KEEP_SEQUENCES = frozenset({
    "ReferencedSeriesSequence", "ReferencedInstanceSequence", "ReferencedImageSequence",
    "SourceImageSequence", "DerivationImageSequence", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "SegmentSequence",
})

#: The table by tag number: the walk looks elements up by tag, never by keyword (a keyword lookup per
#: element was a fifth of ingest). Keywords that pydicom's dictionary lacks cannot match any tag.
_TAG_ACTIONS: dict[int, Action] = {t: a for k, a in ACTIONS.items() if (t := tag_for_keyword(k)) is not None}
_UID_TAGS = frozenset(t for t, a in _TAG_ACTIONS.items() if a == "U")
_EMPTY_TAGS = frozenset(t for t, a in _TAG_ACTIONS.items() if a == "Z")
_REMOVED_TAGS = frozenset(t for t, a in _TAG_ACTIONS.items() if a == "X")
_DUMMY_TAGS = frozenset(t for t, a in _TAG_ACTIONS.items() if a == "D")  # PatientName, PatientID
_PSEUDO_RE = re.compile(r"^P-[0-9a-f]{16}$")
_KEYED_UID_RE = re.compile(r"^2\.25\.\d+$")


def _is_curve_or_overlay(tag: int) -> bool:
    group = tag >> 16
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def _vr(ds: Dataset, tag: BaseTag) -> str:
    """VR of an element without converting a raw element's value (implicit VR: dictionary VR)."""
    vr = ds.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _is_empty(ds: Dataset, tag: BaseTag) -> bool:
    item = ds.get_item(tag)
    if isinstance(item, DataElement):
        return bool(item.is_empty)
    return item.length == 0 or not item.value  # raw element: its bytes


def _uids(ds: Dataset, tag: BaseTag) -> list[str]:
    """The UID value(s) of an element, read from its raw bytes when it is still raw (no conversion:
    the same strings as pydicom's ``convert_UI``: latin-1, trailing NULs and spaces stripped, split on
    backslashes)."""
    item = ds.get_item(tag)
    if isinstance(item, DataElement):
        value = item.value
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, (list, tuple)) or item.VM > 1 else [str(value)]
    raw = item.value or b""
    return raw.decode("latin-1").rstrip("\0 ").split("\\") if raw else []


def _replace(ds: Dataset, tag: BaseTag, vr: str, value: object) -> None:
    """Put a new element in place of ``tag`` without decoding the old one."""
    ds[tag] = DataElement(tag, vr, value)


def _clean(ds: Dataset, key: bytes, pseudo_id: str, seen: set[int]) -> None:
    """Apply the action table to ``ds`` in place, recursing into kept sequences.

    ``seen`` holds the ids of items already cleaned: writers (highdicom among them) may put the
    same item object in several sequences, and a UID must be remapped exactly once. Elements are
    looked up by tag number, and only sequences are decoded: a replaced value is written as a new
    element without converting the old one (pixel data and most of a header stay raw bytes).
    """
    if id(ds) in seen:
        return
    seen.add(id(ds))
    for tag in list(ds.keys()):
        number = int(tag)
        if number & 0x10000 or _is_curve_or_overlay(number):  # odd group: private
            del ds[tag]
            continue
        action = _TAG_ACTIONS.get(number)
        if action == "X":
            del ds[tag]
            continue
        vr = _vr(ds, tag)
        if action is None:
            if vr == "SQ":
                for item in ds[tag].value:
                    _clean(item, key, pseudo_id, seen)
            elif vr == "PN" and not _is_empty(ds, tag):
                _replace(ds, tag, "PN", "")
            elif vr in ("DA", "DT"):
                del ds[tag]
        elif action == "Z":
            _replace(ds, tag, vr, DicomSequence([]) if vr == "SQ" else "")
        elif action == "D":  # only PatientName/PatientID: the dummy is the pseudonym
            _replace(ds, tag, vr, pseudo_id)
        elif action == "U":
            uids = _uids(ds, tag)
            if len(uids) > 1:
                _replace(ds, tag, "UI", [pseudonymous_uid(u, key) for u in uids])
            elif uids and uids[0]:
                _replace(ds, tag, "UI", pseudonymous_uid(uids[0], key))


def deidentify(ds: Dataset, key: bytes, source_patient_id: str | None = None,
               in_place: bool = False) -> Dataset:
    """Return a de-identified copy of ``ds`` (or ``ds`` itself, cleaned, with ``in_place``).

    Args:
        ds: a DICOM dataset (CT slice, SEG, ...), pixel data included or not.
        key: the pseudonymisation key (:func:`rgops.data.pseudonym.load_key`).
        source_patient_id: the source PatientID to pseudonymise; default ``ds.PatientID``.
        in_place: clean ``ds`` itself instead of a deep copy (ingest: saves copying pixel data).

    Returns:
        The dataset, with PatientID/PatientName = ``P-<16 hex>``, UIDs remapped with
        :func:`~rgops.data.pseudonym.pseudonymous_uid`, the Table E.1-1 actions applied
        recursively, private/curve/overlay tags removed and the de-identification flags set.

    Raises:
        DeidentificationError: no PatientID in ``ds`` and none given, or leftovers remain.
    """
    source = source_patient_id if source_patient_id is not None else str(ds.get("PatientID", "") or "")
    if not source.strip():
        raise DeidentificationError(
            "dataset has no PatientID and none was given; rgops links imaging to genes by PatientID, "
            "so every CT/SEG file needs one"
        )
    pseudo_id = pseudonymize(source, key)
    # Dataset.copy() is shallow: its sequences would be cleaned in the input too, so deep copy. The
    # pixel data (immutable bytes) is shared, not copied; a dataset read from a stream must not keep
    # it (ds.buffer), or the copy duplicates the whole file (rgops.serving.uploads drops it).
    out = ds if in_place else copy.deepcopy(ds)
    if hasattr(out, "file_meta"):
        if "MediaStorageSOPInstanceUID" in out.file_meta:
            out.file_meta.MediaStorageSOPInstanceUID = pseudonymous_uid(
                str(out.file_meta.MediaStorageSOPInstanceUID), key)
        if "SourceApplicationEntityTitle" in out.file_meta:  # names the sending site's node
            del out.file_meta.SourceApplicationEntityTitle
    _clean(out, key, pseudo_id, set())
    out.PatientID = pseudo_id
    out.PatientName = pseudo_id
    out.PatientIdentityRemoved = "YES"
    out.LongitudinalTemporalInformationModified = "REMOVED"
    out.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = DicomSequence([code])
    leftovers = find_identifiers(out)
    if leftovers:  # a bug in the table, never expected: refuse rather than pass PHI on
        raise DeidentificationError(
            f"de-identification left {len(leftovers)} identifying attribute(s): {leftovers[:5]}; "
            "fix rgops.data.deid.ACTIONS"
        )
    return out


def _check(ds: Dataset, path: str, needles: list[str], found: list[str], seen: set[int]) -> None:
    if id(ds) in seen:
        return
    seen.add(id(ds))
    for tag in ds.keys():
        number = int(tag)
        where = lambda: f"{path}{keyword_for_tag(tag) or str(tag)}"  # noqa: E731  (named only when found)
        if number & 0x10000:
            found.append(f"{where()}: private tag")
            continue
        if _is_curve_or_overlay(number):
            found.append(f"{where()}: curve/overlay")
            continue
        vr = _vr(ds, tag)
        if number in _REMOVED_TAGS:
            found.append(f"{where()}: present")
        elif number in _EMPTY_TAGS:
            if not _is_empty(ds, tag):
                found.append(f"{where()}: not empty")
        elif number in _DUMMY_TAGS:
            if not _PSEUDO_RE.match(str(ds[tag].value or "")):
                found.append(f"{where()}: not a pseudonym")
        elif vr == "PN":
            if not _is_empty(ds, tag) and not _PSEUDO_RE.match(str(ds[tag].value)):
                found.append(f"{where()}: person name")
        elif number in _UID_TAGS and not _is_empty(ds, tag):
            if not all(_KEYED_UID_RE.match(u) for u in _uids(ds, tag)):
                found.append(f"{where()}: UID not remapped")
        if vr == "SQ":
            for i, item in enumerate(ds[tag].value or []):
                _check(item, f"{where()}[{i}].", needles, found, seen)
        elif needles and vr not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            text = str(ds[tag].value).lower()
            if any(n in text for n in needles):
                found.append(f"{where()}: holds a planted identifier")


def find_identifiers(ds: Dataset, planted: Iterable[str] = ()) -> list[str]:
    """List the places where ``ds`` still holds identifying information.

    Checks, recursively: private, curve and overlay tags; Table E.1-1 attributes that must be
    removed (present) or emptied (non-empty); person names other than the pseudonym; PatientID
    not a pseudonym; UIDs of the table not keyed (``2.25.``); PatientIdentityRemoved not ``YES``;
    and any text element that contains one of the ``planted`` strings (case-insensitive).

    Returns:
        Human-readable locations (``"InstitutionName: present"``), empty when clean. Values are
        never included, so the result can be logged.
    """
    found: list[str] = []
    if str(ds.get("PatientIdentityRemoved", "")) != "YES":
        found.append("PatientIdentityRemoved: not YES")
    _check(ds, "", [p.lower() for p in planted if p], found, set())
    fm = getattr(ds, "file_meta", None)
    if fm is not None and "MediaStorageSOPInstanceUID" in fm and not _KEYED_UID_RE.match(
            str(fm.MediaStorageSOPInstanceUID)):
        found.append("file_meta.MediaStorageSOPInstanceUID: UID not remapped")
    return found


__all__ = ["ACTIONS", "KEEP_SEQUENCES", "METHOD", "deidentify", "find_identifiers"]
