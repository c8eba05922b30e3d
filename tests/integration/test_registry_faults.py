"""Registry faults never reach requests. A real `mlflow server` behind a TCP proxy that the test can
make refuse connections or swallow them (accept, never answer), and a real `bentoml serve` that
reaches the registry only through the proxy:

* registry down at start: the probes answer at once, the model routes answer 503 with Retry-After
  and an rgops body, and the models load by themselves once the registry is back;
* registry hanging during reloads while requests run: every request is answered while the reload
  is still stuck, and /readyz says the reload failed while the loaded version serves;
* @champion moved under load: no request fails, and the server logs the old and new version.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port
from tests.integration.test_services import KEY, S, _publish_in

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PATCH = {"patches": [{"pixels": np.zeros((S, S)).tolist()}]}


class FaultProxy:
    """TCP proxy to ``target`` whose ``mode`` is ``up`` (forward), ``refuse`` (close each connection at
    once) or ``hang`` (accept and never answer). Switching mode drops every open connection, so a
    client's kept-alive connection meets the fault too."""

    def __init__(self, target: int) -> None:
        self.target, self.mode = target, "up"
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                mode = self.mode
                if mode == "refuse":
                    conn.close()
                    continue
                self.conns.append(conn)
                if mode == "hang":
                    continue
                up = socket.create_connection(("127.0.0.1", self.target))
                self.conns.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def _wait_http(url: str, seconds: float, status: int = 200) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == status:
                    return True
        except urllib.error.HTTPError as e:
            if e.code == status:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(mlflow server URL, proxy, work dir) with tiny champions registered on the server."""
    work = tmp_path_factory.mktemp("registry-faults")
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{work}/server.db",
                             "--artifacts-destination", str(work / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=open(work / "mlflow.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        if not _wait_http(url + "/health", 180):
            pytest.fail(f"mlflow server did not come up: {(work / 'mlflow.log').read_text()[-2000:]}")
        versions = _publish_in(work, url)
        yield url, FaultProxy(port), work, versions
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _serve(work: Path, registry_url: str, name: str) -> tuple[subprocess.Popen, str, Path]:
    params = work / f"{name}.yaml"
    params.write_text("serve:\n  reload_poll_s: 1\n  reload_timeout_s: 2\n  registry_retries: 0\n"
                      "  registry_timeout_s: 2\n  retry_after_s: 3\n  max_samples: 4\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry_url, "RGOPS_API_KEYS": KEY, "RGOPS_PARAMS": str(params),
           "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    port = free_port()
    log = work / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _client(base: str):  # noqa: ANN202
    import httpx

    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def test_registry_down_at_start(registry) -> None:
    _, proxy, work, versions = registry
    proxy.set("refuse")
    proc, base, log = _serve(work, f"http://127.0.0.1:{proxy.port}", "down-at-start")
    try:
        assert _wait_http(base + "/livez", 150), log.read_text()[-3000:]
        with _client(base) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "3"
            assert ready.json()["models"]["rgops-cae"]["loaded"] is False
            r = c.post("/extract_patches", json=PATCH)
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
            assert r.json()["error"] == "ServiceUnavailable" and r.json()["request_id"]
            g = c.post("/generate", json={"profile": {"GENE0": 1.0}, "impute": True})
            assert g.status_code == 503 and "retry" in g.json()["message"]
            proxy.set("up")
            assert _wait_http(base + "/readyz", 120), log.read_text()[-3000:]
            r = c.post("/extract_patches", json=PATCH)
            assert r.status_code == 200 and r.json()[0]["model"]["version"] == versions["cae"]
    finally:
        proxy.set("up")
        _stop(proc)


def test_registry_hanging_during_reload_never_stalls_requests(registry) -> None:
    url, proxy, work, versions = registry
    proxy.set("up")
    proc, base, log = _serve(work, f"http://127.0.0.1:{proxy.port}", "hang-during-reload")
    try:
        assert _wait_http(base + "/readyz", 150), log.read_text()[-3000:]
        with _client(base) as c:
            proxy.set("hang")
            reload_done = threading.Event()
            reload_answer: list = []

            def reload() -> None:
                with _client(base) as rc:
                    reload_answer.append(rc.post("/admin/reload"))
                reload_done.set()

            threading.Thread(target=reload, daemon=True).start()
            answered_during, statuses = 0, []
            while not reload_done.is_set() and answered_during < 200:
                r = c.post("/extract_patches", json=PATCH)
                statuses.append(r.status_code)
                if not reload_done.is_set():
                    answered_during += 1
            reload_done.wait(60)
            assert statuses and set(statuses) == {200}, statuses
            assert answered_during >= 1  # requests were answered while the reload was stuck on the registry
            answer = reload_answer[0].json()["models"]["rgops-cae"]
            assert reload_answer[0].status_code == 200 and answer["version"] == versions["cae"]
            assert answer["last_reload_ok"] is False and answer["last_reload_error"], answer
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["models"]["rgops-cae"]["last_reload_error"]
            assert c.get("/metadata").json()["models"]["rgops-cae"]["reload"]["last_reload_ok"] is False
            for _ in range(5):  # the poller keeps failing in the background; requests keep succeeding
                assert c.post("/extract_patches", json=PATCH).status_code == 200
            proxy.set("up")
    finally:
        proxy.set("up")
        _stop(proc)


def test_alias_move_under_load_drops_nothing(registry) -> None:
    url, proxy, work, versions = registry
    proxy.set("up")
    proc, base, log = _serve(work, f"http://127.0.0.1:{proxy.port}", "move-under-load")
    try:
        assert _wait_http(base + "/readyz", 150), log.read_text()[-3000:]
        stop = threading.Event()
        seen: list[tuple[int, str | None]] = []

        def hammer() -> None:
            with _client(base) as c:
                while not stop.is_set():
                    r = c.post("/extract_patches", json=PATCH)
                    seen.append((r.status_code, r.json()[0]["model"]["version"] if r.status_code == 200 else None))

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        new = _publish_in(work, url, seed=3)["cae"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(v == new for _, v in seen[-20:]):
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert seen and all(s == 200 for s, _ in seen), [s for s, _ in seen if s != 200][:5]
        assert {v for _, v in seen} >= {versions["cae"], new}
        assert f"rgops-cae@champion moved: now serving version {new} (was {versions['cae']})" in log.read_text()
    finally:
        _stop(proc)
