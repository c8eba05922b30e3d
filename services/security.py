"""The ASGI gate in front of every rgops route: API keys, the body half of the input boundary,
request ids, error bodies, metrics and the request log.

Everything that can be decided from the request line and headers is answered before the body is
read: a missing or wrong key (401), two ``Authorization`` headers (401), an unknown path (404), a
``Content-Length`` above ``serve.max_request_mb`` (413), a Content-Type the route does not read
(415). The body is then read once by :mod:`services.boundary` (bounded, spooled, inspected) and
replayed to BentoML. Error responses BentoML makes itself are rewritten into the rgops body
(:func:`services.errors.rewrite_foreign`); 503s carry ``Retry-After``.

* Keys: ``Authorization: Bearer KEY`` exactly (one space, no surrounding whitespace), compared with
  every configured key in constant time (:func:`hmac.compare_digest`).
* Open without a key: ``/healthz``, ``/livez``, ``/readyz`` and ``/metrics`` (unless
  ``serve.metrics_require_key``). ``/readyz`` answers from the service's model slots (JSON: each
  model's version and last reload error) and ``/metrics`` from :class:`services.metrics.RequestMetrics`.
* One log line per request: route template, method, status, milliseconds, model version, request id;
  never a header, a body, a file name or an unknown path.
* ``GET /metadata`` is answered by the ``/metadata`` API (BentoML APIs are POST-only).
* A refusal sent before the client has finished its body (a 401, a 413 on ``Content-Length``, a
  body refused half-way) lingers: the answer is sent, then the rest of the body is read and
  discarded (at most :data:`LINGER_BYTES` and :data:`LINGER_S`) before the answer is completed.
  Without it a client that sends its whole body before reading (urllib, ``requests``) had the
  connection reset under it about one time in five and never saw the JSON refusal. A body too
  big to linger for is answered with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rgops.errors import ConfigError, RgopsError
from services.boundary import Body, BodyLimits, RouteFields, read_json, read_multipart
from services.context import (DIRECT, HEALTH, NEEDS_MODEL, RequestState, current_request_id, request_state_var,
                              worker_group)
from services.errors import (
    InternalError,
    NotFound,
    RequestTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    error_headers,
    rewrite_foreign,
    status_of,
)
from services.metrics import RequestMetrics

log = logging.getLogger("rgops.services")

PROBES = frozenset({"/healthz", "/livez", "/readyz"})
#: Framework pages that need the key like the APIs (OpenAPI, the docs UI).
DOC_PATHS = frozenset({"/", "/docs", "/docs.json", "/schema.json"})

#: The most of a refused request's unread body read and discarded so the client sees the answer.
LINGER_BYTES = 32 * 1024 * 1024
#: The longest a refusal waits for the rest of the body (a slow or stalled client is then cut off).
LINGER_S = 10.0

__all__ = ["LINGER_BYTES", "LINGER_S", "PROBES", "RgopsGate", "current_request_id", "key_matches", "load_api_keys"]

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


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key of the one ``Authorization: Bearer KEY`` header, or None (absent, repeated, another
    scheme, or whitespace around or inside the key: a key is compared exactly as configured)."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return None
    scheme, sep, key = values[0].partition(b" ")
    if scheme.lower() != b"bearer" or not sep or not key or any(c in key for c in b" \t\r\n"):
        return None
    return key


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str,
                     extra: Mapping[str, str] | None = None, more_body: bool = False) -> None:
    """Send ``body`` as JSON; with ``more_body`` the answer stays open (end it with an empty body)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": more_body})


class _Receipt:
    """The client's receive channel, noting whether the request body has been read to its end."""

    def __init__(self, receive: Receive, scope: Scope) -> None:
        self._receive = receive
        self.done = False
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), b"")
        #: the body is declared larger than a refusal lingers for
        self.too_big = declared.isdigit() and int(declared) > LINGER_BYTES

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message

    async def linger(self, budget: int, seconds: float) -> bool:
        """Read and discard the rest of the body; True once it has all been read (or the client
        has gone), False when it would take more than ``budget`` bytes or ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                message = await asyncio.wait_for(self(), left)
            except asyncio.TimeoutError:
                return False
            budget -= len(message.get("body", b""))
            if budget < 0 and not self.done:
                return False
        return True


class RgopsGate:
    """Pure ASGI middleware: see the module docstring.

    Args:
        app: the wrapped ASGI app.
        limits: body limits (:class:`services.boundary.BodyLimits`).
        routes: the API routes and their multipart fields; any other path (but the probes and the
            docs) is answered 404 before its body is read.
        metrics_require_key: ``/metrics`` needs the key too.
        keys: accepted API keys; default: :func:`load_api_keys` (the environment), read when the
            server builds its app, never at import.
        workers: the server's worker processes; with more than one, ``/metrics`` sums every worker's
            counters (:mod:`services.metrics`).
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits, routes: Mapping[str, RouteFields],
                 metrics_require_key: bool = False, keys: tuple[bytes, ...] | None = None, workers: int = 1) -> None:
        self.app = app
        self.keys = keys if keys is not None else load_api_keys()
        self.limits, self.routes = limits, dict(routes)
        self.metrics_require_key = metrics_require_key
        self.metrics = RequestMetrics(frozenset(self.routes) | PROBES | DOC_PATHS | {"/metrics"},
                                      worker_group(workers))
        install_log_filters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        receipt = _Receipt(receive, scope)
        rid = uuid.uuid4().hex
        state = RequestState(rid)
        token = request_state_var.set(state)
        t0 = time.perf_counter()
        status_box = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": headers + [(b"x-request-id", rid.encode())]}
            await send(message)

        try:
            if path in PROBES or path == "/metrics":
                await self._open(scope, receipt, send_with_id, rid, path)
            else:
                await self._handle(scope, receipt, send_with_id, rid, path)
        finally:
            request_state_var.reset(token)
            seconds = time.perf_counter() - t0
            self.metrics.observe(path, method, status_box[0], seconds)
            if path not in PROBES:
                log.info("%s %s -> %d in %.1f ms model=%s [%s]", method, self.metrics.route_of(path), status_box[0],
                         seconds * 1000, state.model or "-", rid)

    async def _refuse(self, send: Send, exc: BaseException, rid: str, receipt: _Receipt | None = None) -> None:
        """Answer ``exc``; with ``receipt`` whose body is unread, linger for it (module docstring)."""
        status = status_of(exc)
        headers = error_headers(status)
        if receipt is None or receipt.done:
            await _send_json(send, status, error_body(exc, rid), rid, headers)
        elif receipt.too_big:
            await _send_json(send, status, error_body(exc, rid), rid, {**headers, "Connection": "close"})
        else:
            await _send_json(send, status, error_body(exc, rid), rid, headers, more_body=True)
            if not await receipt.linger(LINGER_BYTES, LINGER_S):
                log.info("request %s: the refused body was not read to its end within the linger limits", rid)
            await send({"type": "http.response.body", "body": b""})

    async def _open(self, scope: Scope, receive: _Receipt, send: Send, rid: str, path: str) -> None:
        """The probes and /metrics: no body, no key (unless metrics_require_key)."""
        if path == "/metrics":
            if self.metrics_require_key and not self._authorised(scope):
                await self._refuse(send, self._unauthorised(), rid, receive)
                return
            data = await asyncio.to_thread(self.metrics.render)  # may wait briefly for the other workers
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        if path == "/readyz" and HEALTH:
            ready, body = HEALTH[0]()
            await _send_json(send, 200 if ready else 503, {**body, "request_id": rid}, rid,
                             None if ready else error_headers(503))
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        key = presented_key(scope.get("headers", []))
        return key is not None and key_matches(key, self.keys)

    @staticmethod
    def _unauthorised() -> Unauthorized:
        return Unauthorized("missing or invalid API key; send exactly one header 'Authorization: Bearer <key>' with "
                            "a key configured in RGOPS_API_KEYS or RGOPS_API_KEYS_FILE")

    async def _handle(self, scope: Scope, receive: _Receipt, send: Send, rid: str, path: str) -> None:
        if not self._authorised(scope):
            await self._refuse(send, self._unauthorised(), rid, receive)
            return
        try:
            self._check_head(scope, path)
            if path in NEEDS_MODEL:
                NEEDS_MODEL[path]()
            body = await self._read_body(scope, receive, path)
        except RgopsError as exc:
            await self._refuse(send, exc, rid, receive)
            return
        direct = DIRECT.get(path)
        if direct is not None and scope.get("method") == "POST" and body.json_bytes is not None:
            await self._direct(direct, body.json_bytes, send, rid)
            return
        if scope.get("method") == "GET" and path == "/metadata":
            scope = {**scope, "method": "POST", "headers": [
                h for h in scope["headers"] if h[0].lower() not in (b"content-type", b"content-length")]
                + [(b"content-type", b"application/json"), (b"content-length", b"2")]}
            body = Body(b"{}")
        try:
            await self.app(scope, body.receive, _RewritingSend(send, rid))
        finally:
            body.close()

    async def _direct(self, handler: Callable[[bytes], Any], data: bytes, send: Send, rid: str) -> None:
        """Answer a DIRECT route: the handler runs in a worker thread with this request's context."""
        try:
            answer = await asyncio.to_thread(handler, data)
        except RgopsError as exc:
            await self._refuse(send, exc, rid)
            return
        except Exception as exc:  # noqa: BLE001 - a bug: 500 with the rgops body, the type logged, no payload
            log.error("request %s: %s in a direct route", rid, type(exc).__name__)
            await self._refuse(send, InternalError(f"the server failed on this request ({type(exc).__name__}); "
                                                   f"it is a bug: report the request id {rid}"), rid)
            return
        await _send_json(send, 200, answer, rid)

    def _check_head(self, scope: Scope, path: str) -> None:
        """What the request line and headers already decide (before any body byte is read)."""
        if path not in self.routes and path not in DOC_PATHS:
            raise NotFound(f"no route {path[:60]!r}; the routes are {sorted(self.routes)} (GET /docs)")
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                from services.errors import BadRequest

                raise BadRequest("Content-Length is not a non-negative integer")
            if n > self.limits.max_body_bytes:
                mb = self.limits.max_body_bytes / (1024 * 1024)
                raise RequestTooLarge(f"request body has {n} bytes; the limit is {self.limits.max_body_bytes} bytes "
                                      f"({mb:g} MiB, serve.max_request_mb); split the upload into several requests")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype not in (b"", b"application/json", b"multipart/form-data") and path in self.routes:
            raise UnsupportedMediaType(f"Content-Type {ctype.decode('latin-1')[:60]!r} is not read here; send "
                                       "application/json or multipart/form-data")

    async def _read_body(self, scope: Scope, receive: Receive, path: str) -> Body:
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        ctype = headers.get(b"content-type", b"")
        if ctype.lower().startswith(b"multipart/form-data"):
            return await read_multipart(receive, ctype, self.routes.get(path), self.limits)
        if scope.get("method") in ("GET", "HEAD"):
            return Body(b"")
        return await read_json(receive, self.limits)


class _RewritingSend:
    """Passes responses through, but rewrites a framework's error response into the rgops body."""

    def __init__(self, send: Send, rid: str) -> None:
        self.send, self.rid = send, rid
        self.start: Message | None = None
        self.buf = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await self.send(message)
                return
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.buf += message.get("body", b"")
        if message.get("more_body", False):
            return
        status, exc = rewrite_foreign(self.start["status"], bytes(self.buf), self.rid)
        if exc is None:
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": bytes(self.buf)})
            return
        log.info("request %s: framework answer %d rewritten as %s", self.rid, self.start["status"],
                 type(exc).__name__)
        await _send_json(self.send, status, error_body(exc, self.rid), self.rid, error_headers(status))
