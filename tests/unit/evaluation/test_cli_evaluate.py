"""`rgops evaluate` end to end through a real MLflow store: train a tiny CAE and GAN, evaluate them
from their logged models, and find the metrics and report on the models' runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rgops.cli import app

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path, monkeypatch, train_datasets_dir):
    from rgops.training.run import run_training

    monkeypatch.chdir(tmp_path)  # the local store's artifacts go under the working directory
    monkeypatch.setenv("RGOPS_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"] = {"n_splits": 2, "inner_splits": 2, "diversity_profiles": 2, "samples_per_profile": 2,
                          "traversal_values": [-1.0, 1.0]}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    runs = {k: run_training(k, train_datasets_dir, "tiny", params_path, device="cpu") for k in ("cae", "gan")}
    return params_path, runs


def test_evaluate_command_logs_to_model_runs(store, train_datasets_dir, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    params_path, runs = store
    out = tmp_path / "evaluation.json"
    res = CliRunner().invoke(app, ["evaluate", str(train_datasets_dir), "--cae", f"runs:/{runs['cae']}/model",
                                   "--gan", f"runs:/{runs['gan']}/model", "--out", str(out),
                                   "--report-dir", str(tmp_path / "report"), "--params", str(params_path)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert {"cae.cv_r2.mean", "cae.cca1", "radiomics.sig_pairs", "gan.frechet", "gan.cond_consistency"} <= set(
        doc["metrics"])
    assert doc["info"]["models"]["cae"]["run_id"] == runs["cae"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    for kind in ("cae", "gan"):
        run = client.get_run(runs[kind])
        assert run.data.metrics["gan.frechet"] == pytest.approx(doc["metrics"]["gan.frechet"])
        names = {a.path for a in client.list_artifacts(runs[kind], "evaluation")}
        assert {"evaluation/report.html", "evaluation/evaluation.json", "evaluation/figures"} <= names


def test_evaluate_command_reports_bad_input(tmp_path, train_datasets_dir):
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing"), "--no-mlflow",
                                   "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 1 and "error:" in res.output and "nothing" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(train_datasets_dir), "--encoder", "oops", "--no-mlflow",
                                   "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 1 and "NAME=URI" in res.output
