"""Ingest throughput vs. a bare pydicom read of the same files, in the same run.

Generates a synthetic cohort (rgops.data.synth), then measures, REPEATS times each, alternating:
  * baseline: ``pydicom.dcmread`` + ``pixel_array`` of every CT and SEG file of the cohort;
  * ingest: ``rgops.data.ingest.ingest_cohort`` (de-identification, series stacking, SEG
    placement, patches, gene normalisation, all files written).
Reports patients/s and DICOM instances/s for both (best of the repeats), the ratio ingest/bare,
and, from one profiled ingest, the share of each stage; writes bench/results/ingest.json.

    .venv/bin/python bench/ingest.py [--patients 16] [--repeats 3] [--patch-size 64] [--image-size 128]
    .venv/bin/python bench/ingest.py --image-size 512 --out bench/results/ingest_512px.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).resolve().parent / "results" / "ingest.json"

#: Where ingest's time goes, as shares of one profiled run (cProfile inflates Python-heavy stages,
#: so read them as a ranking; the timed ratio above is the measure). label -> (function, file).
STAGES = {
    "read files (dcmread)": ("_read_patient", "ingest.py"),
    "de-identify": ("_deidentify_patient", "ingest.py"),
    "instances.parquet rows": ("_instance_row", "ingest.py"),
    "CT volume + SEG mask (pixels decoded here)": ("_series_and_mask", "ingest.py"),
    "cut patches": ("extract_patches", "ingest.py"),
    "plan (gene and clinical tables)": ("plan_cohort", "ingest.py"),
    "normalise genes": ("_normalised_genes", "ingest.py"),
    "write the datasets folder": ("_write_datasets", "ingest.py"),
    "of which the contract check (read back)": ("load", "datasets.py"),
}


def bare_read(files: list[Path]) -> int:
    """Read every file with pydicom and decode its pixels; returns the number of pixels (kept live)."""
    import pydicom

    n = 0
    for f in files:
        n += pydicom.dcmread(f).pixel_array.size
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=128, help="CT slice side in pixels (a clinical CT: 512)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    import cProfile
    import pstats

    import torch  # noqa: F401  (imported before timing: its import is not ingest's cost)

    from rgops.data.ingest import IngestConfig, ingest_cohort
    from rgops.data.synth import SynthConfig, generate_cohort

    key = b"bench-key-0123456789abcdef-not-secret"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cohort = root / "cohort"
        generate_cohort(cohort, SynthConfig(n_patients=args.patients, seed=11, image_size=args.image_size,
                                            min_slices=8, max_slices=16))
        files = sorted(p for p in (cohort / "ct").rglob("*.dcm"))
        n_files = len(files)
        config = IngestConfig(patch_size=args.patch_size)
        bare_t, ingest_t = [], []
        report = None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            bare_read(files)
            bare_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = ingest_cohort(cohort, root / f"out{r}", config, key=key)
            ingest_t.append(time.perf_counter() - t0)
        prof = cProfile.Profile()
        prof.enable()
        ingest_cohort(cohort, root / "out-prof", config, key=key)
        prof.disable()
        stats = pstats.Stats(prof)

        def cumulative(name: str, file: str) -> float:
            return sum(v[3] for k, v in stats.stats.items() if k[2] == name and k[0].endswith(file))

        total = cumulative("ingest_cohort", "ingest.py")
        deid = cumulative("deidentify", "deid.py")
        stages = {label: round(cumulative(name, file) / total, 3) if total else None
                  for label, (name, file) in STAGES.items()}

    bare, ing = min(bare_t), min(ingest_t)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "patients": args.patients,
        "ingested": report.ingested if report else 0,
        "dicom_instances": n_files,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "repeats": args.repeats,
        "bare_pydicom_s": round(bare, 4),
        "ingest_s": round(ing, 4),
        "bare_instances_per_s": round(n_files / bare, 1),
        "ingest_instances_per_s": round(n_files / ing, 1),
        "bare_patients_per_s": round(args.patients / bare, 2),
        "ingest_patients_per_s": round(args.patients / ing, 2),
        "ratio_ingest_over_bare_time": round(ing / bare, 2),
        "deidentify_share_of_ingest": round(deid / total, 3) if total else None,
        "stage_shares_of_ingest_profiled": stages,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bare pydicom read : {result['bare_instances_per_s']:8.1f} instances/s  "
          f"{result['bare_patients_per_s']:6.2f} patients/s")
    print(f"rgops ingest      : {result['ingest_instances_per_s']:8.1f} instances/s  "
          f"{result['ingest_patients_per_s']:6.2f} patients/s")
    print(f"ratio ingest/bare : {result['ratio_ingest_over_bare_time']:.2f}x the time "
          f"(de-identification {100 * (result['deidentify_share_of_ingest'] or 0):.0f}% of ingest)")
    for label, share in stages.items():
        print(f"  {label:45s} {100 * (share or 0):5.1f}% of ingest (profiled)")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
