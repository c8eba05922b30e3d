"""flows/deploy.py against a real `prefect server start` on a free localhost port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prefect_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"`prefect server start` did not come up on port {port} (exit code {proc.poll()})")
            time.sleep(1)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_deployment_has_cron_schedule_and_scheduled_runs(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterStateName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import build_deployment

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        deployment = build_deployment(str(tmp_path / "cohort"), cron="*/5 * * * *", preset="tiny", approval="manual")
        deployment_id = deployment.apply()
        with get_client(sync_client=True) as client:
            dep = client.read_deployment(deployment_id)
            assert [s.schedule.cron for s in dep.schedules] == ["*/5 * * * *"]
            assert dep.parameters["approval"] == "manual" and dep.parameters["preset"] == "tiny"
            runs = []
            deadline = time.monotonic() + 60
            while not runs and time.monotonic() < deadline:  # the server's scheduler fills the schedule
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    flow_run_filter=FlowRunFilter(state=dict(name=FlowRunFilterStateName(any_=["Scheduled"]))))
                time.sleep(2)
    assert runs, ("the server scheduled no run of the deployment within 60 s; server log:\n"
                  + (tmp_path / "server.log").read_text(errors="replace")[-3000:])
    times = sorted(r.expected_start_time for r in runs)
    assert all((b - a).total_seconds() == 300 for a, b in zip(times, times[1:]))
