"""The retrain flow under failure: a SIGKILL mid-training, and a tracking server that goes away.

Both use real processes: the flow runs in a child process that is killed with SIGKILL, and a real
`mlflow server` on localhost is killed before promotion and restarted to inspect what it holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, running_server

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOW_SCRIPT = """
import sys
from flows.retrain import retrain
retrain(cohort=sys.argv[1], workdir=sys.argv[2], params_path=sys.argv[3], preset=sys.argv[4],
        tracking_uri=sys.argv[5], approval="auto")
"""


def _env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: the test harness's Prefect API (a child starting its own ephemeral
    server times out on a busy 2-core box), MLflow without client-side retries."""
    from prefect.settings import PREFECT_API_URL

    return dict(os.environ, PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"),
                PREFECT_API_URL=str(PREFECT_API_URL.value()), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                MLFLOW_HTTP_REQUEST_TIMEOUT="10")


def _sigkill_group(proc: subprocess.Popen) -> None:
    """SIGKILL: the process gets no chance to clean up (no ``finally``, no MLflow end_run)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_mid_training_leaves_no_version_and_rerun_fails_the_orphan(prefect_harness, retrain_env, tmp_path,
                                                                            monkeypatch):
    from mlflow import MlflowClient

    from rgops.registry import Registry

    cohort, params = retrain_env
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = tmp_path / "work"
    client = MlflowClient(uri)
    # Create the store (and its schema) before the child starts: two processes migrating one SQLite
    # file at once lock it.
    exp_id = client.create_experiment("rgops", artifact_location=(tmp_path / "artifacts").as_uri())
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", FLOW_SCRIPT, str(cohort), str(work), str(params), "good", uri],
                                cwd=Path.cwd(), env=_env(tmp_path), start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
    killed_run = None
    try:
        deadline = time.monotonic() + 600
        while killed_run is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            running = [r for r in client.search_runs([exp_id], "attributes.status = 'RUNNING'")
                       if r.data.tags.get("rgops.pid") == str(proc.pid)]
            if running:
                killed_run = running[0].info.run_id
        assert killed_run is not None, (f"training never started (exit code {proc.poll()}): "
                                        f"{log.read_text(errors='replace')[-3000:]}")
    finally:
        _sigkill_group(proc)

    reg = Registry(uri)
    assert reg.versions("rgops-cae") == [] and reg.versions("rgops-gan") == []
    assert reg.aliases("rgops-cae") == {} and reg.aliases("rgops-gan") == {}
    assert client.get_run(killed_run).info.status == "RUNNING"  # nobody could mark it yet

    from flows.retrain import retrain

    state = retrain(cohort=str(cohort), workdir=str(work), params_path=str(params), preset="tiny",
                    tracking_uri=uri, approval="auto", return_state=True)
    assert state.is_completed(), state.message
    dead = client.get_run(killed_run)
    assert dead.info.status == "FAILED" and f"owner process {proc.pid}" in dead.data.tags["rgops.failure"]
    versions = reg.versions("rgops-cae") + reg.versions("rgops-gan")
    assert [v.version for v in versions] == ["1", "1"]
    assert killed_run not in {v.run_id for v in versions}  # only the re-run's models were registered


def _mlflow_server(root: Path, port: int):
    """A real `mlflow server` on ``port`` over ``root/server.db`` (stopped on leaving the block)."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
           str(root / "server-artifacts"), "--workers", "1"]
    return running_server(cmd, f"http://127.0.0.1:{port}/health", root / f"server-{port}.log", cwd=root,
                          timeout=180)


def test_tracking_server_gone_before_promotion_fails_cleanly(prefect_harness, retrain_env, tmp_path, monkeypatch):
    import threading

    from rgops.errors import TrackingError
    from rgops.registry import Registry

    cohort, params = retrain_env
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    evaluation = work / "evaluation" / "evaluation.json"
    stop = threading.Event()
    with _mlflow_server(tmp_path, port) as server:

        def kill_after_evaluation() -> None:  # the server dies once both models are trained and evaluated
            while not stop.is_set():
                if evaluation.is_file():
                    _sigkill_group(server)
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_after_evaluation, daemon=True)
        watcher.start()
        try:
            from flows.retrain import retrain

            state = retrain(cohort=str(cohort), workdir=str(work), params_path=str(params), preset="tiny",
                            tracking_uri=uri, approval="auto", return_state=True)
        finally:
            stop.set()
            watcher.join(timeout=10)
    assert state.is_failed()
    with pytest.raises(TrackingError, match=rf"MLflow tracking server at {uri} is unreachable"):
        state.result()

    with _mlflow_server(tmp_path, port):  # same backend store: what did it keep?
        reg = Registry(uri)
        for name in ("rgops-cae", "rgops-gan"):
            assert reg.versions(name) == [] and reg.aliases(name) == {} and reg.history(name) == []
