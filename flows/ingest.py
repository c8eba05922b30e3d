"""Ingest fanned out per patient: one Prefect task per patient on a Dask cluster (prefect-dask).

:func:`ingest_fanout` is a Prefect flow (run as a subflow of ``retrain``, or on its own) whose task
runner is a :class:`prefect_dask.DaskTaskRunner`: a local cluster of ``workers`` processes, or the
scheduler at ``dask_address``. It calls :func:`rgops.retrain.ingest_step` with a map function that
submits one task per :class:`~rgops.data.ingest.PatientJob`; planning and assembling stay in
:mod:`rgops.data.ingest`, so the datasets are the same bytes as an in-process ingest.

Privacy: the cohort's folders are named by the source PatientID, so nothing that Prefect stores
may carry a job's folder. Task runs are named by index (``ingest-patient-3``); Prefect records a
task's non-future inputs by type only (``Constant``), results are not persisted and no cache key
is computed (``cache_policy=NONE``). The flow's own parameters are the cohort and output paths
and the params mapping, none of which names a patient. A remote cluster's workers receive the
pseudonymisation key with each job (over Dask's connection): use a TLS scheduler off localhost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect_dask import DaskTaskRunner

from rgops import retrain as R
from rgops.data.ingest import PatientJob, PatientResult

#: Local cluster of the fan-out: processes (ingest is CPU-bound Python/numpy), one thread each.
LOCAL_CLUSTER = {"processes": True, "threads_per_worker": 1}


@task(name="ingest-patient", task_run_name="ingest-patient-{job.index}", persist_result=False,
      cache_policy=NONE)
def ingest_patient_task(fn: Callable[[PatientJob], PatientResult], job: PatientJob) -> PatientResult:
    """Run one patient's job on a worker; the run is named by the job's index, never its folder."""
    return fn(job)


def prefect_map(fn: Callable[[PatientJob], PatientResult], jobs: list[PatientJob]) -> Iterator[PatientResult]:
    """Submit one task per job to the current flow's task runner; yield results in job order."""
    futures = [ingest_patient_task.submit(fn, job) for job in jobs]
    for fut in futures:
        yield fut.result()


def dask_task_runner(workers: int = 2, dask_address: str | None = None) -> DaskTaskRunner:
    """The Dask task runner of the fan-out: the scheduler at ``dask_address``, else a local cluster."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, **LOCAL_CLUSTER})


@flow(name="ingest-fanout", persist_result=False)
def ingest_fanout(cohort: str, out: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ingest ``cohort`` into ``out`` with one task per patient (skipped when ``out`` is up to date).

    Run it through :func:`run_ingest_fanout`, which gives it its Dask task runner.

    Returns:
        ``{"path", "data_digest", "cached", "fingerprint", "report"}`` (:class:`rgops.retrain.IngestOutcome`).
    """
    outcome = R.ingest_step(cohort, out, params, map_fn=prefect_map)
    return {"path": outcome.path, "data_digest": outcome.data_digest, "cached": outcome.cached,
            "fingerprint": outcome.fingerprint, "report": outcome.report}


def run_ingest_fanout(cohort: str, out: str, params: dict[str, Any], workers: int = 2,
                      dask_address: Optional[str] = None) -> R.IngestOutcome:
    """Ingest through :func:`ingest_fanout` on Dask, unless ``out`` already holds this cohort's ingest.

    The cache is checked first so that an unchanged cohort starts no cluster.

    Args:
        cohort: the cohort folder.
        out: the datasets folder.
        params: the params mapping (its ``ingest`` section is used).
        workers: processes of the local cluster (ignored with ``dask_address``).
        dask_address: a Dask scheduler address (``tcp://host:8786``); None starts a local cluster.
    """
    cached = R.cached_ingest(cohort, out, params)
    if cached is not None:
        return cached
    runner = dask_task_runner(workers, dask_address)
    res = ingest_fanout.with_options(task_runner=runner)(str(cohort), str(out), dict(params))
    return R.IngestOutcome(res["path"], res["data_digest"], res["cached"], res["fingerprint"], res["report"])


__all__ = ["dask_task_runner", "ingest_fanout", "ingest_patient_task", "prefect_map", "run_ingest_fanout"]
