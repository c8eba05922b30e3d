"""Radiogenomic validity bench: does the CAE biomarker track gene expression better than radiomics?

A synthetic cohort large enough to decide (1,000 patients by default, 60/20/20 split: about 600
training and 400 held-out patients), several training seeds sharing one ingested cohort, every
feature set on the probe protocol (rgops/evaluation/protocol.py: ridge probe fitted on training
patients, scored on held-out patients, 90% bootstrap intervals, paired differences):

- ``cae_s<k>``: the CAE as params.yaml trains it (gene-PC head, decoder conditioning, scale input);
- ``cae_nocond_s<k>``: the same without decoder conditioning;
- ``ae_s<k>``: the unconditional AE (reconstruction only, same scale input), per seed;
- ``radiomics``: pyradiomics 2D on the same slices; ``handcrafted``: shape + density + texture;
- ``oracle``: the true phenotype parameters (the ceiling).

Steps are cached under --work (default .rgops/bench-radiogenomics, git-ignored): the cohort, the
datasets and each trained model's state dict, so a rerun re-evaluates only. Writes
bench/results/radiogenomics.json: the per-program table with intervals for every set, the seed mean
and spread of each model's linked mean, the CAE-minus-baseline differences per seed, training time
per model, the targets of issue #10 and whether each is met.

Usage: ``.venv/bin/python bench/radiogenomics.py [--patients 1000] [--seeds 0,1,2] [--preset demo]``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.radiogenomics")

#: Model variants (CAE model overrides over params.yaml): ``cae`` is the default as params.yaml trains
#: it; ``cae_nocond`` the same gene-PC head without giving the decoder the genes (does decoder
#: conditioning help?); ``ae`` the unconditional baseline (reconstruction only).
VARIANTS: dict[str, dict[str, Any]] = {"cae": {}, "cae_nocond": {"conditioning": "none"},
                                       "ae": {"conditioning": "none", "aux_gene_head": False}}
TARGETS = {"cae_linked_mean": 0.70, "linked_program_min": 0.4, "decoy_abs_max": 0.05}


def prepare(work: Path, params: dict[str, Any], patients: int, seed: int, split: list[float]) -> tuple[Path, Path, dict]:
    """The bench cohort and its datasets (cached); timings of what ran."""
    from rgops.config import from_dict, section
    from rgops.data.ingest import IngestConfig, ingest_cohort
    from rgops.data.synth import SynthConfig, generate_cohort

    timings: dict[str, float] = {}
    cohort = work / f"cohort{patients}-s{seed}"
    if not (cohort / "cohort.json").is_file():
        t = time.perf_counter()
        cfg = {**section(params, "synth"), "n_patients": patients, "seed": seed}
        generate_cohort(cohort, from_dict(SynthConfig, cfg, "synth"), overwrite=True)
        timings["synth_s"] = time.perf_counter() - t
        log.warning("synth: %d patients in %.0f s", patients, timings["synth_s"])
    datasets = work / f"datasets{patients}-s{seed}"
    if not (datasets / "manifest.parquet").is_file():
        t = time.perf_counter()
        cfg = {**section(params, "ingest"), "split_fractions": split}
        ingest_cohort(cohort, datasets, from_dict(IngestConfig, cfg, "ingest"))
        timings["ingest_s"] = time.perf_counter() - t
        log.warning("ingest: %.0f s", timings["ingest_s"])
    return cohort, datasets, timings


def settings_key(fields: dict[str, Any], train_cfg: Any) -> str:
    """A short digest of a model's fields and training config: cached weights are reused only for the
    same settings."""
    return hashlib.sha256(json.dumps([fields, train_cfg.__dict__], sort_keys=True, default=str).encode()).hexdigest()[:8]


def train_models(work: Path, ds: Any, params: dict[str, Any], preset: str, seeds: list[int],
                 variants: list[str]) -> tuple[dict, dict]:
    """Train (or load from the cache) the CAE and the AE for every seed: ``(name -> module, name -> seconds)``."""
    import torch

    from rgops.models.cae import ConditionalAE
    from rgops.training.cae import train_cae
    from rgops.training.presets import load_preset, model_config

    modules, seconds = {}, {}
    times_file = work / f"train_s-{preset}.json"
    recorded = json.loads(times_file.read_text()) if times_file.is_file() else {}
    for seed in seeds:
        for kind, overrides in ((v, VARIANTS[v]) for v in variants):
            name = f"{kind}_s{seed}"
            p = copy.deepcopy(params)
            p["train"]["cae"]["model"].update(overrides)
            fields, train_cfg = load_preset(p, "cae", preset)
            train_cfg = type(train_cfg)(**{**train_cfg.__dict__, "seed": seed})
            config = model_config("cae", ds, fields)
            # the cache is keyed by the model and training settings too: a changed default retrains
            cache = work / f"{name}-{preset}-{ds.digest()[:12]}-{settings_key(fields, train_cfg)}.pt"
            if cache.is_file():
                module = ConditionalAE(config)
                module.load_state_dict(torch.load(cache, weights_only=True))
                modules[name] = module.eval()
            else:
                t = time.perf_counter()
                result = train_cae(ds, config, train_cfg, tracker=None, device="cpu")
                recorded[name] = time.perf_counter() - t
                torch.save(result.module.state_dict(), cache)
                times_file.write_text(json.dumps(recorded, indent=2))
                modules[name] = result.module.eval()
                log.warning("trained %s in %.0f s (%d steps)", name, recorded[name], result.steps)
            seconds[name] = recorded.get(name)
    return modules, seconds


def summarise(m: dict[str, float], names: list[str], targets: list[str], seeds: list[int], truth: Any,
              variants: list[str]) -> dict[str, Any]:
    """The per-set table with intervals, the seed aggregates and the issue's targets."""
    import numpy as np

    iv = lambda k: [round(m[k], 4), round(m[k + ".lo"], 4), round(m[k + ".hi"], 4)]  # noqa: E731
    table = {s: {"linked_mean": iv(f"{s}.probe_r2.primary"), **{t: iv(f"{s}.probe_r2.{t}") for t in targets}}
             for s in names}
    # each CAE against the baselines and against the AE of its own seed
    others = [v for v in variants if v != "cae"]
    wanted = [(f"cae_s{s}", b) for s in seeds for b in ("radiomics", "handcrafted", *(f"{v}_s{s}" for v in others))]
    wanted += [(f"{v}_s{s}", b) for v in others for s in seeds for b in ("radiomics", "handcrafted")]
    diffs = {f"{a} - {b}": iv(f"{a}.probe_diff.{b}.primary") for a, b in wanted}
    seeds_doc = {}
    for kind in variants:
        vals = np.array([m[f"{kind}_s{s}.probe_r2.primary"] for s in seeds])
        seeds_doc[kind] = {"linked_mean_per_seed": [round(float(v), 4) for v in vals],
                           "mean": round(float(vals.mean()), 4), "sd": round(float(vals.std(ddof=1)), 4) if len(vals) > 1 else 0.0}
    linked, decoys = list(truth.imaging_linked), list(truth.decoys)
    met = {}
    for s in seeds:
        c = f"cae_s{s}"
        met[c] = {
            "linked_mean>=0.70": m[f"{c}.probe_r2.primary"] >= TARGETS["cae_linked_mean"],
            "above_radiomics_lo>0": m[f"{c}.probe_diff.radiomics.primary.lo"] > 0,
            "above_handcrafted_lo>0": m[f"{c}.probe_diff.handcrafted.primary.lo"] > 0,
            "every_linked>=0.4": all(m[f"{c}.probe_r2.{t}"] >= TARGETS["linked_program_min"] for t in linked),
            "decoys_within_0.05": all(abs(m[f"{c}.probe_r2.{t}"]) <= TARGETS["decoy_abs_max"] for t in decoys),
        }
    return {"table": table, "differences": diffs, "seeds": seeds_doc, "targets_met": met,
            "linked_programs": linked, "decoys": decoys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=7, help="synth seed (the demo cohort uses 42)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    ap.add_argument("--preset", default="demo", help="CAE training preset (CPU-sized: demo)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions (val+test are held out)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-radiogenomics")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "radiogenomics.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")

    import torch

    from rgops.config import load_params
    from rgops.data.datasets import Datasets
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, evaluate, truth_dir_for

    params = load_params(ROOT / "params.yaml")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    cohort, datasets, timings = prepare(work, params, args.patients, args.cohort_seed,
                                        [float(x) for x in args.split.split(",")])
    ds = Datasets.load(datasets)
    variants = [v for v in args.variants.split(",") if v]
    modules, train_s = train_models(work, ds, params, args.preset, seeds, variants)
    truth = GroundTruth.load(truth_dir_for(cohort), load_key(create=False))
    cfg = EvaluateConfig.from_params({"evaluate": {**params.get("evaluate", {}), "n_boot": args.n_boot}})
    stages: dict[str, float] = {}
    last = [time.perf_counter(), ""]

    def progress(stage: str, done: int, total: int) -> None:
        key = stage.split(" ")[0]
        now = time.perf_counter()
        if key != last[1]:
            if last[1]:
                stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
                log.warning("evaluate: %s done in %.0f s", last[1], now - last[0])
            last[:] = [now, key]

    t = time.perf_counter()
    result = evaluate(ds, modules, gan=None, truth=truth, cfg=cfg, progress=progress)
    evaluate_s = time.perf_counter() - t
    m = result.metrics
    names = [*modules, "radiomics", "handcrafted", "oracle"]
    doc = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "cuda": torch.cuda.is_available(),
                    "note": "2-core CPU machine shared with other work while this ran: times are upper bounds"},
        "cohort": {"patients": args.patients, "cohort_seed": args.cohort_seed, "split": args.split,
                   "n_train_patients": result.info["n_train_patients"], "n_held_out_patients": result.info["n_patients"],
                   "n_patches": result.info["n_patches"], "data_digest": result.info["data_digest"]},
        "protocol": "ridge probe on training patients (per-patient mean over slices), scored on held-out patients; "
                    f"{cfg.level:.0%} percentile bootstrap over held-out patients ({cfg.n_boot} resamples), paired",
        "preset": args.preset, "seeds": seeds,
        "targets": TARGETS,
        **summarise(m, names, list(result.target_names), seeds, truth, variants),
        "train_s": {k: (round(v, 1) if v is not None else None) for k, v in train_s.items()},
        "setup_s": {k: round(v, 1) for k, v in timings.items()},
        "evaluate_s": round(evaluate_s, 1), "evaluate_stage_s": {k: round(v, 1) for k, v in stages.items()},
        "total_s": round(time.perf_counter() - t_all, 1),
        "info": {k: v for k, v in result.info.items() if k not in ("patch_spec",)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"radiogenomics bench: {doc['cohort']['n_train_patients']} training / {doc['cohort']['n_held_out_patients']} "
          f"held-out patients, seeds {seeds}, preset {args.preset}")
    for s in names:
        row = doc["table"][s]
        print(f"  {s:12s} linked {row['linked_mean'][0]:.3f} [{row['linked_mean'][1]:.3f}, {row['linked_mean'][2]:.3f}]  "
              + "  ".join(f"{t} {row[t][0]:.2f}" for t in result.target_names))
    for k, v in doc["differences"].items():
        print(f"  {k}: {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]")
    print(f"  seed means: " + ", ".join(f"{k} {v['mean']:.3f} +- {v['sd']:.3f}" for k, v in doc["seeds"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
