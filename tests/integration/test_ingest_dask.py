"""flows/ingest.py for real: Prefect's test harness, a local Dask cluster of 2 processes, the tiny cohort."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TINY_KEY = os.environ["RGOPS_PSEUDONYM_KEY"].encode()


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes; ``ingest_report.json`` without ``seconds`` (wall time)."""
    out = {}
    for p in sorted(root.iterdir()):
        if p.name == "ingest_report.json":
            report = json.loads(p.read_text())
            report.pop("seconds")
            out[p.name] = json.dumps(report, sort_keys=True).encode()
        elif p.is_file() and not p.name.startswith("."):
            out[p.name] = p.read_bytes()
    return out


def _stored_text() -> tuple[list[str], str]:
    """Names of the stored task runs, and everything Prefect stored about runs and logs as one text."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs()
        flow_runs = client.read_flow_runs()
        logs = client.read_logs()
    text = "\n".join([t.model_dump_json() for t in task_runs] + [r.model_dump_json() for r in flow_runs]
                     + [entry.model_dump_json() for entry in logs])
    return [t.name for t in task_runs], text


def test_dask_fanout_matches_the_loop_and_stores_no_source_id(prefect_harness, tiny_cohort, tiny_datasets, tmp_path):
    from flows.ingest import run_ingest_fanout

    out = tmp_path / "datasets"
    outcome = run_ingest_fanout(str(tiny_cohort), str(out), {"ingest": {}}, workers=2, tasks=3)
    assert not outcome.cached and outcome.report["ingested"] == 8
    loop, fanned = folder_bytes(tiny_datasets), folder_bytes(out)
    assert sorted(fanned) == sorted(loop)
    assert [name for name in loop if loop[name] != fanned[name]] == []

    names, stored = _stored_text()
    patient_runs = sorted(n for n in names if n.startswith("ingest-patients-"))
    assert patient_runs == ["ingest-patients-0-2", "ingest-patients-3-4", "ingest-patients-5-7"]
    source_ids = sorted(d.name for d in (tiny_cohort / "ct").iterdir() if d.is_dir())
    assert len(source_ids) == 8
    assert [s for s in source_ids if s in stored] == []
    assert TINY_KEY.decode() not in stored

    # unchanged cohort and params: the stamp is honoured, no cluster and no task runs
    again = run_ingest_fanout(str(tiny_cohort), str(out), {"ingest": {}}, workers=2)
    assert again.cached and again.data_digest == outcome.data_digest
    assert len([n for n in _stored_text()[0] if n.startswith("ingest-patients-")]) == 3


def test_jobs_split_into_even_contiguous_runs() -> None:
    from flows.ingest import split_jobs

    for n in (0, 1, 7, 8, 64, 65):
        for tasks in (1, 3, 8, 100):
            runs = split_jobs(list(range(n)), tasks)
            assert [j for r in runs for j in r] == list(range(n))  # every job once, in order
            assert len(runs) == min(tasks, n) and all(runs)
            assert max(map(len, runs), default=0) - min(map(len, runs), default=0) <= 1
    with pytest.raises(ValueError, match="at least 1"):
        split_jobs([1], 0)
