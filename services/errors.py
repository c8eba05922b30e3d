"""The one place where errors become HTTP responses.

Every :class:`~rgops.errors.RgopsError` a request can raise maps to a status code and a JSON body
``{"error": <type>, "message": <what to do>, "request_id": <id>}``; the message is the error's own,
which already says what was received, what was expected and what to do. Responses the framework
makes itself (BentoML's request validation, its overload 503, Starlette's 404/405) are rewritten
into the same body by :func:`rewrite_foreign`, naming the field that failed validation. Client
input never yields a 5xx: the only 5xx a client sees is 503 with ``Retry-After`` (no model loaded
yet, or overload), or a 500 for a bug of ours (the fuzz suite looks for them); and 502 when the
hospital PACS behind ``/extract_study`` fails, refuses our credentials or is not configured.
"""

from __future__ import annotations

import functools
import json
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
    LimitExceeded,
    PacsError,
    PromotionRefused,
    RegistryError,
    RgopsError,
    ServiceUnavailable,
    ShapeError,
    StudyNotFound,
    TrackingError,
)
from services.context import current_request_id

log = logging.getLogger("rgops.services")

F = TypeVar("F", bound=Callable[..., Any])


class RequestTooLarge(RgopsError, ValueError):
    """A request body above the configured limit."""


class Unauthorized(RgopsError, PermissionError):
    """A request without a valid API key."""


class BadRequest(RgopsError, ValueError):
    """A body that is not what its Content-Type says (invalid JSON, a truncated multipart upload)."""


class UnsupportedMediaType(RgopsError, ValueError):
    """A Content-Type the route does not read."""


class InputRefused(RgopsError, ValueError):
    """A request whose fields do not fit the route: unknown field, a file where text belongs (or the
    reverse), a file name too long, JSON nested too deep, a field that fails validation."""


class NotFound(RgopsError, LookupError):
    """A path that is not a route of the service."""


class Overloaded(RgopsError, RuntimeError):
    """The server sheds load: retry after ``Retry-After`` seconds."""


class InternalError(RgopsError, RuntimeError):
    """A failure of the server itself (a bug): the request id finds it in the server log."""


#: First match wins, so subclasses come before their parents.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (StudyNotFound, 404),          # no such study/series on the PACS
    (PacsError, 502),              # the PACS is unreachable, refused us, or no PACS is configured
    (Unauthorized, 401),
    (RequestTooLarge, 413),
    (LimitExceeded, 413),          # bytes after decompression, zip members, pixels, patches
    (UnsupportedMediaType, 415),
    (BadRequest, 400),
    (InputRefused, 422),
    (NotFound, 404),
    (ServiceUnavailable, 503),     # no model loaded yet: retry after Retry-After
    (Overloaded, 503),
    (InternalError, 500),
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

#: ``Retry-After`` seconds of every 503 (``serve.retry_after_s``; set once by the service at start).
RETRY_AFTER_S = [5]


def status_of(exc: BaseException) -> int:
    """HTTP status for an exception raised while serving a request."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, RgopsError) else 500


def error_body(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc), "request_id": request_id}


def error_headers(status: int) -> dict[str, str]:
    """Headers every error response of ``status`` carries."""
    if status == 503:
        return {"Retry-After": str(RETRY_AFTER_S[0])}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="rgops"'}
    return {}


def json_error(exc: RgopsError, request_id: str | None = None) -> Any:
    """A starlette JSONResponse for ``exc`` (BentoML passes a returned Response through as is)."""
    from starlette.responses import JSONResponse

    status = status_of(exc)
    headers = error_headers(status)
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


def is_rgops_body(body: Any) -> bool:
    return isinstance(body, dict) and {"error", "message", "request_id"} <= set(body)


def validation_message(detail: list[Any]) -> str:
    """``field 'seed': Input should be less than 18446744073709551616; ...`` from pydantic's error list
    (locations and messages only: BentoML already leaves the input values out)."""
    parts = []
    for item in detail[:5]:
        if not isinstance(item, dict):
            continue
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"field {loc[:80]!r}: {str(item.get('msg', 'invalid'))[:160]}")
    more = f" (and {len(detail) - 5} more)" if len(detail) > 5 else ""
    return "; ".join(parts) + more + "; GET /docs shows each field's type"


def rewrite_foreign(status: int, raw: bytes, request_id: str) -> tuple[int, BaseException | None]:
    """A framework's error response -> ``(status, error)`` to answer instead, or ``(status, None)`` when
    the body already is an rgops error body."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if is_rgops_body(body):
        return status, None
    if isinstance(body, dict) and isinstance(body.get("detail"), list) and status in (400, 422):
        return 422, InputRefused(f"the request does not fit the route: {validation_message(body['detail'])}")
    if status == 503:
        return 503, Overloaded("the server is busy (its queue is full); retry after the Retry-After seconds")
    if status == 429:
        return 429, Overloaded("too many requests at once; retry after a moment")
    if status in (404, 405):
        return status, NotFound(f"no such route or method (HTTP {status}); the routes are listed at /docs")
    if status >= 500:
        return status, InternalError(f"the server failed on this request (HTTP {status}); it is a bug: report the "
                                     f"request id {request_id}")
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoML wraps some errors in a one-item list
    message = body.get("error") if isinstance(body, dict) else None
    return status, BadRequest(f"the request was refused (HTTP {status}): {str(message or 'no reason given')[:200]}")
