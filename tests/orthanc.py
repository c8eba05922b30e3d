"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests, on 127.0.0.1 only.

Orthanc 1.10 ignores ``HttpBindAddress`` and listens on every interface: remote access is refused
(``RemoteAccessAllowed: false``), authentication is on, the DICOM (DIMSE) server is off, the HTTP
port is a free port picked on 127.0.0.1, and the process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port
from tests.system_tools import PLUGIN, require

USER = "rgops-test"


@dataclass(frozen=True)
class OrthancServer:
    base: str  # REST root, http://127.0.0.1:PORT
    user: str
    password: str
    pid: int

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def env(self) -> dict[str, str]:
        """The environment rgops reads its PACS from."""
        return {"RGOPS_PACS_URL": self.dicomweb, "RGOPS_PACS_USER": self.user, "RGOPS_PACS_PASSWORD": self.password}

    def client(self):  # -> httpx.Client
        import httpx

        return httpx.Client(base_url=self.base, auth=(self.user, self.password), timeout=60)

    def upload(self, data: bytes) -> dict:
        """Store one DICOM file through the REST API (POST /instances)."""
        with self.client() as c:
            r = c.post("/instances", content=data, headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            return r.json()


@contextlib.contextmanager
def orthanc(folder: Path) -> Iterator[OrthancServer]:
    """Start Orthanc with its database under ``folder``; stop it (by PID) on exit."""
    import httpx

    require("Orthanc", dicomweb=True)
    password = secrets.token_hex(12)
    port = free_port()
    config = {
        "Name": "rgops-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: password},
        "DicomServerEnabled": False, "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpThreadsCount": 4, "ConcurrentJobs": 1, "StableAge": 1, "SaveJobs": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(f"http://127.0.0.1:{port}", USER, password, proc.pid)
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base}/system", auth=(USER, password), timeout=2).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError(f"Orthanc not ready: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()  # by its PID, never by name
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
