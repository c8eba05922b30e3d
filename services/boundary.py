"""The request body half of the input boundary: read once, bounded, inspected before BentoML sees it.

:class:`BodyLimits` come from ``serve:`` in params.yaml. :func:`read_body` reads the body of one
request and refuses it with a typed error (mapped to 413/415/422/400 in ``services/errors.py``):

* a JSON body is held in memory up to ``max_json_bytes`` and parsed once (orjson) to bound its
  nesting depth (a ``box`` nested 2,000 deep made BentoML's decoder raise RecursionError);
* a multipart body is streamed through ``python-multipart`` into a spooled temporary file (memory
  stays bounded whatever the size) while each part's headers are checked: only the route's own
  fields, file fields only as files (a text ``files`` field would make BentoML download a URL),
  text fields only as text, file names no longer than ``max_filename_chars`` (BentoML names its
  temporary file after them), text fields JSON-depth-checked; a body without its closing boundary
  is a truncated upload.

The accepted body is then replayed to the app from memory or the spool in 1 MiB chunks. Client
file names and field values never reach a log line or an error message (only field names do).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from rgops.errors import LimitExceeded, RgopsError
from services.errors import BadRequest, InputRefused

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
CHUNK = 1 << 20


@dataclass(frozen=True)
class RouteFields:
    """The multipart fields of one route: which are files, which are text."""

    files: frozenset[str]
    text: frozenset[str]


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    max_json_bytes: int
    max_json_depth: int
    max_filename_chars: int
    max_parts: int
    max_patches: int = 256


def too_deep(obj: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than ``limit`` containers (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def check_json(data: bytes, limits: BodyLimits, where: str) -> Any:
    """Refuse JSON that does not parse or nests deeper than the limit (NaN and Infinity, which Python's
    json reads, pass here: the route refuses them with a message naming the field)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc):
            raise InputRefused(f"{where} nests deeper than {limits.max_json_depth} levels (serve.max_json_depth); "
                               "send flat arrays and objects") from None
        try:
            value = json.loads(data)
        except RecursionError:
            raise InputRefused(f"{where} nests deeper than {limits.max_json_depth} levels "
                               "(serve.max_json_depth); send flat arrays and objects") from None
        except ValueError:
            raise BadRequest(f"{where} is not valid JSON (at character {exc.pos}); send a JSON document") from None
    if too_deep(value, limits.max_json_depth):
        raise InputRefused(f"{where} nests deeper than {limits.max_json_depth} levels (serve.max_json_depth); "
                           "send flat arrays and objects")
    return value


class Body:
    """An accepted body, replayed to the app in chunks (from memory or a spooled temporary file)."""

    def __init__(self, data: bytes | None = None, spool: IO[bytes] | None = None) -> None:
        self._data, self._spool, self._done = data, spool, False

    async def receive(self) -> Message:
        if self._done:
            return {"type": "http.disconnect"}
        if self._spool is None:
            self._done = True
            return {"type": "http.request", "body": self._data or b"", "more_body": False}
        chunk = self._spool.read(CHUNK)
        more = len(chunk) == CHUNK
        if not more:
            self.close()
        return {"type": "http.request", "body": chunk, "more_body": more}

    @property
    def json_bytes(self) -> bytes | None:
        """The body when it was read as JSON (held in memory); None for a spooled multipart body."""
        return self._data if self._spool is None else None

    def close(self) -> None:
        self._done = True
        if self._spool is not None:
            self._spool.close()


async def _chunks(receive: Receive, limit: int, what: str):  # noqa: ANN202 - async generator of bytes
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before the body was complete; send it again")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise LimitExceeded(f"{what} has more than {limit} bytes; the limit is {limit} bytes "
                                f"({limit / CHUNK:g} MiB); split the upload into several requests")
        yield chunk
        if not message.get("more_body", False):
            return


async def read_json(receive: Receive, limits: BodyLimits) -> Body:
    buf = bytearray()
    async for chunk in _chunks(receive, limits.max_json_bytes, "the JSON body (serve.max_json_mb)"):
        buf += chunk
    if buf.strip():
        value = check_json(bytes(buf), limits, "the JSON body")
        patches = value.get("patches") if isinstance(value, dict) else None
        if isinstance(patches, list) and len(patches) > limits.max_patches:
            raise LimitExceeded(f"the request carries {len(patches)} patches; at most {limits.max_patches} per "
                                "request (serve.max_patches): split it")
    return Body(bytes(buf))


async def read_multipart(receive: Receive, content_type: bytes, fields: RouteFields | None,
                         limits: BodyLimits) -> Body:
    """Stream a multipart body into a spool, checking every part's headers (see the module docstring)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary in its Content-Type; let the HTTP client build it")
    inspector = _PartInspector(fields, limits)
    parser = MultipartParser(boundary, inspector.callbacks())
    spool = tempfile.SpooledTemporaryFile(max_size=CHUNK)
    try:
        async for chunk in _chunks(receive, limits.max_body_bytes, "the request body (serve.max_request_mb)"):
            spool.write(chunk)
            parser.write(chunk)
            inspector.raise_if_refused()
        parser.finalize()
        inspector.raise_if_refused()
        if not inspector.ended:
            raise BadRequest("the multipart upload ends before its closing boundary; it was truncated: send the "
                             "complete files again")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return Body(spool=spool)


class _PartInspector:
    """python-multipart callbacks that check each part's headers and bound the text fields."""

    def __init__(self, fields: RouteFields | None, limits: BodyLimits) -> None:
        self.fields, self.limits = fields, limits
        self.header_field, self.header_value = bytearray(), bytearray()
        self.disposition: bytes = b""
        self.text: bytearray | None = None
        self.text_bytes = 0
        self.parts = 0
        self.ended = False
        self.refusal: RgopsError | None = None

    def callbacks(self) -> Mapping[str, Callable[..., None]]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def _refuse(self, exc: RgopsError) -> None:
        if self.refusal is None:
            self.refusal = exc

    def _part_begin(self) -> None:
        self.parts += 1
        self.disposition, self.text = b"", None
        if self.parts > self.limits.max_parts:
            self._refuse(LimitExceeded(f"the upload has more than {self.limits.max_parts} parts (serve.max_files "
                                       "+ fields); split the upload"))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        if len(self.header_value) > 4 * self.limits.max_filename_chars + 1024:
            self._refuse(InputRefused(f"a part header is longer than {4 * self.limits.max_filename_chars + 1024} "
                                      "bytes; send shorter file names (serve.max_filename_chars)"))

    def _header_end(self) -> None:
        if bytes(self.header_field).strip().lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field, self.header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self.disposition)
        name = params.get(b"name", b"").decode("latin-1")
        filename = params.get(b"filename")
        shown = name if len(name) <= 40 else name[:40] + "..."
        if self.fields is not None and name not in self.fields.files | self.fields.text:
            self._refuse(InputRefused(f"unknown field {shown!r}; this route reads "
                                      f"{sorted(self.fields.files | self.fields.text)}"))
        elif filename is not None and len(filename.decode("utf-8", "replace")) > self.limits.max_filename_chars:
            self._refuse(InputRefused(f"a file name in field {shown!r} has {len(filename)} characters; at most "
                                      f"{self.limits.max_filename_chars} (serve.max_filename_chars); rename the file"))
        elif self.fields is not None and name in self.fields.files and filename is None:
            self._refuse(InputRefused(f"field {shown!r} must be a file upload (Content-Disposition with a filename); "
                                      "text, such as a URL to fetch, is refused"))
        elif self.fields is not None and name in self.fields.text and filename is not None:
            self._refuse(InputRefused(f"field {shown!r} is a value, not a file; send it as a text field"))
        elif filename is None:
            self.text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.text is None:
            return
        self.text_bytes += end - start
        if self.text_bytes > self.limits.max_json_bytes:
            self._refuse(LimitExceeded(f"the text fields of the upload have more than {self.limits.max_json_bytes} "
                                       "bytes (serve.max_json_mb)"))
            self.text = None
            return
        self.text += data[start:end]

    def _part_end(self) -> None:
        text = bytes(self.text).strip() if self.text is not None else b""
        if text[:1] in (b"[", b"{"):
            try:
                check_json(text, self.limits, "a multipart field")
            except BadRequest:
                pass  # not JSON after all: the route's validation names the field
            except RgopsError as exc:
                self._refuse(exc)
        self.text = None

    def _end(self) -> None:
        self.ended = True
