"""`rgops evaluate` end to end through a real MLflow store: train a tiny CAE and GAN, evaluate them
from their logged models, and find the metrics and report on the models' runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from rgops.cli import app

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def train_datasets_dir(tmp_path_factory):
    """A datasets folder as `rgops ingest` writes it: 24 patients (16 train, 8 held out), S=32,
    12 genes, a disc whose radius follows gene 0."""
    from rgops.data.datasets import GenePanel

    rng = np.random.default_rng(0)
    n, s, g = 24, 32, 12
    genes = rng.standard_normal((n, g)).astype(np.float32)
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    inside = (yy[None] ** 2 + xx[None] ** 2) < (s * (0.18 + 0.06 * np.tanh(genes[:, 0])))[:, None, None] ** 2
    patches = np.clip(np.where(inside, 0.3, -0.8) + 0.05 * rng.standard_normal((n, s, s)), -1, 1)
    ids = [f"P-{i:016x}" for i in range(n)]
    root = tmp_path_factory.mktemp("eval-datasets") / "datasets"
    root.mkdir()
    np.save(root / "patches.npy", patches.astype(np.float32)[:, None])
    np.save(root / "masks.npy", inside[:, None].astype(np.uint8))
    names = [f"GENE{j}" for j in range(g)]
    pd.DataFrame(genes, columns=names, index=pd.Index(ids, name="pseudo_id")).to_parquet(root / "genes.parquet")
    GenePanel(tuple(names), np.zeros(g), np.ones(g), n_train=16).save(root / "gene_panel.json")
    split = (["train", "train", "val", "test"] * n)[:n]
    pd.DataFrame({"pseudo_id": ids, "split": split}).to_parquet(root / "manifest.parquet")
    return root


@pytest.fixture
def store(tmp_path, monkeypatch, train_datasets_dir):
    from rgops.training.run import run_training

    monkeypatch.chdir(tmp_path)  # the local store's artifacts go under the working directory
    monkeypatch.setenv("RGOPS_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"] = {"n_splits": 2, "inner_splits": 2, "diversity_profiles": 2, "samples_per_profile": 2,
                          "min_train_patients": 8, "min_held_out_patients": 4, "n_boot": 200,
                          "traversal_values": [-1.0, 1.0]}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    runs = {k: run_training(k, train_datasets_dir, "tiny", params_path, device="cpu") for k in ("cae", "gan")}
    return params_path, runs


@pytest.mark.slow
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
        # the primary probe-protocol numbers are run metrics, so the MLflow UI compares models by them
        for key in ("cae.probe_r2.primary", "cae.probe_r2.primary.lo", "radiomics.probe_r2.primary",
                    "cae.probe_diff.radiomics.primary", "handcrafted.probe_r2.primary"):
            assert run.data.metrics[key] == pytest.approx(doc["metrics"][key])
        names = {a.path for a in client.list_artifacts(runs[kind], "evaluation")}
        assert {"evaluation/report.html", "evaluation/evaluation.json", "evaluation/figures"} <= names
    from rgops.tracking import TAG_PROGRAM_HEAD, load_logged_model

    assert len(client.get_run(runs["cae"]).data.tags[TAG_PROGRAM_HEAD]) == 64  # the CAE's head goes with its run
    assert TAG_PROGRAM_HEAD not in client.get_run(runs["gan"]).data.tags
    assert load_logged_model(f"runs:/{runs['cae']}/model").program_head == doc["program_heads"]["cae"]


def test_evaluate_command_reports_bad_input(tmp_path, train_datasets_dir):
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing"), "--no-mlflow",
                                   "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 1 and "error:" in res.output and "nothing" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(train_datasets_dir), "--encoder", "oops", "--no-mlflow",
                                   "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 1 and "NAME=URI" in res.output
