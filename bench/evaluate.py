"""Benchmark of `rgops evaluate` on the demo-size synthetic cohort, and the comparison of CAE
conditionings it is used to choose the default from.

Steps (each cached under --work, default .rgops/bench-evaluate (git-ignored), so a rerun only re-times the evaluation):

1. `rgops synth` with params.yaml `synth` (150 patients by default, like NSCLC Radiogenomics R01);
2. `rgops ingest`;
3. train, in a local MLflow store, the CAE variants (conditioning x auxiliary gene head, the
   unconditional AE = conditioning "none" without the head) and the GAN, with the `--preset`;
4. time `run_evaluation` (what `rgops evaluate` runs) over all of them with the ground truth, stage by
   stage, and report the pyradiomics extraction share of the evaluation time.

Writes bench/results/evaluate.json (timings, the metric table per variant, the report folder) and
prints the ratios. Usage: `.venv/bin/python bench/evaluate.py [--n-patients 150] [--preset demo]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> CAE model overrides; "ae" is the unconditional baseline.
VARIANTS: dict[str, dict] = {
    "cae": {"conditioning": "decoder", "aux_gene_head": True},  # the params.yaml default
    "cae_decoder": {"conditioning": "decoder", "aux_gene_head": False},
    "cae_encoder": {"conditioning": "encoder", "aux_gene_head": True},
    "cae_none_aux": {"conditioning": "none", "aux_gene_head": True},
    "ae": {"conditioning": "none", "aux_gene_head": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patients", type=int, default=None, help="default: params.yaml synth.n_patients")
    ap.add_argument("--preset", default="demo", help="training preset for every model")
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-evaluate")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--no-gan", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evaluate.json")
    args = ap.parse_args()

    import logging

    import torch

    from rgops.config import from_dict, load_params, section
    from rgops.data.ingest import IngestConfig, ingest_cohort
    from rgops.data.synth import SynthConfig, generate_cohort
    from rgops.evaluation.evaluate import run_evaluation
    from rgops.retrain import train_step

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    params = load_params(ROOT / "params.yaml")
    work = args.work.resolve()
    out_path = args.out.resolve()  # before chdir
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the local MLflow store keeps its artifacts under the working directory
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["RGOPS_TRACKING_URI"] = tracking_uri
    timings: dict[str, float] = {}

    synth = dict(section(params, "synth"))
    if args.n_patients:
        synth["n_patients"] = args.n_patients
    n = synth["n_patients"]
    cohort = work / f"cohort{n}"
    if not (cohort / "cohort.json").is_file():
        t = time.perf_counter()
        generate_cohort(cohort, from_dict(SynthConfig, synth, "synth"), overwrite=True)
        timings["synth_s"] = time.perf_counter() - t
    datasets = work / f"datasets{n}"
    if not (datasets / "manifest.parquet").is_file():
        t = time.perf_counter()
        ingest_cohort(cohort, datasets, from_dict(IngestConfig, section(params, "ingest"), "ingest"))
        timings["ingest_s"] = time.perf_counter() - t

    models_file = work / f"models{n}-{args.preset}.json"
    models = json.loads(models_file.read_text()) if models_file.is_file() else {}
    wanted = [v for v in args.variants.split(",") if v]
    for name in [*wanted, *([] if args.no_gan else ["gan"])]:
        if name in models:
            continue
        p = copy.deepcopy(params)
        kind = "gan" if name == "gan" else "cae"
        if kind == "cae":
            p["train"]["cae"]["model"].update(VARIANTS[name])
        t = time.perf_counter()
        trained = train_step(kind, datasets, p, args.preset, tracking_uri=tracking_uri, experiment="bench-evaluate",
                             tags={"rgops.bench_variant": name})
        timings[f"train_{name}_s"] = time.perf_counter() - t
        models[name] = trained.model_uri
        models_file.write_text(json.dumps(models, indent=2))
        print(f"trained {name} in {timings[f'train_{name}_s']:.0f} s", flush=True)

    stages: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        key = stage.split(" ")[0] if not stage.startswith("encode") else "encode"
        span = stages.setdefault(key, [now, now])
        span[1] = now

    from rgops.data.datasets import Datasets

    n_patches = len(Datasets.load(datasets))
    encoders = {k: models[k] for k in wanted}
    t0 = time.perf_counter()
    result = run_evaluation(datasets, encoders, None if args.no_gan else models["gan"], cohort, params,
                            work / "evaluation.json", work / "report", log_to_mlflow=True, progress=progress)
    total = time.perf_counter() - t0
    # A stage runs from its first callback to the next stage's first callback.
    starts = sorted((v[0], k) for k, v in stages.items())
    stage_s = {}
    for (start, k), nxt in zip(starts, [s for s, _ in starts[1:]] + [t0 + total]):
        stage_s[k] = nxt - start
    radiomics_s = stage_s.get("radiomics", 0.0)

    m = result.metrics
    cols = ["cv_r2.mean", "cv_r2.linked_mean", "cca1", "sig_pairs", "program_recall", "program_precision",
            "enriched_pairs", "cv_r2.linked_vs_oracle"]
    table = {s: {c: m.get(f"{s}.{c}") for c in cols} for s in [*wanted, "radiomics"]}
    per_program = {s: {p: m.get(f"{s}.cv_r2.{p}") for p in result.target_names} for s in [*wanted, "radiomics", "oracle"]}
    doc = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "cuda": torch.cuda.is_available()},
        "n_patients": n,
        "n_heldout_patients": result.info["n_patients"],
        "preset": args.preset,
        "evaluate_s": round(total, 2),
        "stage_s": {k: round(v, 2) for k, v in stage_s.items()},
        "radiomics_s": round(radiomics_s, 2),
        "radiomics_share_of_evaluate": round(radiomics_s / total, 3),
        "radiomics_s_per_patch": round(radiomics_s / n_patches, 4),
        "setup_s": {k: round(v, 1) for k, v in timings.items()},
        "metrics_by_feature_set": table,
        "cv_r2_by_program": per_program,
        "gan": {k: v for k, v in m.items() if k.startswith("gan.")},
        "report": str(work / "report" / "report.html"),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2))
    print(f"rgops evaluate on {n} patients ({result.info['n_patients']} held out): {total:.1f} s; "
          f"pyradiomics extraction {radiomics_s:.1f} s = {radiomics_s / total:.1%} of it")
    for s, row in table.items():
        print(f"  {s:14s} " + " ".join(f"{c}={row[c]:.3f}" for c in cols if row[c] is not None))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
