import json
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from typer.testing import CliRunner

from rgops.cli import app
from rgops.errors import IntegrityError
from rgops.tracking import TAG_WEIGHTS, load_logged_model, resolve_tracking_uri, sha256_file

PARAMS = Path("params.yaml").resolve()


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("RGOPS_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://b:5000")
    assert resolve_tracking_uri() == "http://b:5000"
    monkeypatch.setenv("RGOPS_TRACKING_URI", "http://a:5000")
    assert resolve_tracking_uri() == "http://a:5000"


@pytest.fixture(scope="module")
def trained(train_datasets_dir, tmp_path_factory):
    """`rgops train cae` and `rgops train gan` on the embedded SQLite store in a fresh folder."""
    work = tmp_path_factory.mktemp("track")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("RGOPS_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = {}
    for kind in ("cae", "gan"):
        res = CliRunner().invoke(app, ["train", kind, str(train_datasets_dir), "--preset", "tiny", "--params",
                                       str(PARAMS), "--device", "cpu", "--metrics-out", f"out/{kind}.json",
                                       "--plots-out", f"out/{kind}.csv"])
        assert res.exit_code == 0, res.output
        runs[kind] = res.stdout.strip().splitlines()[-1]
    yield work, runs
    mp.undo()


@pytest.mark.parametrize("kind", ["cae", "gan"])
def test_cli_run_has_everything(trained, kind):
    work, runs = trained
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    run = mlflow.get_run(runs[kind])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((work / "mlartifacts").as_uri())
    p, t, m = run.data.params, run.data.tags, run.data.metrics
    assert p["kind"] == kind and p["preset"] == "tiny" and p["model.image_size"] == "64"
    assert t["rgops.device"] == "cpu" and t["rgops.torch_version"] == torch.__version__
    assert len(t["rgops.git_commit"]) >= 40 and len(t["rgops.dataset_digest"]) == 64 and t["rgops.dvc_hash"]
    assert len(t[TAG_WEIGHTS]) == 64
    assert run.inputs.dataset_inputs[0].dataset.digest == t["rgops.dataset_digest"][:36]
    key = "train_recon_mse" if kind == "cae" else "train_d_loss"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, key)
    assert [h.step for h in history] == [1, 2]
    arts = {a.path for d in ("plots", "samples", "reconstructions")
            for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path=d)}
    folder = "reconstructions" if kind == "cae" else "samples"
    assert {f"{folder}/epoch_001.png", f"{folder}/epoch_002.png", "plots/loss_curves.png"} <= arts
    assert json.loads((work / "out" / f"{kind}.json").read_text())[kind][key] == pytest.approx(m[key])
    assert (work / "out" / f"{kind}.csv").read_text().startswith("epoch,")
    assert not any("P-0" in str(v) for v in {**p, **t}.values())  # no pseudonymous ids, let alone source ids


@pytest.mark.parametrize("kind", ["cae", "gan"])
def test_logged_model_reloads_with_same_outputs(trained, kind):
    work, runs = trained
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    uri = mlflow.get_run(runs[kind]).data.tags["rgops.model_uri"]
    loaded = load_logged_model(uri)
    plain = mlflow.pytorch.load_model(uri).eval()
    assert loaded.kind == kind and loaded.run_id == runs[kind] and len(loaded.panel) == 12
    assert loaded.card["genes"]["order"] == list(loaded.panel.genes) and loaded.card["patch"]["hu_window"] == [-1000.0, 500.0]
    torch.manual_seed(0)
    g = torch.randn(2, 12)
    first = torch.rand(2, 1, 64, 64) * 2 - 1 if kind == "cae" else torch.randn(2, loaded.config.z_dim)
    extra = (torch.tensor([0.0, 1.0]),) if kind == "cae" and loaded.config.scale_input else ()  # log2 mm/px
    with torch.no_grad():
        assert torch.equal(loaded.module(first, g, *extra), plain(first, g, *extra))
    state = torch.load(Path(mlflow.artifacts.download_artifacts(uri)) / "extra_files" / "state_dict.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in loaded.module.state_dict().items())
    if kind == "cae":
        assert loaded.module.encode(first, g, *extra).shape == (2, loaded.config.latent_dim)


def test_tampered_model_is_refused_before_unpickling(trained):
    work, runs = trained
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    uri = mlflow.get_run(runs["cae"]).data.tags["rgops.model_uri"]
    recorded = load_logged_model(uri).weights_sha256
    cae_pickle = next(p for p in (work / "mlartifacts").rglob("data/model.pth") if sha256_file(p) == recorded)
    original = cae_pickle.read_bytes()
    try:
        cae_pickle.write_bytes(original + b"\x00")
        with pytest.raises(IntegrityError, match="data/model.pth"):
            load_logged_model(uri)
    finally:
        cae_pickle.write_bytes(original)
    assert load_logged_model(uri).kind == "cae"
