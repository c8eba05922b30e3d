"""The pure parts of the services' gate: key parsing, JSON depth, metrics labels, rewriting framework
error bodies, and the multipart inspection fed real multipart bytes (httpx builds them)."""

from __future__ import annotations

import asyncio
import json

import pytest

from rgops.errors import LimitExceeded
from services.boundary import BodyLimits, RouteFields, check_json, read_multipart, too_deep
from services.errors import BadRequest, InputRefused, rewrite_foreign
from services.metrics import RequestMetrics
from services.security import presented_key

LIMITS = BodyLimits(1 << 20, 1 << 16, 8, 20, 10)
EXTRACT = RouteFields(frozenset({"files"}), frozenset({"box", "profile"}))


def test_presented_key_is_exact_and_single() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == b"abc"
    assert presented_key([(b"Authorization", b"bearer abc")]) == b"abc"
    for bad in (b"Bearer abc ", b"Bearer abc\t", b"Bearer  abc", b"Basic abc", b"Bearer", b"Bearer "):
        assert presented_key([(b"authorization", bad)]) is None, bad
    assert presented_key([(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")]) is None


def test_json_depth() -> None:
    assert not too_deep({"a": [[1, 2], {"b": [3]}]}, 4) and too_deep([[[[[1]]]]], 4)
    check_json(b'{"a": [1, 2, NaN]}', LIMITS, "body")  # NaN passes here; the route names it
    with pytest.raises(InputRefused, match="max_json_depth"):
        check_json(b"[" * 5000 + b"]" * 5000, LIMITS, "body")
    with pytest.raises(BadRequest, match="not valid JSON"):
        check_json(b'{"a": ', LIMITS, "body")


def test_too_many_patches_refused_from_the_body() -> None:
    from services.boundary import read_json

    body = json.dumps({"patches": [{"pixels": [[0.0]]}] * 300}).encode()

    async def receive():  # noqa: ANN202
        return {"type": "http.request", "body": body, "more_body": False}

    with pytest.raises(LimitExceeded, match="300 patches"):
        asyncio.run(read_json(receive, BodyLimits(1 << 24, 1 << 24, 8, 20, 10, max_patches=256)))


def test_metrics_count_route_templates_only() -> None:
    m = RequestMetrics(frozenset({"/extract"}))
    for path in ("/extract", "/patient-ANON-1", "/x" * 50):
        m.observe(path, "POST", 404 if path != "/extract" else 200, 0.01)
    text = m.render().decode()
    assert 'route="other"' in text and "patient" not in text and 'route="/extract"' in text


def test_framework_errors_become_rgops_bodies() -> None:
    detail = {"error": "1 validation error for Input", "detail": [{"loc": ["body", "seed"], "msg": "too big"}]}
    status, exc = rewrite_foreign(400, json.dumps(detail).encode(), "rid")
    assert status == 422 and "field 'seed': too big" in str(exc)
    status, exc = rewrite_foreign(503, b'{"error": "An unexpected error"}', "rid")
    assert status == 503 and type(exc).__name__ == "Overloaded"
    assert rewrite_foreign(422, b'{"error": "X", "message": "m", "request_id": "r"}', "r") == (422, None)


def _multipart(files=None, data=None) -> tuple[bytes, bytes]:  # noqa: ANN001
    import httpx

    if not files:  # text fields only: build it by hand (httpx would send a urlencoded form)
        parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v.encode())
                         for k, v in data.items())
        return parts + b"--B--\r\n", b"multipart/form-data; boundary=B"

    req = httpx.Request("POST", "http://x/extract", files=files, data=data)
    return req.read(), req.headers["content-type"].encode()


def _inspect(body: bytes, ctype: bytes, fields: RouteFields = EXTRACT) -> None:
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]

    async def receive():  # noqa: ANN202
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    asyncio.run(read_multipart(receive, ctype, fields, LIMITS)).close()


@pytest.mark.parametrize("files, data, error, why", [
    (None, {"files": "http://127.0.0.1/x"}, InputRefused, "must be a file upload"),
    ({"file": ("a.dcm", b"DICM")}, None, InputRefused, "unknown field 'file'"),
    ({"files": ("P" * 40 + ".dcm", b"DICM")}, None, InputRefused, "serve.max_filename_chars"),
    ({"box": ("b.json", b"[1]")}, None, InputRefused, "is a value, not a file"),
    ({"files": ("a.dcm", b"x")}, {"box": "[" * 20 + "]" * 20}, InputRefused, "max_json_depth"),
    ([("files", (f"{i}.dcm", b"x")) for i in range(12)], None, LimitExceeded, "parts"),
])
def test_multipart_refusals(files, data, error, why) -> None:  # noqa: ANN001
    body, ctype = _multipart(files, data)
    with pytest.raises(error, match=why):
        _inspect(body, ctype)


def test_multipart_accepted_and_truncation_found() -> None:
    body, ctype = _multipart({"files": ("a.dcm", b"DICM" * 1000)}, {"box": "[1, 2, 3, 4]"})
    _inspect(body, ctype)
    with pytest.raises(BadRequest, match="truncated"):
        _inspect(body[:-30], ctype)


def test_direct_routes_are_answered_by_the_gate_with_rgops_errors() -> None:
    from rgops.errors import ShapeError
    from services.context import DIRECT
    from services.security import RgopsGate

    reached: list[str] = []

    async def app(scope, receive, send):  # noqa: ANN001, ANN202 - BentoML's side: must not be reached
        reached.append(scope["path"])

    def handler(body: bytes) -> list:
        value = json.loads(body)
        if value.get("bug"):
            raise KeyError("secret-payload-value")
        if not value.get("patches"):
            raise ShapeError("no patches")
        return [{"n": len(value["patches"])}]

    gate = RgopsGate(app, LIMITS, {"/extract_patches": RouteFields(frozenset(), frozenset())}, keys=(b"k" * 32,))

    def call(body: bytes) -> tuple[int, dict | list]:
        sent: list[dict] = []
        chunks = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():  # noqa: ANN202
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(message):  # noqa: ANN001, ANN202
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/extract_patches", "headers": [
            (b"authorization", b"Bearer " + b"k" * 32), (b"content-type", b"application/json")]}
        asyncio.run(gate(scope, receive, send))
        return sent[0]["status"], json.loads(sent[1]["body"])

    DIRECT["/extract_patches"] = handler
    try:
        assert call(b'{"patches": [1, 2]}') == (200, [{"n": 2}])
        status, body = call(b'{"patches": []}')
        assert status == 422 and body["error"] == "ShapeError" and body["message"] == "no patches"
        status, body = call(b'{"bug": true}')
        assert status == 500 and body["error"] == "InternalError" and "KeyError" in body["message"]
        assert "secret-payload-value" not in json.dumps(body)
        assert reached == []  # BentoML's app never saw these requests
    finally:
        DIRECT.pop("/extract_patches", None)
