"""ingest_cohort with a map function (the per-patient fan-out) against the in-process loop."""

from __future__ import annotations

import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import rg_dicom_factory as f

from rgops.data.ingest import (
    IngestConfig,
    PatientResult,
    assemble_cohort,
    ingest_cohort,
    plan_cohort,
    run_patient_job,
)
from rgops.errors import CohortError

TINY_KEY = os.environ["RGOPS_PSEUDONYM_KEY"].encode()  # the key tiny_datasets was ingested with
KEY = b"fanout-test-key-0123456789abcdef"
IDS = [f"F08-{i:03d}" for i in range(4)]  # 0-1 complete, 2 without SEG, 3 a truncated slice


def reversed_map(fn, jobs):
    """Run the jobs last to first and hand the results back in that (completion) order."""
    return [fn(job) for job in reversed(jobs)]


def threaded_map(fn, jobs):
    """Results in completion order from a pool of 2 threads, each job pickled as a worker would get it."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(lambda j: pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(j))))), job)
                   for job in jobs]
        return [fut.result() for fut in reversed(futures)]


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes; ``ingest_report.json`` without its ``seconds`` (wall time)."""
    out = {}
    for p in sorted(root.iterdir()):
        if p.name == "ingest_report.json":
            report = json.loads(p.read_text())
            report.pop("seconds")
            out[p.name] = json.dumps(report, sort_keys=True).encode()
        elif p.is_file():
            out[p.name] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def failing_cohort(tmp_path_factory):
    cohort = tmp_path_factory.mktemp("fanout") / "cohort"
    (cohort / "ct").mkdir(parents=True)
    for i, pid in enumerate(IDS):
        f.write_patient(cohort, pid, seed=i, with_seg=(i != 2))
    victim = sorted((cohort / "ct" / IDS[3]).glob("*/*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-300])
    f.write_tables(cohort, IDS, IDS)
    return cohort


def test_map_function_gives_the_loop_bytes_on_the_tiny_cohort(tiny_cohort, tiny_datasets, tmp_path):
    ingest_cohort(tiny_cohort, tmp_path / "mapped", IngestConfig(), key=TINY_KEY, map_fn=reversed_map)
    loop, mapped = folder_bytes(tiny_datasets), folder_bytes(tmp_path / "mapped")
    assert sorted(loop) == sorted(mapped)
    assert [name for name in loop if loop[name] != mapped[name]] == []


def test_patient_failures_in_workers_are_skipped_as_in_the_loop(failing_cohort, tmp_path):
    loop = ingest_cohort(failing_cohort, tmp_path / "loop", IngestConfig(), key=KEY)
    calls: list[tuple[int, int]] = []
    mapped = ingest_cohort(failing_cohort, tmp_path / "mapped", IngestConfig(), key=KEY, map_fn=threaded_map,
                           progress=lambda done, total: calls.append((done, total)))
    assert loop.skipped_counts == {"bad_series": 1, "no_seg": 1}
    assert mapped.skipped == loop.skipped and mapped.ingested == loop.ingested == 2
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert folder_bytes(tmp_path / "loop") == folder_bytes(tmp_path / "mapped")


def test_jobs_are_indexed_in_pseudonym_order_and_repr_hides_folder_and_key(failing_cohort):
    plan = plan_cohort(failing_cohort, IngestConfig(), key=KEY)
    assert [j.index for j in plan.jobs] == [0, 1, 2, 3]
    assert [j.pseudo_id for j in plan.jobs] == sorted(j.pseudo_id for j in plan.jobs)
    text = repr(plan.jobs) + repr(plan)
    assert not [s for s in IDS + [KEY.decode()] if s in text]  # the cohort path alone names no one
    assert pickle.loads(pickle.dumps(plan.jobs[0])) == plan.jobs[0]


def test_results_that_do_not_match_the_jobs_are_refused(failing_cohort, tmp_path):
    plan = plan_cohort(failing_cohort, IngestConfig(), key=KEY)
    results = [run_patient_job(job) for job in plan.jobs]
    with pytest.raises(CohortError, match=r"got 3 patient results for 4 jobs \(missing \['P-"):
        assemble_cohort(plan, results[:3], tmp_path / "short")
    with pytest.raises(CohortError, match="got 5 patient results for 4 jobs"):
        assemble_cohort(plan, results + [results[0]], tmp_path / "dup")
    with pytest.raises(CohortError, match=r"unexpected \['P-stranger'\]"):
        assemble_cohort(plan, results[:3] + [PatientResult("P-stranger")], tmp_path / "odd")
    assert not (tmp_path / "short").exists() and not (tmp_path / "dup").exists()


def test_ingest_step_skips_an_unchanged_cohort_before_mapping(failing_cohort, tmp_path, monkeypatch):
    from rgops.retrain import cached_ingest, ingest_step

    monkeypatch.setenv("RGOPS_PSEUDONYM_KEY", KEY.decode())
    mapped: list[int] = []

    def counting_map(fn, jobs):
        mapped.append(len(jobs))
        return reversed_map(fn, jobs)

    params = {"ingest": {"patch_size": 32}}
    out = tmp_path / "datasets"
    first = ingest_step(failing_cohort, out, params, map_fn=counting_map)
    assert not first.cached and first.report["ingested"] == 2 and mapped == [4]
    again = ingest_step(failing_cohort, out, params, map_fn=counting_map)
    assert again.cached and again.data_digest == first.data_digest and mapped == [4]
    assert cached_ingest(failing_cohort, out, {"ingest": {"patch_size": 16}}) is None
    ingest_step(failing_cohort, out, {"ingest": {"patch_size": 16}}, map_fn=counting_map)
    assert mapped == [4, 4]


def test_cli_retrain_refuses_negative_ingest_workers_and_lists_the_dask_options(tmp_path):
    from typer.testing import CliRunner

    from rgops.cli import app

    result = CliRunner().invoke(app, ["retrain", str(tmp_path), "--ingest-workers", "-1"])
    assert result.exit_code == 1
    assert "--ingest-workers got -1, expected 0 or more" in result.output
    assert not (tmp_path / "retrain-output").exists()
    helptext = CliRunner().invoke(app, ["retrain", "--help"], terminal_width=200).output
    assert "--dask-address" in helptext and "--ingest-workers" in helptext


def test_an_unexpected_patient_failure_names_the_job_not_the_folder(failing_cohort, tmp_path):
    import dataclasses

    plan = plan_cohort(failing_cohort, IngestConfig(), key=KEY)
    gone = dataclasses.replace(plan.jobs[1], folder=str(tmp_path / "ct" / "SRC-ID-42"))
    with pytest.raises(CohortError, match=r"patient job 1 \(P-[0-9a-f]{16}\) failed with FileNotFoundError") as info:
        run_patient_job(gone)
    assert "SRC-ID-42" not in str(info.value) and info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
