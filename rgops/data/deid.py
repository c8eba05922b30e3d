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
from collections.abc import Callable, Iterable
from typing import Literal

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from rgops.data.pseudonym import pseudonymize, pseudonymous_uid
from rgops.data.rawseq import (RawItem, RawSequenceError, dictionary_vr, encode_text, is_raw_sequence, parse, replaced,
                               text_values)
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
_CHECKED_TAGS = _UID_TAGS | _EMPTY_TAGS | _REMOVED_TAGS | _DUMMY_TAGS
_ACTION_VRS = frozenset({"SQ", "PN", "DA", "DT"})  # the VRs the walk acts on outside the table
_TABLE_ACTIONS = {"X": "delete", "Z": "empty", "D": "pseudonym", "U": "uids"}  # table code -> what the walks do
#: What every de-identified dataset is marked with (set by tag: a keyword assignment per element
#: looked the keyword up and validated the value each time).
_METHOD_CODE = (("CodeValue", "113100"), ("CodingSchemeDesignator", "DCM"),
                ("CodeMeaning", "Basic Application Confidentiality Profile"))
_MARK_TAGS = {k: BaseTag(tag_for_keyword(k)) for k in (
    "PatientID", "PatientName", "PatientIdentityRemoved", "LongitudinalTemporalInformationModified",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", *(k for k, _ in _METHOD_CODE))}
_MARK_VRS = {k: str(dictionary_VR(t)) for k, t in _MARK_TAGS.items()}
_MEDIA_UID = BaseTag(tag_for_keyword("MediaStorageSOPInstanceUID"))
_SOURCE_AE = BaseTag(tag_for_keyword("SourceApplicationEntityTitle"))
_PSEUDO_RE = re.compile(r"^P-[0-9a-f]{16}$")
_KEYED_UID_RE = re.compile(r"^2\.25\.\d+$")


def _is_curve_or_overlay(tag: int) -> bool:
    group = tag >> 16
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def _vr(tag: int, elem: DataElement | RawDataElement) -> str:
    """VR of an element without converting a raw element's value (implicit VR: dictionary VR)."""
    return str(elem.VR) if elem.VR else dictionary_vr(tag)


def _is_empty(elem: DataElement | RawDataElement) -> bool:
    if isinstance(elem, DataElement):
        return bool(elem.is_empty)
    return elem.length == 0 or not elem.value  # raw element: its bytes


def _uids(elem: DataElement | RawDataElement) -> list[str]:
    """The UID value(s) of an element, read from its raw bytes when it is still raw (no conversion:
    the same strings as pydicom's ``convert_UI``)."""
    if isinstance(elem, DataElement):
        value = elem.value
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, (list, tuple)) or elem.VM > 1 else [str(value)]
    return text_values(elem.value or b"")


def _replace(ds: Dataset, tag: BaseTag, vr: str, value: object) -> None:
    """Put a new element in place of ``tag`` without decoding the old one. The values written here
    (empty, a pseudonym, keyed UIDs, the fixed marks) are valid by construction, so pydicom's
    validation is skipped."""
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _is_private_curve_or_overlay(number: int) -> bool:
    return bool(number & 0x10000) or _is_curve_or_overlay(number)


def _action(number: int, vr: str) -> str | None:
    """What the profile does to one element: ``delete``, ``empty``, ``pseudonym``, ``uids`` (remap),
    ``recurse`` (a kept sequence) or None (keep). The one reading of the table for both walks."""
    if _is_private_curve_or_overlay(number):  # odd group: private
        return "delete"
    action = _TAG_ACTIONS.get(number)
    if action is None:
        if vr == "SQ":
            return "recurse"
        if vr == "PN":
            return "empty"
        return "delete" if vr in ("DA", "DT") else None
    return _TABLE_ACTIONS.get(action)


def _remapped(uids: list[str], key: bytes) -> list[str] | None:
    """The keyed replacements of ``uids``; None when there is nothing to replace."""
    if len(uids) > 1 or (uids and uids[0]):
        return [pseudonymous_uid(u, key) for u in uids]
    return None


def _clean(ds: Dataset, key: bytes, pseudo_id: str, seen: set[int], parsed: dict[int, list[RawItem]]) -> None:
    """Apply the action table to ``ds`` in place, recursing into kept sequences.

    ``seen`` holds the ids of items already cleaned: writers (highdicom among them) may put the
    same item object in several sequences, and a UID must be remapped exactly once. Elements are
    looked up by tag number, and only sequences are decoded: a replaced value is written as a new
    element without converting the old one (pixel data and most of a header stay raw bytes). A
    sequence pydicom has not decoded yet is cleaned from its bytes (:mod:`rgops.data.rawseq`) and
    stays raw; ``parsed`` maps its new value's id to the cleaned items, for the leftover check.
    """
    if id(ds) in seen:
        return
    seen.add(id(ds))
    for tag, elem in list(ds.items()):  # items(): raw elements stay raw
        number = int(tag)
        vr = _vr(number, elem)
        if number not in _TAG_ACTIONS and vr not in _ACTION_VRS and not _is_private_curve_or_overlay(number):
            continue  # kept as it is: most of a header
        what = _action(number, vr)
        if what == "delete":
            del ds[tag]
        elif what == "recurse":
            items = _parsed_sequence(number, elem)
            if items is not None:
                _clean_items(items, key, pseudo_id)
                ds[tag] = new = replaced(elem, items)
                parsed[id(new.value)] = items
            else:
                for item in ds[tag].value:
                    _clean(item, key, pseudo_id, seen, parsed)
        elif what == "empty" and not _is_empty(elem):
            _replace(ds, tag, vr, DicomSequence([]) if vr == "SQ" else "")
        elif what == "pseudonym":  # only PatientName/PatientID: the dummy is the pseudonym
            _replace(ds, tag, vr, pseudo_id)
        elif what == "uids" and (uids := _remapped(_uids(elem), key)) is not None:
            _replace(ds, tag, "UI", uids if len(uids) > 1 else uids[0])


def _parsed_sequence(number: int, elem: DataElement | RawDataElement) -> list[RawItem] | None:
    if not is_raw_sequence(number, elem):
        return None
    try:
        return parse(elem.value, elem.is_implicit_VR)
    except RawSequenceError:  # pydicom reads it, with its own errors
        return None


def _clean_items(items: list[RawItem], key: bytes, pseudo_id: str) -> None:
    """:func:`_clean` for the items of a sequence parsed from its bytes."""
    for item in items:
        kept = []
        for e in item.elements:
            what = _action(e.tag, e.vr)
            if what == "delete":
                continue
            if what == "recurse" and isinstance(e.value, list):
                _clean_items(e.value, key, pseudo_id)
            elif what == "empty":
                e.value = [] if e.vr == "SQ" else b""
            elif what == "pseudonym":
                e.value = encode_text([pseudo_id])
            elif what == "uids" and isinstance(e.value, bytes) and (uids := _remapped(text_values(e.value), key)):
                e.value = encode_text(uids, pad=b"\0")
            kept.append(e)
        item.elements = kept


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
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        if _MEDIA_UID in meta:
            _replace(meta, _MEDIA_UID, "UI", pseudonymous_uid(str(meta[_MEDIA_UID].value), key))
        if _SOURCE_AE in meta:  # names the sending site's node
            del meta[_SOURCE_AE]
    parsed: dict[int, list[RawItem]] = {}
    _clean(out, key, pseudo_id, set(), parsed)
    for keyword, value in (("PatientID", pseudo_id), ("PatientName", pseudo_id), ("PatientIdentityRemoved", "YES"),
                           ("LongitudinalTemporalInformationModified", "REMOVED"), ("DeidentificationMethod", METHOD)):
        _replace(out, _MARK_TAGS[keyword], _MARK_VRS[keyword], value)
    code = Dataset()
    for keyword, value in _METHOD_CODE:
        _replace(code, _MARK_TAGS[keyword], _MARK_VRS[keyword], value)
    _replace(out, _MARK_TAGS["DeidentificationMethodCodeSequence"], "SQ", DicomSequence([code]))
    leftovers = find_identifiers(out, parsed=parsed)
    if leftovers:  # a bug in the table, never expected: refuse rather than pass PHI on
        raise DeidentificationError(
            f"de-identification left {len(leftovers)} identifying attribute(s): {leftovers[:5]}; "
            "fix rgops.data.deid.ACTIONS"
        )
    return out


def _leftover(number: int, vr: str, empty: Callable[[], bool], text: Callable[[], str],
              uids: Callable[[], list[str]]) -> str | None:
    """What is wrong with one element of a de-identified dataset, or None (both walks' one check)."""
    if number & 0x10000:
        return "private tag"
    if _is_curve_or_overlay(number):
        return "curve/overlay"
    if number in _REMOVED_TAGS:
        return "present"
    if number in _EMPTY_TAGS:
        return None if empty() else "not empty"
    if number in _DUMMY_TAGS:
        return None if _PSEUDO_RE.match(text()) else "not a pseudonym"
    if vr == "PN":
        return None if empty() or _PSEUDO_RE.match(text()) else "person name"
    if number in _UID_TAGS and not empty() and not all(_KEYED_UID_RE.match(u) for u in uids()):
        return "UID not remapped"
    return None


def _name(path: str, tag: int) -> str:
    return f"{path}{keyword_for_tag(tag) or str(BaseTag(tag))}"


def _needs_check(number: int, vr: str) -> bool:
    """Whether :func:`_leftover` can object to an element at all (most of a header it cannot)."""
    return number in _CHECKED_TAGS or vr == "PN" or _is_private_curve_or_overlay(number)


def _check(ds: Dataset, path: str, needles: list[str], found: list[str], seen: set[int],
           parsed: dict[int, list[RawItem]]) -> None:
    if id(ds) in seen:
        return
    seen.add(id(ds))
    for tag, elem in list(ds.items()):
        number = int(tag)
        vr = _vr(number, elem)
        if _needs_check(number, vr):
            problem = _leftover(number, vr, lambda: _is_empty(elem), lambda: str(ds[tag].value or ""),
                                lambda: _uids(elem))
            if problem:
                found.append(f"{_name(path, number)}: {problem}")
                if problem in ("private tag", "curve/overlay"):
                    continue
        if vr == "SQ":
            # a raw sequence is checked from its bytes, unless planted text must be searched (decoded)
            items = None if needles else parsed.get(id(elem.value)) or _parsed_sequence(number, elem)
            if items is not None:
                _check_items(items, _name(path, number), found)
            else:
                for i, item in enumerate(ds[tag].value or []):
                    _check(item, f"{_name(path, number)}[{i}].", needles, found, seen, parsed)
        elif needles and vr not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            text = str(ds[tag].value).lower()
            if any(n in text for n in needles):
                found.append(f"{_name(path, number)}: holds a planted identifier")


def _check_items(items: list[RawItem], path: str, found: list[str]) -> None:
    """:func:`_check` for the items of a sequence parsed from its bytes (no planted text)."""
    for i, item in enumerate(items):
        for e in item.elements:
            problem = None
            if _needs_check(e.tag, e.vr):
                problem = _leftover(e.tag, e.vr, lambda: not e.value, lambda: "\\".join(text_values(e.value)),
                                    lambda: text_values(e.value))
                if problem:
                    found.append(f"{_name(f'{path}[{i}].', e.tag)}: {problem}")
            if isinstance(e.value, list) and problem not in ("private tag", "curve/overlay"):
                _check_items(e.value, _name(f"{path}[{i}].", e.tag), found)


def find_identifiers(ds: Dataset, planted: Iterable[str] = (),
                     parsed: dict[int, list[RawItem]] | None = None) -> list[str]:
    """List the places where ``ds`` still holds identifying information.

    Checks, recursively: private, curve and overlay tags; Table E.1-1 attributes that must be
    removed (present) or emptied (non-empty); person names other than the pseudonym; PatientID
    not a pseudonym; UIDs of the table not keyed (``2.25.``); PatientIdentityRemoved not ``YES``;
    and any text element that contains one of the ``planted`` strings (case-insensitive).

    ``parsed`` (from :func:`deidentify`) maps raw sequence values to their already parsed items, so
    that a sequence cleaned from its bytes is not parsed again.

    Returns:
        Human-readable locations (``"InstitutionName: present"``), empty when clean. Values are
        never included, so the result can be logged.
    """
    found: list[str] = []
    if str(ds.get("PatientIdentityRemoved", "")) != "YES":
        found.append("PatientIdentityRemoved: not YES")
    _check(ds, "", [p.lower() for p in planted if p], found, set(), parsed or {})
    fm = getattr(ds, "file_meta", None)
    if fm is not None and "MediaStorageSOPInstanceUID" in fm and not _KEYED_UID_RE.match(
            str(fm.MediaStorageSOPInstanceUID)):
        found.append("file_meta.MediaStorageSOPInstanceUID: UID not remapped")
    return found


__all__ = ["ACTIONS", "KEEP_SEQUENCES", "METHOD", "deidentify", "find_identifiers"]
