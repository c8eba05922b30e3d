"""flows/retrain.py for real: Prefect's test harness, a real MLflow SQLite store, a tiny synthetic cohort.

The first retrain is the session's shared trained registry (``trained_registry`` in tests/conftest.py);
a test that changes a registry works on its own copy or store. The cohort has 16 patients and
`split_seed: 7`, which gives 8 training and 8 held-out patients under the test pseudonymisation key.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _run(env, tmp_path, uri, **kw):
    from flows.retrain import retrain

    cohort, params = env
    return retrain(cohort=str(cohort), workdir=str(tmp_path / "work"), params_path=str(params),
                   tracking_uri=uri, return_state=True, **kw)


def test_retrain_twice_champion_then_refused(trained_registry, retrain_env, tmp_path, monkeypatch):
    from rgops.errors import PromotionRefused
    from rgops.registry import Registry

    first = trained_registry  # the first retrain (preset good), run once for the session
    assert first.state.is_completed(), first.state.message
    assert first.state.result()["promoted"] == {"cae": "1", "gan": "1"}
    reg = Registry(first.uri)
    assert reg.aliases("rgops-gan") == {"champion": "1", "challenger": "1"}
    v1 = reg.version("rgops-gan", 1)
    assert v1.tags["decision"] == "approved" and v1.tags["rgops.gates"] == "passed"
    assert len(v1.tags["rgops.weights_sha256"]) == 64 and v1.tags["rgops.git_commit"]
    assert v1.tags["rgops.validation"] == "passed" and v1.tags["rgops.validation.data_digest"] == v1.tags["rgops.data_digest"]
    _assert_no_identifier_left(retrain_env[0], first.store)
    _assert_champion_cae_serves_program_scores(reg, first.uri)
    # The retrain's evaluation metrics are run metrics of each model's training run (MLflow compares versions).
    from mlflow import MlflowClient

    run = MlflowClient(first.uri).get_run(reg.version("rgops-cae", 1).run_id)
    assert "cae.probe_r2.primary" in run.data.metrics and "gan.frechet" in run.data.metrics

    uri = first.copy_to(tmp_path)  # the second retrain changes the registry: a private copy of it
    monkeypatch.chdir(tmp_path)
    patches = tmp_path / "work" / "datasets" / "patches.npy"
    ingested_at = patches.stat().st_mtime_ns
    reg = Registry(uri)
    second = _run(retrain_env, tmp_path, uri, preset="worse", approval="auto")
    assert second.is_failed(), reg.version("rgops-gan", 2).tags.get("rgops.gates.report")
    with pytest.raises(PromotionRefused, match=r"rgops-gan version 2 not promoted: gate vs_champion\[gan.frechet\]: "
                                               r"challenger [\d.]+, champion 1 [\d.]+, required <="):
        second.result()
    assert patches.stat().st_mtime_ns == ingested_at  # unchanged cohort: ingest came from the cache
    assert reg.aliases("rgops-gan") == {"champion": "1", "challenger": "2"}
    assert reg.version("rgops-gan", 2).tags["decision"] == "refused"
    assert reg.aliases("rgops-cae")["champion"] == "2"  # the CAE passed its own gates
    assert [e.action for e in reg.history("rgops-gan")] == ["registered", "promoted", "registered", "refused"]


def _assert_champion_cae_serves_program_scores(reg, uri: str) -> None:
    """The registered CAE carries its evaluated program head; serving (in-process) scores with it."""
    import numpy as np

    from rgops import serving
    from rgops.tracking import TAG_PROGRAM_HEAD

    assert len(reg.version("rgops-cae", 1).tags[TAG_PROGRAM_HEAD]) == 64
    resolve, load = serving.registry_source(uri)
    model = load("rgops-cae", resolve("rgops-cae", "champion"), "champion")
    assert model.program_head is not None and len(model.program_head.names) >= 1
    patches = np.zeros((1, 1, model.image_size, model.image_size))
    scale = np.zeros(1)  # log2 mm per pixel: the CAE reads the patch scale (patch contract v2)
    scores = serving.encode(model, patches, scale=scale).row(0)["program_scores"]
    assert set(scores) == set(model.program_head.names) and all(np.isfinite(list(scores.values())))


def _assert_no_identifier_left(cohort: Path, tmp_path: Path) -> None:
    """No planted header identifier in anything the flow wrote: datasets, reports, the MLflow store
    and its artifacts (runs, models, model cards), nor Prefect's database (runs, artifacts, logs)."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from tests.privacy import leaks_in_tree, planted_identifiers

    needles = planted_identifiers(cohort)
    assert len(needles) > 20  # the cohort really carries PHI to find
    assert leaks_in_tree(cohort, needles)  # positive control: the search finds it where it is
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert leaks_in_tree(tmp_path, needles) == {}
    db_url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    if db_url.startswith("sqlite"):
        db = Path(db_url.split(":///", 1)[1])
        hits = leaks_in_tree(db.parent, needles)
        assert {f: n for f, n in hits.items() if f.startswith(db.name)} == {}


def _answer_pauses(decisions, stop, seen):
    """Resume each paused flow run with the decision for its pause key (as the Prefect UI would)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStateName
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=dict(name=FlowRunFilterStateName(any_=["Paused"])))):
                key = fr.state.state_details.pause_key
                if key in decisions and key not in seen:
                    seen.append(key)
                    resume_flow_run(fr.id, run_input=decisions[key])
            time.sleep(1)


def test_manual_approval_pauses_and_resumes_with_input(prefect_harness, retrain_env, tmp_path, monkeypatch):
    from rgops.registry import Registry

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    decisions = {"approve-rgops-cae-1": {"approve": True, "reviewer": "dr-ada", "comment": "latents look sane"},
                 "approve-rgops-gan-1": {"approve": False, "reviewer": "dr-ada", "comment": "samples too blurry"}}
    stop, seen = threading.Event(), []
    resumer = threading.Thread(target=_answer_pauses, args=(decisions, stop, seen), daemon=True)
    resumer.start()
    try:
        state = _run(retrain_env, tmp_path, uri, preset="tiny", approval="manual", approval_timeout_s=300)
    finally:
        stop.set()
        resumer.join(timeout=10)
    assert state.is_completed(), state.message
    assert seen == ["approve-rgops-cae-1", "approve-rgops-gan-1"]
    assert state.result()["promoted"] == {"cae": "1"} and state.result()["rejected"] == {"gan": "1"}
    reg = Registry(uri)
    cae, gan = reg.version("rgops-cae", 1).tags, reg.version("rgops-gan", 1).tags
    assert (cae["decision"], cae["approved_by"], cae["comment"]) == ("approved", "dr-ada", "latents look sane")
    assert (gan["decision"], gan["approved_by"], gan["comment"]) == ("rejected", "dr-ada", "samples too blurry")
    assert cae["approved_at"] and reg.aliases("rgops-cae")["champion"] == "1"
    assert "champion" not in reg.aliases("rgops-gan")


def test_too_small_cohort_is_refused_before_any_training(prefect_harness, retrain_env, tmp_path, monkeypatch):
    """With the default minimums of the probe protocol, 8 + 8 patients are refused, naming the minimum,
    before any model is trained or registered."""
    from mlflow import MlflowClient

    cohort, params_path = retrain_env
    params = yaml.safe_load(Path(params_path).read_text())
    params["evaluate"].pop("min_train_patients")
    params["evaluate"].pop("min_held_out_patients")
    strict = tmp_path / "params.yaml"
    strict.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = _run((cohort, strict), tmp_path, uri, preset="tiny", approval="auto")
    assert state.is_failed()
    assert "8 training and 8 held-out patients" in state.message and "at least 20 training" in state.message
    client = MlflowClient(uri)
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []
