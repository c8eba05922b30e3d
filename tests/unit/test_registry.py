"""Registry: versions, aliases, recorded gates, approval record, rollback, orphaned runs — against a real
MLflow SQLite store. The pure gates are tested in test_promotion.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from rgops.errors import ConfigError, PromotionRefused, RegistryError, TrackingError
from rgops.promotion import evaluate_gates
from rgops.registry import CHALLENGER, CHAMPION, Decision, Registry, kind_of, model_name
from rgops.tracking import reap_orphan_runs
from tests.unit.test_promotion import CFG, DIGEST  # the gates' config of these tests



@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    """A real MLflow SQLite store holding one logged tiny model (built once per module)."""
    import mlflow
    import torch

    root = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_param("epochs", 2)
            module = torch.nn.Linear(3, 2)
            info = mlflow.pytorch.log_model(module, name="model", serialization_format="pickle",
                                            pip_requirements=["torch"])
            digest = hashlib.sha256(json.dumps({k: v.tolist() for k, v in module.state_dict().items()}).encode())
            mlflow.set_tag("rgops.weights_sha256", digest.hexdigest())
    finally:
        mlflow.set_tracking_uri(None)
    return root / "mlflow.db", run.info.run_id, info.model_uri


@pytest.fixture()
def store(_template, tmp_path):
    """A fresh copy of the template store: (Registry, run id, logged model URI)."""
    db, run_id, model_uri = _template
    shutil.copy(db, tmp_path / "mlflow.db")
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}"), run_id, model_uri


def _register(reg, run_id, uri, r2=0.3, kind="cae"):
    metrics = {"cae.cv_r2.mean": r2} if kind == "cae" else {"gan.frechet": r2}
    return reg.register(kind, uri, run_id, metrics=metrics,
                        data_version={"data_digest": DIGEST, "git_commit": "abc123"},
                        tags={"rgops.validation": "passed", "rgops.validation.data_digest": DIGEST},
                        description="# model card", actor="ci")


def _gate_and_decide(reg, info, reviewer="alice"):
    champ, champ_metrics, champ_digest = reg.champion_record(info.name)
    report = evaluate_gates(kind_of(info.name), info.metrics, CFG,
                            champion=champ_metrics if champ else None,
                            champion_version=champ.version if champ else None,
                            validation=info.tags["rgops.validation"],
                            validated_digest=info.tags["rgops.validation.data_digest"],
                            data_digest=info.tags["rgops.data_digest"], champion_data_digest=champ_digest)
    if not report.passed:
        raise reg.refuse(info.name, info.version, report)
    reg.record_gates(info.name, info.version, report)
    return reg.decide(info.name, info.version, Decision(True, reviewer, "looks good"))


def test_names():
    assert model_name("gan") == "rgops-gan" and kind_of("rgops-cae") == "cae"
    with pytest.raises(ConfigError, match="'vae'"):
        model_name("vae")
    with pytest.raises(RegistryError, match="rgops-foo"):
        kind_of("rgops-foo")


def test_register_carries_lineage_and_sets_challenger_only(store):
    reg, run_id, uri = store
    info = _register(reg, run_id, uri)
    assert info.version == "1" and info.aliases == (CHALLENGER,)
    t = info.tags
    assert t["rgops.data_digest"] == DIGEST and t["rgops.git_commit"] == "abc123"
    assert len(t["rgops.weights_sha256"]) == 64 and t["param.epochs"] == "2"
    assert info.metrics == {"cae.cv_r2.mean": 0.3} and t["decision"] == "pending"
    assert info.description == "# model card"
    assert CHAMPION not in reg.aliases("rgops-cae")
    assert [e.action for e in reg.history("rgops-cae")] == ["registered"]


def test_register_refuses_run_without_weights_digest(store, tmp_path):
    import mlflow

    reg, _, uri = store
    run = reg.client.create_run(reg.client.get_experiment_by_name("registry-test").experiment_id)
    with pytest.raises(RegistryError, match="rgops.weights_sha256"):
        reg.register("cae", uri, run.info.run_id, metrics={}, data_version={"data_digest": DIGEST})
    assert reg.versions("rgops-cae") == [] and isinstance(mlflow.__version__, str)


def test_failed_registration_leaves_no_version(store, monkeypatch):
    reg, run_id, uri = store
    from mlflow.exceptions import MlflowException

    def boom(*a, **k):
        raise MlflowException("API request to http://127.0.0.1:9/api failed: Connection refused")

    monkeypatch.setattr(reg.client, "set_registered_model_alias", boom)
    with pytest.raises(TrackingError, match="unreachable"):
        _register(reg, run_id, uri)
    monkeypatch.undo()
    assert reg.versions("rgops-cae") == [] and reg.aliases("rgops-cae") == {}


def test_promote_refuse_approve_and_rollback(store):
    reg, run_id, uri = store
    v1 = _register(reg, run_id, uri, r2=0.30)
    assert _gate_and_decide(reg, v1) is None
    assert reg.aliases("rgops-cae")[CHAMPION] == "1"
    t = reg.version("rgops-cae", 1).tags
    assert (t["decision"], t["approved_by"], t["comment"], t["rgops.gates"]) == ("approved", "alice", "looks good", "passed")

    v2 = _register(reg, run_id, uri, r2=0.10)  # worse than champion beyond tolerance 0.05
    with pytest.raises(PromotionRefused, match=r"vs_champion\[cae.cv_r2.mean\]: challenger 0.1, champion 1 0.3"):
        _gate_and_decide(reg, v2)
    assert reg.aliases("rgops-cae") == {CHAMPION: "1", CHALLENGER: "2"}
    assert reg.version("rgops-cae", 2).decision == "refused"
    with pytest.raises(PromotionRefused, match="gates failed"):
        reg.decide("rgops-cae", 2, Decision(True, "mallory"))

    v3 = _register(reg, run_id, uri, r2=0.33)
    assert _gate_and_decide(reg, v3, reviewer="bob") == "1"
    assert reg.aliases("rgops-cae")[CHAMPION] == "3"

    assert reg.rollback("rgops-cae", actor="carol", reason="drift alarm") == ("3", "1")
    assert reg.aliases("rgops-cae")[CHAMPION] == "1"
    assert reg.version("rgops-cae", 3).tags["rolled_back_by"] == "carol"
    assert [v.version for v in reg.versions("rgops-cae")] == ["3", "2", "1"]  # nothing deleted
    hist = reg.history("rgops-cae")
    assert [e.action for e in hist] == ["registered", "promoted", "registered", "refused", "registered",
                                        "promoted", "rolled_back"]
    assert (hist[-1].by, hist[-1].previous, hist[-1].version, hist[-1].reason) == ("carol", "3", "1", "drift alarm")
    with pytest.raises(RegistryError, match="no earlier approved champion"):
        reg.rollback("rgops-cae", actor="carol")
    assert reg.aliases("rgops-cae")[CHAMPION] == "1"


def test_manual_reject_and_stale_gates(store):
    reg, run_id, uri = store
    v1 = _register(reg, run_id, uri)
    report = evaluate_gates("cae", v1.metrics, CFG, validation="passed", validated_digest=DIGEST, data_digest=DIGEST)
    reg.record_gates("rgops-cae", "1", report)
    reg.decide("rgops-cae", "1", Decision(False, "dana", "needs a second look"))
    t = reg.version("rgops-cae", 1).tags
    assert (t["decision"], t["approved_by"], t["comment"]) == ("rejected", "dana", "needs a second look")
    assert CHAMPION not in reg.aliases("rgops-cae")
    reg.decide("rgops-cae", "1", Decision(True, "dana", "second look done"))
    v2 = _register(reg, run_id, uri)
    reg.record_gates("rgops-cae", "2", report)  # gated against no champion, but champion is now 1
    with pytest.raises(PromotionRefused, match="gated against champion none, but the champion is now 1"):
        reg.decide("rgops-cae", v2.version, Decision(True, "dana"))


def test_unreachable_server_is_a_tracking_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    reg = Registry("http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="127.0.0.1:9.*unreachable"):
        reg.aliases("rgops-cae")


def test_cli_approve_models_and_rollback(store):
    from typer.testing import CliRunner

    from rgops.cli import app

    reg, run_id, uri = store
    runner = CliRunner()
    opts = ["--tracking-uri", reg.tracking_uri]
    for r2 in (0.30, 0.31):
        info = _register(reg, run_id, uri, r2=r2)
        champ = reg.aliases("rgops-cae").get(CHAMPION)
        report = evaluate_gates("cae", info.metrics, CFG, champion={"cae.cv_r2.mean": 0.30} if champ else None,
                                champion_version=champ, validation="passed", validated_digest=DIGEST,
                                data_digest=DIGEST)
        reg.record_gates("rgops-cae", info.version, report)
        res = runner.invoke(app, ["promote", "--approve", info.version, "--name", "rgops-cae", "--reviewer", "erin",
                                  "--comment", "ok", *opts])
        assert res.exit_code == 0, res.output
        assert f"-> {info.version}" in res.output
    assert reg.version("rgops-cae", 2).tags["approved_by"] == "erin"

    res = runner.invoke(app, ["promote", "--approve", "1", "--name", "rgops-cae", *opts])
    assert res.exit_code == 1 and "gated against champion none, but the champion is now 2" in res.output

    res = runner.invoke(app, ["models", "rgops-cae", "--history", *opts])
    assert res.exit_code == 0, res.output
    assert "champion" in res.output and "approved" in res.output and "erin" in res.output

    res = runner.invoke(app, ["rollback", "rgops-cae", "--by", "frank", "--reason", "regression", *opts])
    assert res.exit_code == 0, res.output
    assert "2 -> 1" in res.output and reg.aliases("rgops-cae")[CHAMPION] == "1"
    res = runner.invoke(app, ["rollback", "rgops-foo", *opts])
    assert res.exit_code == 1 and "rgops-foo" in res.output


def test_reap_orphan_runs_fails_only_runs_of_dead_local_processes(store):
    import socket
    import subprocess
    import sys

    reg, _, _ = store
    exp = reg.client.get_experiment_by_name("registry-test").experiment_id
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    host = socket.gethostname()
    dead = reg.client.create_run(exp, tags={"rgops.host": host, "rgops.pid": str(child.pid)}).info.run_id
    live = reg.client.create_run(exp, tags={"rgops.host": host, "rgops.pid": str(os.getpid())}).info.run_id
    other = reg.client.create_run(exp, tags={"rgops.host": "elsewhere", "rgops.pid": str(child.pid)}).info.run_id
    assert reap_orphan_runs(reg.client, "registry-test", host) == [dead]
    assert reg.client.get_run(dead).info.status == "FAILED"
    assert "died" in reg.client.get_run(dead).data.tags["rgops.failure"]
    assert {reg.client.get_run(r).info.status for r in (live, other)} == {"RUNNING"}
    assert reap_orphan_runs(reg.client, "no-such-experiment", host) == []
