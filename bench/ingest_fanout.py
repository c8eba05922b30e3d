"""Ingest on the Dask fan-out (flows/ingest.py) with 1 and 2 worker processes, against ingest in one process.

The same synthetic cohort is ingested three ways in one run: in-process (``rgops.retrain.ingest_step``,
what ``rgops ingest --ingest-workers 0`` does), and through the Prefect flow on a local Dask cluster of
1 and of 2 processes (``run_ingest_fanout``; Prefect's ephemeral API is started before the timing).
Each fan-out time includes starting its cluster, which a real run pays too. The three datasets must be
byte-identical (same digest). Writes ``bench/results/ingest_fanout.json``.

    .venv/bin/python bench/ingest_fanout.py [--patients 64]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=128)
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
        runs = {}
        t0 = time.perf_counter()
        digest = ingest_step(cohort, tmp / "in-process", params).data_digest
        runs["in_process"] = {"seconds": round(time.perf_counter() - t0, 2), "data_digest": digest}
        for workers in (1, 2):
            t0 = time.perf_counter()
            outcome = run_ingest_fanout(str(cohort), str(tmp / f"dask-{workers}"), dict(params), workers=workers)
            runs[f"dask_{workers}_workers"] = {"seconds": round(time.perf_counter() - t0, 2),
                                               "data_digest": outcome.data_digest}
    for r in runs.values():
        r["patients_per_s"] = round(args.patients / r["seconds"], 2)
    identical = len({r["data_digest"] for r in runs.values()}) == 1
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "patients": args.patients, "image_size": args.image_size, "runs": runs, "byte_identical": identical,
           "speedup_2_over_1_workers": round(runs["dask_1_workers"]["seconds"] / runs["dask_2_workers"]["seconds"], 2),
           "speedup_2_workers_over_in_process": round(runs["in_process"]["seconds"] / runs["dask_2_workers"]["seconds"], 2),
           "note": "fan-out times include starting the local Dask cluster and the flow run"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for name, r in runs.items():
        print(f"{name:18s} {r['seconds']:7.2f} s  {r['patients_per_s']:6.2f} patients/s")
    print(f"2 workers / 1 worker: {res['speedup_2_over_1_workers']}x; byte-identical: {identical}")
    print(f"-> {args.out}")
    if not identical:
        raise SystemExit("the datasets differ between in-process and fan-out ingest")


if __name__ == "__main__":
    main()
