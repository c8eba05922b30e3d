"""Ingest on the Dask fan-out (flows/ingest.py) with 1 and 2 worker processes, against ingest in one process.

The same synthetic cohort is ingested four ways in one run: in-process (``rgops.retrain.ingest_step``,
what ``rgops ingest --ingest-workers 0`` does), and through the Prefect flow on a local Dask cluster of
1 and of 2 processes (``run_ingest_fanout``, its default number of tasks; Prefect's ephemeral API is
started before the timing), and, as the baseline of the batching, on 2 processes with one task per
patient (what the fan-out did before). Each fan-out time includes starting its cluster, which a
real run pays too; ``tasks_span_s`` is the part from the first ingest task's start to the last one's
end, read back from Prefect's API (the part that processes can share). The datasets must be
byte-identical (same digest). Writes ``bench/results/ingest_fanout.json``.

    .venv/bin/python bench/ingest_fanout.py [--patients 64] [--image-size 128] [--repeats 2]
    .venv/bin/python bench/ingest_fanout.py --patients 96 --image-size 512 --out bench/results/ingest_fanout_512px.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "ingest_fanout.json"


def _task_runs() -> list:
    """The newest ingest task runs Prefect's API holds (finished ones carry start and end times)."""
    from prefect import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    return [t for t in runs if t.name.startswith("ingest-patients-")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="each way is timed this many times, interleaved; best kept")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rgops-bench-fanout-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        import torch  # noqa: F401  (imported before timing: not ingest's cost)
        from prefect import flow

        from flows.ingest import run_ingest_fanout
        from rgops.config import load_params
        from rgops.data.synth import SynthConfig, generate_cohort
        from rgops.retrain import ingest_step

        params = load_params(ROOT / "params.yaml")
        cohort = tmp / "cohort"
        generate_cohort(cohort, SynthConfig(n_patients=args.patients, seed=11, image_size=args.image_size,
                                            min_slices=8, max_slices=16))
        flow(name="warm-up")(lambda: None)()  # start Prefect's ephemeral API outside the timings
        runs: dict[str, dict] = {}

        def keep(name: str, run: dict) -> None:  # the best repeat of each way
            if name not in runs or run["seconds"] < runs[name]["seconds"]:
                runs[name] = run

        for rep in range(args.repeats):
            t0 = time.perf_counter()
            digest = ingest_step(cohort, tmp / f"in-process-{rep}", params).data_digest
            keep("in_process", {"seconds": round(time.perf_counter() - t0, 2), "data_digest": digest})
            for name, workers, tasks in (("dask_1_workers", 1, None), ("dask_2_workers", 2, None),
                                         ("dask_2_workers_task_per_patient", 2, args.patients)):
                seen = _task_runs()
                t0 = time.perf_counter()
                outcome = run_ingest_fanout(str(cohort), str(tmp / f"{name}-{rep}"), dict(params), workers=workers,
                                            tasks=tasks)
                seconds = time.perf_counter() - t0
                new = [t for t in _task_runs() if t.id not in {s.id for s in seen}]
                span = max(t.end_time for t in new) - min(t.start_time for t in new)
                keep(name, {"seconds": round(seconds, 2), "tasks": len(new),
                            "tasks_span_s": round(span.total_seconds(), 2), "data_digest": outcome.data_digest})
    for r in runs.values():
        r["patients_per_s"] = round(args.patients / r["seconds"], 2)
    identical = len({r["data_digest"] for r in runs.values()}) == 1
    d1, d2, per = runs["dask_1_workers"], runs["dask_2_workers"], runs["dask_2_workers_task_per_patient"]
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "patients": args.patients, "image_size": args.image_size, "repeats": args.repeats, "runs": runs, "byte_identical": identical,
           "speedup_2_over_1_workers": round(d1["seconds"] / d2["seconds"], 2),
           "tasks_span_speedup_2_over_1_workers": round(d1["tasks_span_s"] / d2["tasks_span_s"], 2),
           "speedup_batched_over_task_per_patient": round(per["seconds"] / d2["seconds"], 2),
           "speedup_2_workers_over_in_process": round(runs["in_process"]["seconds"] / d2["seconds"], 2),
           "note": "best of the repeats; fan-out times include starting the local Dask cluster and the flow "
                   "run; tasks_span_s is first ingest task start to last ingest task end (Prefect's task-run "
                   "times)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for name, r in runs.items():
        span = f"  tasks {r['tasks']:3d}, span {r['tasks_span_s']:6.2f} s" if "tasks" in r else ""
        print(f"{name:34s} {r['seconds']:7.2f} s  {r['patients_per_s']:6.2f} patients/s{span}")
    print(f"2 workers / 1 worker: {res['speedup_2_over_1_workers']}x overall, "
          f"{res['tasks_span_speedup_2_over_1_workers']}x over the tasks' span; batched / one task per patient: "
          f"{res['speedup_batched_over_task_per_patient']}x; byte-identical: {identical}")
    print(f"-> {args.out}")
    if not identical:
        raise SystemExit("the datasets differ between in-process and fan-out ingest")


if __name__ == "__main__":
    main()
