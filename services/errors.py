"""The one place where rgops errors become HTTP responses.

Every :class:`~rgops.errors.RgopsError` a request can raise maps to a status code and a JSON body
``{"error": <type>, "message": <what to do>, "request_id": <id>}``; the message is the error's own,
which already says what was received, what was expected and what to do. Client input never yields
a 5xx: the only 5xx are 503 when the registry itself is unreachable (retry later) and 502 when the
hospital PACS behind `/extract_study` fails or is not configured.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from rgops.errors import (
    CohortError,
    ConfigError,
    DatasetError,
    DeidentificationError,
    DicomDecodeError,
    DicomError,
    GeneMismatchError,
    GeneTableError,
    IntegrityError,
    PacsError,
    PromotionRefused,
    RegistryError,
    RgopsError,
    ShapeError,
    StudyNotFound,
    TrackingError,
)
from services.context import current_request_id

log = logging.getLogger("rgops.services")

F = TypeVar("F", bound=Callable[..., Any])

#: First match wins, so subclasses come before their parents.
STATUS: tuple[tuple[type[RgopsError], int], ...] = (
    (StudyNotFound, 404),          # no such study/series on the PACS
    (PacsError, 502),              # the PACS is unreachable, refused us, or no PACS is configured
    (DicomDecodeError, 415),       # a transfer syntax no installed decoder reads
    (DicomError, 422),             # not DICOM, truncated, not a CT series, SEG that does not fit
    (DeidentificationError, 422),
    (GeneMismatchError, 422),      # profile lacks panel genes (names them)
    (GeneTableError, 422),         # NaN / negative / non-numeric values, bad TSV
    (ShapeError, 422),             # patches or sample counts out of contract
    (DatasetError, 422),
    (CohortError, 422),
    (ConfigError, 400),            # request options that do not fit
    (PromotionRefused, 409),
    (IntegrityError, 409),         # a registered artifact that does not match its digest
    (RegistryError, 404),          # no such model/alias (e.g. nothing promoted yet)
    (TrackingError, 503),          # the registry is unreachable: the request may be retried
)


class RequestTooLarge(RgopsError, ValueError):
    """A request body above the configured limit."""


class Unauthorized(RgopsError, PermissionError):
    """A request without a valid API key."""


def status_of(exc: BaseException) -> int:
    """HTTP status for an exception raised while serving a request."""
    if isinstance(exc, RequestTooLarge):
        return 413
    if isinstance(exc, Unauthorized):
        return 401
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, RgopsError) else 500


def error_body(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc), "request_id": request_id}


def json_error(exc: RgopsError, request_id: str | None = None) -> Any:
    """A starlette JSONResponse for ``exc`` (BentoML passes a returned Response through as is)."""
    from starlette.responses import JSONResponse

    status = status_of(exc)
    headers = {"Retry-After": "30"} if status == 503 else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="rgops"'
    if request_id:
        headers["X-Request-ID"] = request_id
    # The type and status only: messages may quote request fields, and logs carry no payloads.
    log.info("request %s refused: %s -> %d", request_id, type(exc).__name__, status)
    return JSONResponse(error_body(exc, request_id), status_code=status, headers=headers)


def maps_errors(fn: F) -> F:
    """Decorate an API method so that an RgopsError it raises becomes its mapped JSON response."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RgopsError as exc:
            return json_error(exc, current_request_id())

    return wrapper  # type: ignore[return-value]
