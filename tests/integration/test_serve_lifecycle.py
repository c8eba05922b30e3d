"""`rgops serve` never leaves a server behind: stopped by SIGTERM, or killed with SIGKILL, every
`bentoml serve` process it started goes away and the port is free again. A real `rgops serve`
process (no model registered: the server answers its probes while it waits for one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-api-key-0123456789abcdef"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children of each thread, recursively)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(predicate, seconds: float) -> bool:  # noqa: ANN001 - a no-argument callable
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return predicate()


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    import httpx

    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  reload_poll_s: 0\n")
    env = {**os.environ, "RGOPS_API_KEYS": KEY, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "rgops.cli", "serve", "--port", str(port), "--params", str(params)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    if not _wait(up, 150):
        proc.kill()
        raise RuntimeError(f"rgops serve did not come up: {(tmp_path / 'serve.log').read_text()[-3000:]}")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_rgops_serve_stops_every_server_process(tmp_path: Path, sig: int) -> None:
    import httpx

    port = free_port()
    proc = _start(tmp_path, port)
    children = descendants(proc.pid)
    assert children, "rgops serve started no server process"
    # no model is registered: the probes answer, a model route says 503 with Retry-After and an rgops body
    r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"profile": {"A": 1.0}},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"] == "ServiceUnavailable", r.text
    os.kill(proc.pid, sig)
    proc.wait(60)
    assert _wait(lambda: not any(alive(c) for c in children), 60), \
        f"left running: {[c for c in children if alive(c)]}"
    assert _wait(lambda: port_free(port), 30)
