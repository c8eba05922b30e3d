"""The ASGI middleware in front of every rgops route: API keys, body limits, request ids.

* ``Authorization: Bearer KEY`` on every route except the orchestrator probes (``/healthz``,
  ``/livez``, ``/readyz``, ``/metrics``); the key is compared with every configured key in
  constant time (:func:`hmac.compare_digest`), so timing says nothing about a key's prefix.
* Bodies above the limit are refused with 413, from ``Content-Length`` before reading or while
  reading a chunked body. The body is then checked once: a multipart body that does not parse (a
  truncated upload) is a 400 here instead of an exception deep inside the framework.
* Each request gets an id (``X-Request-ID`` on the response; responses quote it) and a log line
  with method, route, status and milliseconds: no headers, no bodies, no identifiers.
* ``GET /metadata`` is answered by the ``/metadata`` API (BentoML APIs are POST-only).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rgops.errors import ConfigError
from services.context import current_request_id, request_id_var
from services.errors import RequestTooLarge, Unauthorized, error_body, status_of

log = logging.getLogger("rgops.services")

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})

__all__ = ["OPEN_PATHS", "RgopsGate", "current_request_id", "key_matches", "load_api_keys"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class NoPayloadInTracebacks(logging.Filter):
    """Drop the exception text of request-validation failures from BentoML's error log.

    BentoML logs pydantic's ValidationError with its traceback, whose message quotes the
    offending input values; the log keeps route and method, never the request's content.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError":
            record.msg = f"{record.msg} (request validation failed: {exc.error_count()} error(s); input not logged)"
            record.exc_info = None
            record.exc_text = None
        return True


def install_log_filters() -> None:
    """Attach :class:`NoPayloadInTracebacks` to the logger BentoML reports request errors on."""
    target = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, NoPayloadInTracebacks) for f in target.filters):
        target.addFilter(NoPayloadInTracebacks())


def load_api_keys(env: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """API keys from ``RGOPS_API_KEYS`` (comma-separated) and/or the file named by ``RGOPS_API_KEYS_FILE``
    (one key per line, ``#`` comments).

    Raises:
        ConfigError: no keys configured, the file is unreadable, or a key is shorter than 16 characters.
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get("RGOPS_API_KEYS", "").split(",") if k.strip()]
    path = env.get("RGOPS_API_KEYS_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"RGOPS_API_KEYS_FILE={path!r} cannot be read ({exc.strerror}); "
                              "point it at a file with one key per line") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise ConfigError("no API keys configured: set RGOPS_API_KEYS (comma-separated) or RGOPS_API_KEYS_FILE; "
                          "the services refuse to start without authentication")
    short = sum(len(k) < 16 for k in keys)
    if short:
        raise ConfigError(f"{short} API key(s) are shorter than 16 characters; use e.g. "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return tuple(k.encode() for k in keys)


def key_matches(presented: bytes, keys: Iterable[bytes]) -> bool:
    """Whether ``presented`` equals one of ``keys``; every key is compared, each in constant time."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(presented, k)
    return ok


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"x-request-id", request_id.encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class RgopsGate:
    """Pure ASGI middleware: authentication, body limit and request ids (see the module docstring).

    Args:
        app: the wrapped ASGI app.
        max_body_bytes: the largest request body accepted.
        keys: accepted API keys; default: :func:`load_api_keys` (the environment),
            read when the server builds its app, never at import.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, keys: tuple[bytes, ...] | None = None) -> None:
        self.app = app
        self.keys = keys if keys is not None else load_api_keys()
        install_log_filters()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        status_box = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": headers + [(b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, rid, path)
        finally:
            request_id_var.reset(token)
            log.info("%s %s -> %d in %.1f ms [%s]", scope.get("method"), path, status_box[0],
                     (time.perf_counter() - t0) * 1000, rid)

    async def _refuse(self, send: Send, exc: Exception, rid: str) -> None:
        status = status_of(exc)
        extra = [(b"www-authenticate", b'Bearer realm="rgops"')] if status == 401 else []
        await _send_json(send, status, error_body(exc, rid), rid, extra)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, rid: str, path: str) -> None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        auth = headers.get(b"authorization", b"")
        scheme, _, presented = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip() or not key_matches(presented.strip(), self.keys):
            await self._refuse(send, Unauthorized(
                "missing or invalid API key; send the header 'Authorization: Bearer <key>' with a key "
                "configured in RGOPS_API_KEYS or RGOPS_API_KEYS_FILE"), rid)
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                await _send_json(send, 400, {"error": "BadRequest", "request_id": rid,
                                             "message": "Content-Length is not a non-negative integer"}, rid)
                return
            if n > self.max_body_bytes:
                await self._refuse(send, self._too_large(n), rid)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._refuse(send, self._too_large(len(body), streamed=True), rid)
                return
            if not message.get("more_body", False):
                break
        if declared is not None and len(body) != int(declared):
            await _send_json(send, 400, {"error": "BadRequest", "request_id": rid, "message":
                                         f"body has {len(body)} bytes but Content-Length says {int(declared)}; "
                                         "the upload was truncated, send it again"}, rid)
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.startswith("multipart/form-data"):
            problem = await _multipart_problem(scope, bytes(body))
            if problem:
                await _send_json(send, 400, {"error": "BadRequest", "request_id": rid, "message":
                                             f"the multipart upload cannot be parsed ({problem}); it may be "
                                             "truncated: send the complete files again"}, rid)
                return
        if scope.get("method") == "GET" and path == "/metadata":
            scope = {**scope, "method": "POST",
                     "headers": [h for h in scope["headers"] if h[0].lower() not in (b"content-type", b"content-length")]
                     + [(b"content-type", b"application/json"), (b"content-length", b"2")]}
            body = bytearray(b"{}")
        replayed = [False]

        async def replay() -> Message:
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, n: int, streamed: bool = False) -> RequestTooLarge:
        mb = self.max_body_bytes / (1024 * 1024)
        got = f"more than {n}" if streamed else str(n)
        return RequestTooLarge(f"request body has {got} bytes; the limit is {self.max_body_bytes} bytes "
                               f"({mb:g} MiB, serve.max_request_mb); split the upload into several requests")


async def _multipart_problem(scope: Scope, body: bytes) -> str | None:
    """Parse a buffered multipart body; the parser's complaint, or None when it is well formed."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():  # noqa: ANN202 - async generator of the one buffered chunk
        yield body
        yield b""

    try:
        form = await MultiPartParser(Headers(scope=scope), stream(), max_files=100000, max_fields=1000).parse()
    except MultiPartException as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - any parser failure on client bytes is a client error
        return type(exc).__name__
    try:
        if not body.rstrip().endswith(b"--"):
            return "the closing boundary is missing"
    finally:
        await form.close()
    return None
