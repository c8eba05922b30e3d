"""`rgops train` against a real `mlflow server` on localhost."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import free_port, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    cmd = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{work}/server.db", "--artifacts-destination",
           str(work / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, url + "/health", work / "server.log", cwd=work, timeout=180):
        yield url, work


def test_train_against_mlflow_server(mlflow_server, train_datasets_dir, monkeypatch, tmp_path):
    import mlflow
    import mlflow.pytorch

    from rgops.cli import app
    from rgops.tracking import load_logged_model

    url, work = mlflow_server
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGOPS_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    params = str(Path(__file__).resolve().parents[2] / "params.yaml")
    res = CliRunner().invoke(app, ["train", "cae", str(train_datasets_dir), "--preset", "tiny", "--params", params,
                                   "--device", "cpu", "--experiment", "server-test"])
    assert res.exit_code == 0, res.output
    run_id = res.stdout.strip().splitlines()[-1]
    mlflow.set_tracking_uri(url)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "cae"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not local files
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert any((work / "artifacts").rglob("model.pth"))
    uri = run.data.tags["rgops.model_uri"]
    loaded = load_logged_model(uri)
    x, g = torch.rand(2, 1, 64, 64) * 2 - 1, torch.randn(2, 12)
    s = torch.zeros(2)  # log2 mm per pixel: the CAE reads the patch scale (patch contract v2)
    with torch.no_grad():
        assert torch.equal(loaded.module(x, g, s), mlflow.pytorch.load_model(uri).eval()(x, g, s))
