"""PACS round trip against a direct upload, in the same run.

A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, 127.0.0.1, authentication on) and a real
`bentoml serve` with tiny @champion models. For each multi-series study (localizer + CT + SEG from
the synthetic cohort generator) the study is stored in Orthanc, then timed:

* ``pacs``: ``POST /extract_study {"store": true}`` (QIDO-RS, WADO-RS of the CT and SEG series,
  extraction, STOW-RS of the SR) until the SR is visible on the PACS (QIDO-RS) - study stored -> SR back;
* ``direct``: ``POST /extract`` of the same study's files (multipart), the baseline.

Prints the ratio of medians and writes ``bench/results/pacs.json``.
Run: ``python bench/pacs.py [--patients 6] [--size 256]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _serving_harness import KEY, device, local_stack, percentiles  # noqa: E402


def _cohort(folder: Path, patients: int, size: int) -> Path:
    from rgops.data.synth import SynthConfig, generate_cohort

    out = folder / "cohort"
    generate_cohort(out, SynthConfig(n_patients=patients, seed=11, n_genes=64, genes_per_module=8, image_size=size,
                                     field_of_view_mm=350.0, min_slices=24, max_slices=40))
    return out


def _round(base: str, pacs, study, study_uid: str) -> tuple[float, float, list[float], list[float]]:
    import httpx

    from tests.study_factory import to_bytes

    headers = {"Authorization": f"Bearer {KEY}"}
    files = [("files", (f"{i}.dcm", to_bytes(d), "application/dicom")) for i, d in enumerate(study)]
    with httpx.Client(base_url=base, headers=headers, timeout=300) as c:
        t0 = time.perf_counter()
        r = c.post("/extract", files=files)
        direct_ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200, r.text
        direct = r.json()["latent"]
        t0 = time.perf_counter()
        r = c.post("/extract_study", json={"study_uid": study_uid, "store": True})
        assert r.status_code == 200, r.text
        with pacs.client() as o:  # the SR is back when the PACS lists it
            found = o.post("/tools/find", json={"Level": "Instance", "Query": {
                "SOPInstanceUID": r.json()["stored"]["sop_instance_uid"]}}).json()
        pacs_ms = (time.perf_counter() - t0) * 1000
        assert len(found) == 1
    return direct_ms, pacs_ms, direct, r.json()["latent"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    from tests.orthanc import orthanc
    from tests.study_factory import multi_series_study, to_bytes

    with tempfile.TemporaryDirectory(prefix="rgops-bench-pacs-") as tmp_s:
        tmp = Path(tmp_s)
        cohort = _cohort(tmp, args.patients, args.size)
        (tmp / "orthanc").mkdir()
        with orthanc(tmp / "orthanc") as pacs:
            import os

            os.environ.update(pacs.env())
            with local_stack("  max_request_mb: 256\n") as (base, _, _):
                direct_ms, pacs_ms, store_ms, n_instances = [], [], [], []
                for i in range(args.patients):
                    study = multi_series_study(cohort, i)
                    t0 = time.perf_counter()
                    for ds in study:
                        pacs.upload(to_bytes(ds))
                    store_ms.append((time.perf_counter() - t0) * 1000)
                    d, p, a, b = _round(base, pacs, study, str(study[0].StudyInstanceUID))
                    if i == 0:
                        continue  # warm-up (first request loads lazily imported code on both paths)
                    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-9, "the two paths disagree"
                    direct_ms.append(d)
                    pacs_ms.append(p)
                    n_instances.append(len(study))
    result = {"benchmark": "pacs", "device": device(), "patients": args.patients, "image_size": args.size,
              "instances_per_study": n_instances, "store_in_pacs": percentiles(store_ms[1:]),
              "direct_extract": percentiles(direct_ms), "pacs_round_trip": percentiles(pacs_ms),
              "ratio_p50_pacs_over_direct": percentiles(pacs_ms)["p50_ms"] / percentiles(direct_ms)["p50_ms"]}
    out = ROOT / "bench" / "results" / "pacs.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark prints its numbers
    print(f"PACS round trip (study stored -> SR back) / direct /extract, p50: "  # noqa: T201
          f"{result['ratio_p50_pacs_over_direct']:.2f}x")


if __name__ == "__main__":
    main()
