"""CAE variants on the radiogenomics bench cohort: one training setting at a time against the default.

Each variant is the CAE as params.yaml trains it (``bench`` preset) with a few model or training
fields changed; it is trained for one seed on the bench cohort of ``bench/radiogenomics.py`` (built and cached when missing)
and scored on the probe protocol (ridge probe fitted on the 608 training patients, scored on the 392
held-out patients, 90% bootstrap interval of the linked mean). Only the CAE is scored (the baselines
are in ``bench/results/radiogenomics.json``: radiomics 0.662, handcrafted 0.656, oracle 0.840), so a
variant costs its training time plus about 30 s.

Trained weights are cached under ``--work``/variants, keyed by variant, seed and settings. Each run
adds its row to ``bench/results/cae_variants.json`` (a rerun of the same variant and
seed replaces its row) with each variant's mean and spread over its seeds.
Run: ``python bench/cae_variants.py --variant view_nojit --seed 1`` (``--list`` names the variants).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from radiogenomics import prepare, settings_key  # noqa: E402

NO_JITTER = {"intensity_scale": 0.0, "intensity_shift": 0.0}
SOFT_TISSUE_VIEW = [[-100.0, 150.0]]

#: name -> (model overrides, training overrides, what it asks)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "default": ({}, {}, "the CAE as params.yaml trains it"),
    "nojitter": ({}, {"augment": NO_JITTER}, "does the +-30 HU intensity jitter hide absolute attenuation?"),
    "aux4": ({}, {"aux_weight": 4.0}, "a 4x weight on the gene-PC head"),
    "view_nojit": ({"views": SOFT_TISSUE_VIEW}, {"augment": NO_JITTER},
                   "a soft-tissue window (-100..150 HU) as a second channel, without intensity jitter"),
    "view": ({"views": SOFT_TISSUE_VIEW}, {}, "the soft-tissue window with the default jitter"),
    "repeats3": ({}, {"patient_repeats": 3}, "3x the training (each patient 3 times an epoch)"),
    "latent64": ({"latent_dim": 64}, {}, "a 64-dimensional biomarker"),
    "latent128": ({"latent_dim": 128}, {}, "a 128-dimensional biomarker"),
}


def train_variant(ds: Any, params: dict[str, Any], name: str, seed: int, cache_dir: Path) -> tuple[Any, float | None]:
    """The trained CAE of a variant (from the cache when there), and its training seconds (None: cached)."""
    import torch

    from rgops.models.cae import ConditionalAE
    from rgops.training.common import AugmentConfig
    from rgops.training.cae import train_cae
    from rgops.training.presets import load_preset, model_config

    model_over, train_over, _ = VARIANTS[name]
    p = copy.deepcopy(params)
    p["train"]["cae"]["model"].update(model_over)
    fields, tc = load_preset(p, "cae", "bench")
    kw = {**tc.__dict__, "seed": seed, **{k: v for k, v in train_over.items() if k != "augment"}}
    if "augment" in train_over:
        kw["augment"] = AugmentConfig(**{**tc.augment.__dict__, **train_over["augment"]})
    tc = type(tc)(**kw)
    config = model_config("cae", ds, fields)
    cache = cache_dir / f"{name}_s{seed}-{ds.digest()[:12]}-{settings_key(fields, tc)}.pt"
    if cache.is_file():
        module = ConditionalAE(config)
        module.load_state_dict(torch.load(cache, weights_only=True))
        return module.eval(), None
    t = time.perf_counter()
    module = train_cae(ds, config, tc, tracker=None, device="cpu").module.eval()
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), cache)
    return module, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-radiogenomics")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cae_variants.json")
    args = ap.parse_args()
    if args.list:
        for name, (m, t, what) in VARIANTS.items():
            print(f"{name:12s} {what}  model {m}  train {t}")
        return
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")

    from rgops.config import load_params
    from rgops.data.datasets import Datasets
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, _targets, encode, truth_dir_for
    from rgops.evaluation.protocol import check_cohort, per_patient, probe_metrics

    params = load_params(ROOT / "params.yaml")
    # the radiogenomics bench's cohort and datasets (built and cached there when missing)
    _, datasets, _ = prepare(args.work, params, args.patients, args.cohort_seed, [0.6, 0.2, 0.2])
    ds = Datasets.load(datasets)
    module, train_s = train_variant(ds, params, args.variant, args.seed, args.work / "variants")
    truth = GroundTruth.load(truth_dir_for(args.work / f"cohort{args.patients}-s{args.cohort_seed}"),
                             load_key(create=False))
    cfg = EvaluateConfig.from_params({"evaluate": params.get("evaluate", {})})
    targets = _targets(ds, truth, cfg, {})
    split = check_cohort(ds.manifest, ["val", "test"], cfg.probe().min_train, cfg.probe().min_held_out)
    pid = ds.patient_ids
    feats = encode(module, ds.patches, cfg.batch_size, ds.mm_per_px)
    name = args.variant
    metrics, _ = probe_metrics({name: per_patient(pid, feats, split.train)}, {name: per_patient(pid, feats, split.held_out)},
                               per_patient(pid, targets.rows, split.train), per_patient(pid, targets.rows, split.held_out),
                               targets.names, targets.primary, [], cfg.probe())
    key = f"{name}.probe_r2.primary"
    row = {"variant": name, "seed": args.seed, "what": VARIANTS[name][2], "model": VARIANTS[name][0],
           "train": VARIANTS[name][1], "linked_mean": [round(metrics[k], 4) for k in (key, key + ".lo", key + ".hi")],
           **{t: round(metrics[f"{name}.probe_r2.{t}"], 4) for t in targets.names},
           "train_s": None if train_s is None else round(train_s, 1),
           "n_train_patients": len(split.train), "n_held_out_patients": len(split.held_out)}
    print(json.dumps(row))
    write_results(args.out, row)


PROTOCOL = ("ridge probe fitted on the bench cohort's training patients, scored on its held-out "
            "patients, 90% percentile bootstrap of the linked-program mean")
BASELINES = "bench/results/radiogenomics.json (radiomics 0.662, handcrafted 0.656, oracle 0.840)"


def summarise_seeds(rows: list[dict[str, Any]], by: str, extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Per value of ``row[by]``: its seeds, the linked mean per seed (and each ``extra`` field per
    seed), and the mean and sample spread of the linked mean over the seeds."""
    import statistics

    summary: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = summary.setdefault(r[by], {"seeds": [], "linked_mean_per_seed": [], **{f"{k}_per_seed": [] for k in extra}})
        s["seeds"].append(r["seed"])
        s["linked_mean_per_seed"].append(r["linked_mean"][0])
        for k in extra:
            s[f"{k}_per_seed"].append(r[k])
    for s in summary.values():
        vals = s["linked_mean_per_seed"]
        s["mean"] = round(statistics.fmean(vals), 4)
        s["sd"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else None
    return summary


def write_results(out: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the results document (replacing an earlier run of the same variant and seed, whose
    training time it keeps when this run loaded cached weights) and
    recompute each variant's mean and spread over its seeds."""
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    same = [r for r in rows if (r["variant"], r["seed"]) == (row["variant"], row["seed"])]
    if row["train_s"] is None and same:  # weights from the cache: keep the training time measured then
        row = {**row, "train_s": same[0]["train_s"]}
    rows = [r for r in rows if r not in same] + [row]
    rows.sort(key=lambda r: (list(VARIANTS).index(r["variant"]) if r["variant"] in VARIANTS else 99, r["seed"]))
    doc = {"protocol": PROTOCOL, "baselines": BASELINES, "summary": summarise_seeds(rows, "variant"), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
