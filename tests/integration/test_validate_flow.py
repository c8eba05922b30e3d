"""flows/validate.py runs for real on Prefect's test harness (temporary database, local API)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.validate import ARTIFACT_KEY

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_flow_passes_on_tiny_cohort_and_attaches_the_summary(prefect_harness, tiny_cohort, tmp_path):
    from flows.validate import validate_flow

    state = validate_flow(cohort=str(tiny_cohort), params=str(REPO / "params.yaml"),
                          json_out=str(tmp_path / "validation.json"), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["passed"] is True and result["data_version"]["dvc_hash"]
    assert (tmp_path / "validation.json").is_file()
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert len(artifacts) == 1
    markdown = artifacts[0].data
    assert "## Data validation PASSED (cohort)" in markdown
    assert "| table | rows | expectations | failed |" in markdown and "| imaging |" in markdown
    assert f"dvc_hash `{result['data_version']['dvc_hash']}`" in markdown


def test_flow_fails_on_a_corrupted_cohort_naming_the_expectation(prefect_harness, tiny_cohort, tmp_path):
    import pydicom

    from flows.validate import validate_flow
    from rgops.data.pseudonym import load_key, pseudonymize

    bad = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, bad)
    patient = sorted(p.name for p in (bad / "ct").iterdir())[0]
    series = next(d for d in (bad / "ct" / patient).iterdir() if d.name != "seg")
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f, enforce_file_format=True)
    state = validate_flow(cohort=str(bad), params=str(REPO / "params.yaml"), return_state=True)
    assert state.is_failed()
    assert "imaging.modality: expect_column_values_to_be_in_set" in state.message
    pid = pseudonymize(patient, load_key())
    assert pid in state.message and patient not in state.message
    markdown = _artifacts(state.state_details.flow_run_id)[0].data
    assert "## Data validation FAILED (cohort)" in markdown
    assert f"| critical | imaging | modality | expect_column_values_to_be_in_set |" in markdown and pid in markdown
