"""flows/deploy.py against a real `prefect server start` on a free localhost port."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, running_server

pytestmark = pytest.mark.integration


@pytest.fixture()
def prefect_server(tmp_path):
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(cmd, f"{url}/health", tmp_path / "server.log", cwd=tmp_path, env=env):
        yield url


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
