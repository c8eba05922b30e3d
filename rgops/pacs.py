"""A hospital PACS through DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with ``dicomweb-client``.

:class:`Pacs` finds a study's series (QIDO-RS), retrieves the CT and SEG series (WADO-RS) and
stores results back (STOW-RS); :func:`extract_study` runs one study through an extraction
function and, on request, stores the biomarker back as a TID 1500 SR (:mod:`rgops.dicom_sr`).

Configuration comes from the environment only, never from ``params.yaml``:
``RGOPS_PACS_URL`` (the DICOMweb root, e.g. ``https://pacs.example.org/dicom-web``),
``RGOPS_PACS_USER`` and ``RGOPS_PACS_PASSWORD`` (or ``RGOPS_PACS_PASSWORD_FILE``), and
``RGOPS_PACS_TIMEOUT_S`` (default 60).

Privacy: study and series UIDs are identifiers before de-identification; log lines name a study by
a keyed digest (:func:`study_label`), and nothing here writes a header to disk. The SR sent back
carries the study's own patient module, for the PACS the study came from only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from rgops.errors import ConfigError, DicomError, LimitExceeded, PacsError, StudyError, StudyNotFound

log = logging.getLogger(__name__)

#: DICOM JSON tags used in QIDO-RS answers.
TAG = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "Modality": "00080060",
       "SeriesNumber": "00200011", "SeriesDescription": "0008103E", "ModalitiesInStudy": "00080061",
       "NumberOfStudyRelatedInstances": "00201208", "NumberOfSeriesRelatedInstances": "00201209"}
#: The modalities extraction reads; any other series of a study is left on the PACS.
WANTED = ("CT", "SEG")
SR_DESCRIPTION = "rgops biomarker"


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS's DICOMweb service is and how to sign in."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PacsConfig":
        """Read ``RGOPS_PACS_URL``, ``RGOPS_PACS_USER``, ``RGOPS_PACS_PASSWORD[_FILE]``, ``RGOPS_PACS_TIMEOUT_S``.

        Raises:
            ConfigError: no URL, a URL that is not http(s) or carries credentials, a user without a
                password, or a timeout that is not a positive number.
        """
        env = os.environ if env is None else env
        url = env.get("RGOPS_PACS_URL", "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"RGOPS_PACS_URL is {url or 'unset'!r}; expected the PACS's DICOMweb root URL "
                              "(http(s)://host:port/dicom-web): set it in the environment")
        if "@" in url.split("//", 1)[1].split("/", 1)[0]:
            raise ConfigError("RGOPS_PACS_URL carries credentials; put the user in RGOPS_PACS_USER and the "
                              "password in RGOPS_PACS_PASSWORD or RGOPS_PACS_PASSWORD_FILE instead")
        user = env.get("RGOPS_PACS_USER") or None
        password = env.get("RGOPS_PACS_PASSWORD") or None
        if password is None and env.get("RGOPS_PACS_PASSWORD_FILE"):
            password = Path(env["RGOPS_PACS_PASSWORD_FILE"]).read_text().strip()
        if user and not password:
            raise ConfigError("RGOPS_PACS_USER is set without RGOPS_PACS_PASSWORD or RGOPS_PACS_PASSWORD_FILE")
        try:
            timeout = float(env.get("RGOPS_PACS_TIMEOUT_S", "60"))
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise ConfigError(f"RGOPS_PACS_TIMEOUT_S is {env.get('RGOPS_PACS_TIMEOUT_S')!r}; expected seconds > 0")
        return cls(url, user, password, timeout)


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: str | None, name: str) -> str:
    """A DICOM UID (digits and dots, at most 64 characters), else :class:`DicomError` naming the field."""
    if not isinstance(value, str) or not _UID.match(value) or len(value) > 64:
        raise DicomError(f"{name} is {str(value)[:80]!r}; expected a DICOM UID (digits and dots, at most 64 "
                         "characters), e.g. the StudyInstanceUID shown by the PACS")
    return value


def study_label(study_uid: str, key: bytes | None = None) -> str:
    """A keyed digest that names a study in logs and state files without its UID."""
    secret = key if key is not None else os.environ.get("RGOPS_PSEUDONYM_KEY", "rgops").encode()
    return "study-" + hmac.new(secret, study_uid.encode(), hashlib.sha256).hexdigest()[:16]


def _value(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    values = (obj.get(TAG[name]) or {}).get("Value") or []
    return values[0] if len(values) == 1 else (values or default)


@dataclass(frozen=True)
class SeriesRef:
    """A series as QIDO-RS describes it."""

    uid: str
    modality: str
    number: str = ""
    description: str = ""
    n_instances: int = 0


class Pacs:
    """A DICOMweb connection (``dicomweb_client.DICOMwebClient`` over an authenticated session)."""

    def __init__(self, config: PacsConfig) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        # dicomweb-client logs each request with its study and series UIDs at INFO: identifiers
        # before de-identification, which must not reach a log (its warnings still do)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        session = requests.Session()
        if config.username:
            session.auth = (config.username, config.password or "")
        self.client = DICOMwebClient(config.url, session=session, timeout=config.timeout_s)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one DICOMweb request; failures become :class:`PacsError` naming the request and what to do."""
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(f"the PACS refused {what} with HTTP {status}; check RGOPS_PACS_USER and "
                                "RGOPS_PACS_PASSWORD and the account's rights") from None
            if status == 404:
                raise StudyNotFound(f"the PACS has no {what.split(' ', 1)[-1]} (HTTP 404); check the study and "
                                    "series UIDs") from None
            raise PacsError(f"the PACS answered {what} with HTTP {status}; see the PACS's log") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PacsError(f"the PACS at {self.config.url} did not answer {what} ({type(exc).__name__}); check "
                            "RGOPS_PACS_URL and that the PACS is running, then retry") from None

    def studies(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """One page of the PACS's studies: ``{"uid", "modalities", "n_instances"}`` (QIDO-RS)."""
        found = self._call("a study search", self.client.search_for_studies, offset=offset, limit=limit,
                           fields=["ModalitiesInStudy", "NumberOfStudyRelatedInstances"])
        out = []
        for s in found:
            modalities = _value(s, "ModalitiesInStudy", [])
            out.append({"uid": str(_value(s, "StudyInstanceUID", "")),
                        "modalities": {modalities} if isinstance(modalities, str) else set(modalities),
                        "n_instances": int(_value(s, "NumberOfStudyRelatedInstances", 0) or 0)})
        return out

    def series(self, study_uid: str) -> list[SeriesRef]:
        """The series of a study (QIDO-RS).

        Raises:
            StudyNotFound: the PACS holds no series of that study.
        """
        found = self._call("a series search of the study", self.client.search_for_series,
                           study_instance_uid=study_uid,
                           fields=["SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"])
        if not found:
            raise StudyNotFound("the PACS holds no series of the requested study; check the StudyInstanceUID "
                                "and that the study has arrived")
        return [SeriesRef(str(_value(s, "SeriesInstanceUID", "")), str(_value(s, "Modality", "")),
                          str(_value(s, "SeriesNumber", "") or ""), str(_value(s, "SeriesDescription", "") or ""),
                          int(_value(s, "NumberOfSeriesRelatedInstances", 0) or 0))
                for s in found]

    def retrieve(self, study_uid: str, series: Sequence[SeriesRef]) -> list[Dataset]:
        """Every instance of ``series`` (WADO-RS), pixel data included."""
        out: list[Dataset] = []
        for s in series:
            out += self._call("a retrieval of the series", self.client.retrieve_series, study_uid, s.uid)
        return out

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Send instances to the PACS (STOW-RS)."""
        self._call("a store of the result", self.client.store_instances, list(datasets))


def fetch_study(pacs: Pacs, study_uid: str, series_uid: str | None = None,
                max_instances: int | None = None) -> list[Dataset]:
    """The CT and SEG instances of a study (all CT series, or only ``series_uid``, and every SEG).

    Other series (SR, presentation states, other modalities) stay on the PACS, each logged.

    Raises:
        StudyNotFound: no such study, or no series ``series_uid`` in it.
        StudyError: the study holds no CT or no SEG series (names the series found, what to send).
        LimitExceeded: the series to retrieve hold more than ``max_instances`` instances (checked
            on the PACS's counts before anything is retrieved).
    """
    label = study_label(study_uid)
    series = pacs.series(study_uid)
    if series_uid is not None and series_uid not in {s.uid for s in series}:
        raise StudyNotFound(f"the study has {len(series)} series, none with the requested SeriesInstanceUID; "
                            "leave series_uid out to let the SEG choose the CT series")
    wanted = [s for s in series if s.modality == "SEG" or (s.modality == "CT" and series_uid in (None, s.uid))]
    for s in series:
        if s not in wanted:
            log.info("%s: series %s (%s) not retrieved: extraction reads the CT series and the SEG",
                     label, s.number or "?", s.modality or "?")
    found = "; ".join(f"series {s.number or '?'}: {s.modality or '?'}" for s in series)
    if not any(s.modality == "SEG" for s in wanted) or not any(s.modality == "CT" for s in wanted):
        raise StudyError(f"the study holds no CT series with a DICOM SEG (found {found}); store the SEG of the "
                         "tumour, referencing its CT series, in the same study")
    total = sum(s.n_instances for s in wanted)
    if max_instances is not None and total > max_instances:
        raise LimitExceeded(f"the study's CT and SEG series hold {total} instances; at most {max_instances} "
                            "(serve.max_files): name the CT series with series_uid")
    return pacs.retrieve(study_uid, wanted)


def has_rgops_sr(series: Sequence[SeriesRef]) -> bool:
    """Whether a study already holds an SR that rgops stored (its series description says so)."""
    return any(s.modality == "SR" and s.description.startswith(SR_DESCRIPTION) for s in series)


def result_sr(ct: Sequence[Dataset], seg: Dataset, answer: Mapping[str, Any]) -> Dataset:
    """The SR of an extraction answer (``latent``, ``program_scores``, ``model``) for the study's own PACS."""
    from rgops.dicom_sr import ModelRef, measurement_report

    model = answer.get("model") or {}
    ref = ModelRef(str(model.get("name", "")), str(model.get("version", "")), str(model.get("alias") or ""),
                   str((model.get("trained_on") or {}).get("origin", "")))
    return measurement_report(ct, seg, answer["latent"], answer.get("program_scores"), ref, patient="source")


def extract_study(pacs: Pacs, study_uid: str, extract: Callable[[list[Dataset]], Mapping[str, Any]],
                  series_uid: str | None = None, store: bool = False,
                  max_instances: int | None = None, limits: Any = None) -> dict[str, Any]:
    """Retrieve a study, extract its biomarker with ``extract`` and, with ``store``, send the SR back.

    Args:
        pacs: the connection.
        study_uid: StudyInstanceUID on the PACS.
        extract: the CT series and its SEG (pydicom datasets, not yet de-identified) -> an
            ``/extract`` answer (``latent``, ``program_scores``, ``model``, ...); it de-identifies.
        series_uid: the CT series to use (default: the one the SEG references).
        store: store the TID 1500 SR in the study (STOW-RS).
        max_instances: refuse a study whose CT and SEG series hold more instances (the upload limit).
        limits: the upload limits (:class:`rgops.serving.config.UploadLimits`, default: its defaults);
            every retrieved instance gets an upload's per-file checks before extraction.

    Returns:
        The ``extract`` answer, plus ``series`` (each series retrieved, used or why not) and
        ``stored`` (the SR's new SOP and series instance UIDs, or None). No patient identifier.

    Raises:
        StudyNotFound, StudyError, PacsError, LimitExceeded, and what ``extract`` raises.
    """
    check_uid(study_uid, "study_uid")
    if series_uid is not None:
        check_uid(series_uid, "series_uid")
    label = study_label(study_uid)
    datasets = fetch_study(pacs, study_uid, series_uid, max_instances)
    from rgops.data.study import select_study
    from rgops.serving.config import UploadLimits
    from rgops.serving.uploads import check_retrieved

    check_retrieved(datasets, limits if limits is not None else UploadLimits())
    for ds in datasets:  # the response stream each instance was parsed from: not needed any more
        if getattr(ds, "buffer", None) is not None:
            ds.buffer = None

    selection = select_study(datasets)  # the same choice an upload gets
    answer = dict(extract([*selection.ct, selection.seg]))
    answer["series"] = [s.describe() for s in selection.series]
    answer["stored"] = None
    if store and selection.seg is not None:
        sr = result_sr(selection.ct, selection.seg, answer)
        pacs.store([sr])
        answer["stored"] = {"sop_instance_uid": str(sr.SOPInstanceUID), "series_instance_uid": str(sr.SeriesInstanceUID)}
    log.info("%s: biomarker extracted from %d CT instance(s)%s", label, len(selection.ct),
             "; SR stored on the PACS" if answer["stored"] else "")
    return answer


def connect(env: Mapping[str, str] | None = None) -> Pacs:
    """A :class:`Pacs` configured from the environment.

    Raises:
        PacsError: no usable PACS configuration (the message says which variable to set).
    """
    try:
        return Pacs(PacsConfig.from_env(env))
    except ConfigError as exc:
        raise PacsError(f"no PACS is configured for this service: {exc}") from None
