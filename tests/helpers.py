"""Helpers shared by the integration tests: one free-port picker and one way to start a real server
process and stop it (with every child it started)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started in its own session and everything it started: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind by a leader that exited
    proc.wait(timeout=timeout)


def start_server(cmd: Sequence[str], health_url: str, log: Path, *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = 240) -> subprocess.Popen:
    """Start ``cmd`` in its own session (output to ``log``) and wait until ``health_url`` answers.

    Fails the test, with the end of the log, when the process exits or the URL does not answer in
    ``timeout`` seconds; the process group is stopped then.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            code = proc.poll()
            stop_group(proc)
            pytest.fail(f"{' '.join(cmd[:3])} did not answer {health_url} (exit code {code}):\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_server(cmd: Sequence[str], health_url: str, log: Path, **kw: object) -> Iterator[subprocess.Popen]:
    """:func:`start_server` as a context manager that stops the process group on exit."""
    proc = start_server(cmd, health_url, log, **kw)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        stop_group(proc)
