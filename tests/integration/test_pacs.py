"""The hospital edge against a real PACS: Orthanc (Debian packages, DICOMweb plugin) on 127.0.0.1
with authentication, a real `bentoml serve` with a real MLflow registry, and the real
`rgops pacs watch` command.

A multi-series study (localizer + CT + SEG, from the synthetic cohort generator) goes into Orthanc
through its REST API; it comes out through `/extract_study` with the biomarker of a direct upload;
its SR goes back (STOW-RS) and is read back (WADO-RS) with the same numbers; the watcher extracts a
new study once and a restart does not extract it again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from rgops.dicom_sr import read_measurements
from rgops.pacs import Pacs, PacsConfig, study_label
from tests.helpers import free_port, running_server
from tests.orthanc import orthanc
from tests.study_factory import multi_series_study, to_bytes
from tests.system_tools import dciodvfy_errors

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-api-key-0123456789abcdef"
IDENTIFYING = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
               "InstitutionName", "ReferringPhysicianName")


def _publish(folder: Path, uri: str) -> None:
    """Tiny @champion models, published from inside ``folder`` (artifacts go under the working dir)."""
    from tests.integration.test_services import publish_tiny_champions

    old = os.getcwd()
    os.chdir(folder)
    try:
        publish_tiny_champions(uri)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def stack(pacs, tmp_path_factory):
    """(base URL, tracking URI, folder, server log): `bentoml serve` with the PACS in its environment."""
    tmp = tmp_path_factory.mktemp("edge-serve")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    _publish(tmp, uri)
    params = tmp / "params.yaml"
    params.write_text("serve:\n  max_request_mb: 64\n  reload_poll_s: 0\n")
    env = {**os.environ, **pacs.env(), "MLFLOW_TRACKING_URI": uri, "RGOPS_API_KEYS": KEY,
           "BENTOML_HOME": str(tmp / "bentoml"), "RGOPS_PARAMS": str(params), "BENTOML_DO_NOT_TRACK": "true"}
    port = free_port()
    log_path = tmp / "server.log"
    cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService", "--host", "127.0.0.1",
           "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{base}/readyz", log_path, cwd=ROOT, env=env, timeout=180):
        yield base, uri, tmp, log_path


def _client(base: str):
    import httpx

    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def _store(pacs, study) -> str:
    for ds in study:
        pacs.upload(to_bytes(ds))
    return str(study[0].StudyInstanceUID)


def _extract_upload(base: str, study) -> dict:
    files = [("files", (f"{i}.dcm", to_bytes(d), "application/dicom")) for i, d in enumerate(study)]
    with _client(base) as c:
        r = c.post("/extract", files=files)
    assert r.status_code == 200, r.text
    return r.json()


def _needles(study) -> set[str]:
    out = set()
    for kw in IDENTIFYING:
        value = str(study[0].get(kw, "") or "")
        out |= {p for p in value.replace("^", " ").split() if len(p) >= 5}
    return out


def _rgops_srs(pacs, study_uid: str) -> list[pydicom.Dataset]:
    client = Pacs(PacsConfig.from_env(pacs.env()))
    series = [s for s in client.series(study_uid) if s.modality == "SR"]
    return [ds for s in series for ds in client.client.retrieve_series(study_uid, s.uid)]


def test_extract_study_answers_like_a_direct_upload_and_its_sr_reads_back(pacs, stack, tiny_cohort, tmp_path) -> None:
    base, _, _, server_log = stack
    study = multi_series_study(tiny_cohort, 0)
    study_uid = _store(pacs, study)
    direct = _extract_upload(base, study)
    with _client(base) as c:
        r = c.post("/extract_study", json={"study_uid": study_uid, "store": True})
    assert r.status_code == 200, r.text
    out = r.json()
    np.testing.assert_allclose(out["latent"], direct["latent"], rtol=0, atol=1e-9)
    assert out["model"] == direct["model"] and out["model"]["trained_on"]["origin"] == "unknown"
    assert any("LOCALIZER" in s and "ignored" in s for s in out["series"])
    # the SR went back into the study and reads back with the same biomarker
    srs = _rgops_srs(pacs, study_uid)
    assert [str(s.SOPInstanceUID) for s in srs] == [out["stored"]["sop_instance_uid"]]
    numbers = read_measurements(srs[0])
    np.testing.assert_allclose([numbers[f"RGL-{i}"] for i in range(len(direct["latent"]))], direct["latent"],
                               rtol=1e-6, atol=1e-9)
    assert srs[0].PatientID == study[0].PatientID  # the hospital's own PACS gets its own patient back
    path = tmp_path / "sr.dcm"
    srs[0].save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(str(path)) == []
    # nothing identifying in the answers or the server's log
    text = json.dumps(out) + json.dumps(direct) + server_log.read_text(errors="replace")
    leaks = [n for n in _needles(study) | {study_uid} if n in text]
    assert leaks == []


def test_orthancs_media_archive_extracts_like_the_study(pacs, stack, tiny_cohort) -> None:
    base = stack[0]
    study = multi_series_study(tiny_cohort, 3)
    _store(pacs, study)
    with pacs.client() as c:
        ids = c.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": str(study[0].StudyInstanceUID)}}).json()
        media = c.get(f"/studies/{ids[0]}/media").content  # a zip with a DICOMDIR, as on a CD
    with _client(base) as c:
        r = c.post("/extract", files=[("files", ("study.zip", media, "application/zip"))])
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["latent"], _extract_upload(base, study)["latent"], rtol=0, atol=1e-9)


def test_refusals_name_the_problem(pacs, stack, tiny_cohort) -> None:
    base = stack[0]
    no_seg = [d for d in multi_series_study(tiny_cohort, 1) if d.Modality != "SEG"]
    no_seg_uid = _store(pacs, no_seg)
    with _client(base) as c:
        r = c.post("/extract_study", json={"study_uid": "1.2.3.4"})
        assert r.status_code == 404 and "holds no series of the requested study" in r.json()["message"]
        r = c.post("/extract_study", json={"study_uid": "../../tools/shutdown"})
        assert r.status_code == 422 and "expected a DICOM UID" in r.json()["message"]
        r = c.post("/extract_study", json={"study_uid": no_seg_uid})
        assert r.status_code == 422 and "no CT series with a DICOM SEG" in r.json()["message"]
        assert "series 1: CT" in r.json()["message"] or "series 2: CT" in r.json()["message"]
        files = [("files", (f"{i}.dcm", to_bytes(d), "application/dicom")) for i, d in enumerate(no_seg)]
        r = c.post("/extract", files=files)
        assert r.status_code == 422 and "no DICOM SEG" in r.json()["message"] and "LOCALIZER" in r.json()["message"]
    bad = Pacs(PacsConfig(pacs.dicomweb, pacs.user, "wrong-password"))
    from rgops.errors import PacsError

    with pytest.raises(PacsError, match="HTTP 401; check RGOPS_PACS_USER"):
        bad.studies()


def _watch(stack, pacs, state: Path, polls: int = 3) -> str:
    base, uri, folder, _ = stack
    env = {**os.environ, **pacs.env(), "MLFLOW_TRACKING_URI": uri, "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-m", "rgops.cli", "pacs", "watch", "--state", str(state),
                           "--interval", "0.2", "--polls", str(polls)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_watcher_extracts_a_new_study_once_across_restarts(pacs, stack, tiny_cohort, tmp_path) -> None:
    study = multi_series_study(tiny_cohort, 2)
    study_uid = _store(pacs, study)
    label = study_label(study_uid)
    state = tmp_path / "watch.json"
    first = _watch(stack, pacs, state)
    assert first.count(f"{label}: biomarker extracted") == 1, first
    entry = json.loads(state.read_text())["studies"][label]
    assert entry["status"] == "done" and entry["attempts"] == 1
    srs = _rgops_srs(pacs, study_uid)
    assert len(srs) == 1 and str(srs[0].SOPInstanceUID) == entry["sr"]
    numbers = read_measurements(srs[0])
    direct = _extract_upload(stack[0], study)["latent"]
    np.testing.assert_allclose([numbers[f"RGL-{i}"] for i in range(len(direct))], direct, rtol=1e-6, atol=1e-9)
    # a restart: nothing extracted again
    again = _watch(stack, pacs, state)
    assert "biomarker extracted" not in again.split(label)[-1] and f"{label}: biomarker extracted" not in again
    assert json.loads(state.read_text())["studies"][label] == entry
    assert len(_rgops_srs(pacs, study_uid)) == 1
    # a crash after the SR was stored but before the state was saved: the SR on the PACS says done
    lost = json.loads(state.read_text())
    del lost["studies"][label]
    state.write_text(json.dumps(lost))
    third = _watch(stack, pacs, state)
    assert f"{label}: biomarker extracted" not in third
    assert json.loads(state.read_text())["studies"][label]["note"] == "SR found on the PACS"
    assert len(_rgops_srs(pacs, study_uid)) == 1
    # no study UID in the state file or the watcher's output
    assert study_uid not in state.read_text() and study_uid not in first + again + third


def _task_runs(flow_run_id) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state for r in runs}


def test_the_prefect_flow_shows_each_study_as_a_task_run(prefect_harness, pacs, stack, tiny_cohort, tmp_path,
                                                         monkeypatch) -> None:
    # the session's one Prefect harness (tests/conftest.py): a second, nested harness left the flow
    # reporting to the first one's API when both were up in one pytest session
    from flows.pacs import pacs_watch_flow

    good = multi_series_study(tiny_cohort, 4)
    bad = multi_series_study(tiny_cohort, 5)
    bad[0].ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.999"  # a SEG drawn on another series
    good_label, bad_label = study_label(_store(pacs, good)), study_label(_store(pacs, bad))
    for key, value in {**pacs.env(), "MLFLOW_TRACKING_URI": stack[1]}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(stack[2])
    state = pacs_watch_flow(state=str(tmp_path / "watch.json"), polls=2, interval_s=0.2, return_state=True)
    assert state.is_completed(), state.message
    runs = _task_runs(state.state_details.flow_run_id)
    assert f"extract {good_label}" in runs, sorted(runs)
    assert runs[f"extract {good_label}"].is_completed()
    failed = runs[f"extract {bad_label}"]
    assert failed.is_failed() and "not the CT series" in failed.message
    studies = json.loads((tmp_path / "watch.json").read_text())["studies"]
    assert studies[good_label]["status"] == "done" and studies[bad_label]["status"] == "failed"
    assert state.result()["done"] >= 1 and state.result()["failed"] >= 1


def test_the_readme_standard_library_client_works(stack, tiny_cohort, tmp_path) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "urllib.request" in b)
    definition = code.split("\nanswer = ")[0]
    namespace: dict[str, Any] = {}
    exec(definition, namespace)  # noqa: S102 - the README's own example, run as a user would
    folder = tmp_path / "study"
    folder.mkdir()
    study = multi_series_study(tiny_cohort, 6)
    for i, ds in enumerate(study):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    answer = namespace["extract"](stack[0], KEY, sorted(folder.rglob("*.dcm")))
    np.testing.assert_allclose(answer["latent"], _extract_upload(stack[0], study)["latent"], rtol=0, atol=1e-9)
    assert "trained_on" in answer["model"]
    with _client(stack[0]) as c:
        card = c.get("/metadata").json()["models"]["rgops-cae"]
    assert card["trained_on"] == answer["model"]["trained_on"]
    assert card["trained_on"]["origin"] == "unknown" and card["trained_on"]["data_digest"] == "d" * 64  # no datasets


def test_secondary_capture_loads_in_orthanc_and_a_big_study_is_refused_before_retrieval(pacs, tiny_cohort) -> None:
    from rgops.errors import LimitExceeded
    from rgops.export import to_secondary_capture
    from rgops.pacs import extract_study

    sc = to_secondary_capture(np.zeros((1, 32, 32)), "rgops-gan", "1")
    stored = pacs.upload(sc)
    with pacs.client() as c:
        tags = c.get(f"/instances/{stored['ID']}/simplified-tags").json()
        back = pydicom.dcmread(io.BytesIO(c.get(f"/instances/{stored['ID']}/file").content))
    assert tags["PatientID"] == "SYNTHETIC" and tags["ConversionType"] == "SYN"
    assert back[0x0008, 0x001C].value == "YES"  # Orthanc 1.10's dictionary predates the tag; it keeps it

    study = multi_series_study(tiny_cohort, 7)
    study_uid = _store(pacs, study)
    calls = []
    with pytest.raises(LimitExceeded, match="at most 5 \\(serve.max_files\\)"):
        extract_study(Pacs(PacsConfig.from_env(pacs.env())), study_uid, calls.append, max_instances=5)
    assert calls == []
