"""A refusal sent before the client has finished its body reaches the client (a real uvicorn server).

urllib sends ``Connection: close`` and its whole body before reading; when the server closed right
after a 401/413, the unread body made the kernel reset the connection, and about one request in
five saw ``Broken pipe`` instead of the JSON refusal (CI caught it once in the services suite).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
import uvicorn

from services.boundary import BodyLimits, RouteFields
from services.security import LINGER_BYTES, RgopsGate

KEY = "k" * 24


async def _ok(scope, receive, send) -> None:  # noqa: ANN001 - a plain ASGI app behind the gate
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def base():  # noqa: ANN201
    gate = RgopsGate(_ok, BodyLimits(1 << 20, 1 << 16, 8, 20, 10),
                     {"/extract": RouteFields(frozenset({"files"}), frozenset())}, keys=(KEY.encode(),))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(gate, host="127.0.0.1", port=port, log_level="warning", http="h11",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _post(url: str, key: str, body: bytes) -> urllib.error.HTTPError:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=B"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    return err.value


def test_a_client_that_sends_its_whole_body_first_reads_the_refusal(base: str) -> None:
    body = b"\0" * (3 * 1024 * 1024)
    for _ in range(20):  # without lingering, about 1 in 5 of these was a reset
        for key, status, words in (("wrong-key-0123456789abcdef", 401, "API key"), (KEY, 413, "limit")):
            err = _post(f"{base}/extract", key, body)
            assert err.code == status
            assert words in json.loads(err.read())["message"]


def test_a_keep_alive_connection_serves_on_after_a_refusal(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/extract", content=b"\0" * (2 * 1024 * 1024), headers={"Authorization": "Bearer nope-nope-nope-nope"})
        assert r.status_code == 401 and r.headers.get("connection") != "close"
        r = c.get("/extract", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.text == "ok"
        r = c.get("/extract")  # no body at all: the refusal does not wait for one
        assert r.status_code == 401


def test_a_body_too_big_to_linger_for_is_refused_with_connection_close(base: str) -> None:
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=30) as s:
        s.sendall(f"POST /extract HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {LINGER_BYTES + 1}\r\n\r\n".encode())
        head = s.recv(65536).decode("latin-1").lower()
    assert head.startswith("http/1.1 413") and "connection: close" in head
