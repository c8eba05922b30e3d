"""The worker processes of one server, and the folder they share.

One Python process answers HTTP on one event loop and holds the GIL for every request's parsing and
answer: on a 2-core machine a single worker reached 0.58-0.68 of in-process throughput at 8 clients,
two workers 0.86-0.93 (bench/serve.py, issue #13). Several workers must still behave as one server:

* ``/admin/reload`` reaches one worker. It reloads, then *announces* the reload in the shared
  folder; every other worker's reloader watches for announcements, reloads and *acknowledges*; the
  route answers once every live worker has acknowledged (or after the reload timeout, naming the
  workers that did not).
* ``/readyz`` reaches one worker. Each worker publishes whether it has its models loaded; the
  server is ready when every live worker is (a balancer that sees 200 never sends a request to a
  worker that would answer 503).
* ``/metrics`` reaches one worker. Each worker writes a snapshot of its counters to the folder;
  the answering worker asks for fresh snapshots, waits briefly for them, and sums them. A worker
  that exits leaves its snapshot, so the server's counters never go backwards.

The folder is ``RGOPS_SERVE_STATE_DIR`` when set (``rgops serve`` sets a fresh one), else one per
server under the temp folder, named by the parent process (BentoML's arbiter) and its start time, so
two servers never share one and a reused PID never finds an old folder. It holds counters, PIDs and
version tokens only: never a request's content.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rgops.errors import ConfigError

STATE_DIR_ENV = "RGOPS_SERVE_STATE_DIR"


def _start_ticks(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or ``"0"``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def new_token() -> str:
    """A token that sorts after every token made before it on this machine (nanoseconds, zero-padded)."""
    return f"{time.time_ns():020d}"


class WorkerGroup:
    """This worker's view of its server's workers (see the module docstring)."""

    def __init__(self, folder: str | Path, pid: int | None = None) -> None:
        self.folder = Path(folder)
        self.pid = os.getpid() if pid is None else pid
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            owner = self.folder.stat().st_uid
        except OSError as exc:
            raise ConfigError(f"cannot use {str(self.folder)!r} as the workers' shared folder ({exc}); set "
                              f"{STATE_DIR_ENV} to a writable folder") from None
        if hasattr(os, "getuid") and owner != os.getuid():
            raise ConfigError(f"the workers' shared folder {str(self.folder)!r} belongs to another user; set "
                              f"{STATE_DIR_ENV} to a folder of this user")

    @classmethod
    def for_this_server(cls) -> "WorkerGroup":
        """The group of the server this process is a worker of (``RGOPS_SERVE_STATE_DIR`` or one per parent)."""
        folder = os.environ.get(STATE_DIR_ENV)
        if not folder:
            ppid = os.getppid()
            folder = str(Path(tempfile.gettempdir()) / f"rgops-serve-{ppid}-{_start_ticks(ppid)}")
        return cls(folder)

    # -- membership ---------------------------------------------------------------------------------

    def join(self) -> None:
        """Register this worker in the folder: its PID and that process's start time."""
        _write_atomic(self.folder / f"worker-{self.pid}", _start_ticks(self.pid))

    def live_pids(self) -> list[int]:
        """PIDs of the registered workers still running, this one included (a PID that an exited
        worker left and another process took since is not one: its start time differs)."""
        pids = []
        for path in self.folder.glob("worker-*"):
            try:
                pid = int(path.name.removeprefix("worker-"))
            except ValueError:
                continue
            if pid == self.pid or (_alive(pid) and _read(path) == _start_ticks(pid)):
                pids.append(pid)
        return sorted(pids)

    # -- readiness ----------------------------------------------------------------------------------

    def set_ready(self, ready: bool) -> None:
        """Publish whether this worker has every model loaded."""
        _write_atomic(self.folder / f"ready-{self.pid}", "1" if ready else "0")

    def not_ready(self, live: list[int] | None = None) -> list[int]:
        """Live workers (``live``, default :meth:`live_pids`) that have not published that they are
        ready (one just started counts)."""
        return [pid for pid in (self.live_pids() if live is None else live)
                if _read(self.folder / f"ready-{pid}") != "1"]

    # -- announcements (reload) ---------------------------------------------------------------------

    def announce(self, topic: str) -> str:
        """Tell every worker about a new event on ``topic``; the event's token."""
        token = new_token()
        _write_atomic(self.folder / f"{topic}.token", token)
        self.ack(topic, token)
        return token

    def latest(self, topic: str) -> str | None:
        """The token of the newest announcement on ``topic`` (None: none yet)."""
        return _read(self.folder / f"{topic}.token")

    def ack(self, topic: str, token: str) -> None:
        """Record that this worker has handled ``topic``'s event ``token``."""
        _write_atomic(self.folder / f"{topic}.ack-{self.pid}", token)

    def wait_acks(self, topic: str, token: str, timeout_s: float) -> list[int]:
        """Wait until every live worker has handled ``token`` (or a newer event); the PIDs that did not."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [pid for pid in self.live_pids()
                       if (_read(self.folder / f"{topic}.ack-{pid}") or "") < token]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.02)

    # -- snapshots (metrics) ------------------------------------------------------------------------

    def write_snapshot(self, topic: str, data: dict[str, Any]) -> None:
        _write_atomic(self.folder / f"{topic}.snap-{self.pid}", json.dumps(data))

    def snapshots(self, topic: str, include_self: bool = False) -> dict[int, dict[str, Any]]:
        """Every worker's last snapshot on ``topic`` (exited workers' included), by PID."""
        out: dict[int, dict[str, Any]] = {}
        for path in self.folder.glob(f"{topic}.snap-*"):
            try:
                pid = int(path.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid == self.pid and not include_self:
                continue
            text = _read(path)
            if text:
                try:
                    out[pid] = json.loads(text)
                except ValueError:  # a torn read cannot happen (atomic replace); a foreign file can
                    continue
        return out


__all__ = ["STATE_DIR_ENV", "WorkerGroup", "new_token"]
