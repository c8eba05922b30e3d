"""Ingest fanned out over patients: Prefect tasks, each ingesting a run of patients, on a Dask cluster
(prefect-dask).

:func:`ingest_fanout` is a Prefect flow (run as a subflow of ``retrain``, or on its own) whose task
runner is a :class:`prefect_dask.DaskTaskRunner`: a local cluster of ``workers`` processes, or the
scheduler at ``dask_address``. It calls :func:`rgops.retrain.ingest_step` with a map function that
splits the :class:`~rgops.data.ingest.PatientJob` list into ``tasks`` contiguous runs and submits one
task per run; planning and assembling stay in :mod:`rgops.data.ingest`, so the datasets are the same
bytes as an in-process ingest.

Why runs of patients, not one task per patient: Prefect's orchestration of one task (its state
changes through the API) cost about 0.3 s on this 2-core machine whatever the worker count, more
than a synthetic patient's ingest (0.1 s), so one task per patient did not scale with processes
(``bench/ingest_fanout.py``). :data:`TASKS_PER_WORKER` runs per worker keep that cost small and
still even out patients of uneven size.

Privacy: the cohort's folders are named by the source PatientID, so nothing that Prefect stores
may carry a job's folder. Task runs are named by job index (``ingest-patients-0-7``); Prefect records a
task's non-future inputs by type only (``Constant``), results are not persisted and no cache key
is computed (``cache_policy=NONE``). The flow's own parameters are the cohort and output paths
and the params mapping, none of which names a patient. A remote cluster's workers receive the
pseudonymisation key with each job (over Dask's connection): use a TLS scheduler off localhost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect_dask import DaskTaskRunner

from rgops.data.ingest import PatientJob, PatientResult
from rgops.errors import ConfigError

if TYPE_CHECKING:  # rgops.retrain imports torch (2 s); a worker, which unpickles this module, needs neither
    from rgops.retrain import IngestOutcome

#: Local cluster of the fan-out: processes (ingest is CPU-bound Python/numpy), one thread each.
LOCAL_CLUSTER = {"processes": True, "threads_per_worker": 1}


#: Tasks per worker process when the caller does not say: enough to even out uneven patients.
TASKS_PER_WORKER = 4


@task(name="ingest-patients", task_run_name="ingest-patients-{first}-{last}", persist_result=False,
      cache_policy=NONE)
def ingest_patients_task(fn: Callable[[PatientJob], PatientResult], jobs: list[PatientJob], first: int,
                         last: int) -> list[PatientResult]:
    """Run a run of patients' jobs on a worker; the run is named by job indices, never by a folder."""
    return [fn(job) for job in jobs]


def split_jobs(jobs: list[PatientJob], tasks: int) -> list[list[PatientJob]]:
    """``jobs`` in at most ``tasks`` contiguous runs whose sizes differ by at most one, in order."""
    if tasks < 1:
        raise ValueError(f"tasks must be at least 1, got {tasks}")
    n = len(jobs)
    k = min(tasks, n)
    bounds = [round(i * n / k) for i in range(k + 1)] if k else [0]
    return [jobs[a:b] for a, b in zip(bounds, bounds[1:])]


def prefect_map(tasks: int) -> Callable[[Callable[[PatientJob], PatientResult], list[PatientJob]],
                                         Iterator[PatientResult]]:
    """A map function for :func:`rgops.data.ingest.ingest_cohort` that submits ``tasks`` Prefect tasks
    (:func:`split_jobs`) to the current flow's task runner and yields the results in job order."""

    def run(fn: Callable[[PatientJob], PatientResult], jobs: list[PatientJob]) -> Iterator[PatientResult]:
        futures = [ingest_patients_task.submit(fn, batch, batch[0].index, batch[-1].index)
                   for batch in split_jobs(jobs, tasks)]
        for fut in futures:
            yield from fut.result()

    return run


def api_url_for_workers() -> str:
    """The Prefect API this process uses, for the local cluster's workers to report to.

    With no ``PREFECT_API_URL`` (Prefect's ephemeral API, the default), each Dask worker process would
    start a temporary API server of its own (about 10 s each on 2 cores, measured): the workers are
    pointed at this process's server instead, started here if the flow has not started it yet.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


@contextlib.contextmanager
def local_worker_config() -> Iterator[None]:
    """Dask settings for the local cluster's worker processes, while it starts.

    Two Dask defaults made a worker ingest at less than half the speed of one process (512 px CT,
    measured with Dask alone, no Prefect: 3.9 s against 1.7-2.1 s for the same 16 patients):
    ``MALLOC_TRIM_THRESHOLD_``, which the nanny sets in every worker and which turns off glibc's
    adaptive mmap threshold, so each slice-sized array is mapped and unmapped afresh (2.5 s without
    it), and the worker's statistical profiler, which samples the deep stacks of pydicom every
    10 ms (2.1 s without both). The other pre-spawn settings (one BLAS/OpenMP thread) stay.
    """
    import dask

    environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False}):
        yield


def dask_task_runner(workers: int = 2, dask_address: str | None = None) -> DaskTaskRunner:
    """The Dask task runner of the fan-out: the scheduler at ``dask_address``, else a local cluster
    whose workers report to this process's Prefect API (:func:`api_url_for_workers`)."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, **LOCAL_CLUSTER,
                                          "env": {"PREFECT_API_URL": api_url_for_workers()}})


@flow(name="ingest-fanout", persist_result=False)
def ingest_fanout(cohort: str, out: str, params: dict[str, Any], tasks: int = 8) -> dict[str, Any]:
    """Ingest ``cohort`` into ``out`` in ``tasks`` tasks (skipped when ``out`` is up to date).

    Run it through :func:`run_ingest_fanout`, which gives it its Dask task runner.

    Returns:
        ``{"path", "data_digest", "cached", "fingerprint", "report"}`` (:class:`rgops.retrain.IngestOutcome`).
    """
    from rgops.retrain import ingest_step

    outcome = ingest_step(cohort, out, params, map_fn=prefect_map(tasks))
    return {"path": outcome.path, "data_digest": outcome.data_digest, "cached": outcome.cached,
            "fingerprint": outcome.fingerprint, "report": outcome.report}


def run_ingest_fanout(cohort: str, out: str, params: dict[str, Any], workers: int = 2,
                      dask_address: Optional[str] = None, tasks: Optional[int] = None) -> IngestOutcome:
    """Ingest through :func:`ingest_fanout` on Dask, unless ``out`` already holds this cohort's ingest.

    The cache is checked first so that an unchanged cohort starts no cluster.

    Args:
        cohort: the cohort folder.
        out: the datasets folder.
        params: the params mapping (its ``ingest`` section is used).
        workers: processes of the local cluster; with ``dask_address``, the workers the scheduler
            has (it sizes the number of tasks only).
        dask_address: a Dask scheduler address (``tcp://host:8786``); None starts a local cluster.
        tasks: how many tasks the patients are split into; default ``TASKS_PER_WORKER * workers``.
    """
    from rgops import retrain as R

    cached = R.cached_ingest(cohort, out, params)
    if cached is not None:
        return cached
    runner = dask_task_runner(workers, dask_address)
    n_tasks = tasks if tasks is not None else TASKS_PER_WORKER * max(1, workers)
    if n_tasks < 1:
        raise ConfigError(f"the ingest fan-out got tasks={n_tasks}; give 1 or more")
    with contextlib.nullcontext() if dask_address else local_worker_config():
        res = ingest_fanout.with_options(task_runner=runner)(str(cohort), str(out), dict(params), n_tasks)
    return R.IngestOutcome(res["path"], res["data_digest"], res["cached"], res["fingerprint"], res["report"])


__all__ = ["TASKS_PER_WORKER", "api_url_for_workers", "dask_task_runner", "ingest_fanout", "ingest_patients_task",
           "local_worker_config", "prefect_map", "run_ingest_fanout", "split_jobs"]
