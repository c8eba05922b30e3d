"""Running the server as a child that never outlives ``rgops serve``.

``bentoml serve`` starts a supervisor and worker processes. Started plainly, stopping ``rgops serve``
(SIGTERM, or kill -9) left them running and serving, and a restart failed with "Address already in
use". Here the server runs in its own process group (its own session), the signals ``rgops serve``
receives are forwarded to the whole group, the group is stopped when ``rgops serve`` returns for any
reason, and on Linux the server's leader is also told to stop (SIGTERM) if ``rgops serve`` itself is
killed without a chance to forward anything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_group(pgid: int, grace_s: float = 20.0) -> None:
    """SIGTERM every process of the group, then SIGKILL what is left after ``grace_s`` seconds."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    log.warning("server process group %d did not stop after SIGKILL", pgid)


def run_in_group(cmd: Sequence[str], cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
                 grace_s: float = 20.0) -> int:
    """Run ``cmd`` in a new process group, forwarding SIGTERM/SIGINT/SIGHUP to the group; return its exit
    code once it has exited, after stopping anything it left behind."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
                            start_new_session=True, preexec_fn=_die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - SIGINT is forwarded by the handler above
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(proc.pid, grace_s)
    return code
