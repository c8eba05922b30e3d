"""How much of the hypoxia phenotype do the bench cohort's patches show? (issue #10: hypoxia is the one
imaging-linked program no learned encoder recovers.)

The synthetic phantom (rgops/data/phantom.py) draws hypoxia as two phenotypes: ``necrosis`` (the size of
a 12 HU core) and ``heterogeneity`` (the amplitude of a smooth texture, 9-57 HU), on top of scanner
noise (8-37 HU, by site) and the kernel blur. This bench measures, on the training patients of the
radiogenomics bench's cohort (per-patient means over the contract's slices), the Pearson correlation of
simple image statistics of the tumour with the true phenotype parameters and with the hypoxia module
score (all training patients, and those with little ground glass, whose HU spread otherwise dominates
every interior statistic), so the question "is the signal in the pixels at all?" has a number:

* ``solid_std`` / ``solid_median``: HU spread and median inside the tumour (eroded by 3 px), above -100 HU;
* ``frac_below_20hu``: fraction of the eroded tumour below 20 HU (the necrotic core's attenuation);
* ``highpass_std``: spread of the image minus its 2-pixel Gaussian blur inside the eroded tumour;
* ``tumour_minus_lung_var``: the tumour's high-pass variance minus the lung's (scanner noise removed).

Uses (and builds when missing) the cohort of ``bench/radiogenomics.py`` (``--work``). Writes
``bench/results/hypoxia_signal.json``. Run: ``python bench/hypoxia_signal.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from radiogenomics import prepare  # noqa: E402

STATS = ("solid_std", "solid_median", "frac_below_20hu", "highpass_std", "tumour_minus_lung_var")
PHENOTYPES = ("necrosis", "heterogeneity", "attenuation_hu", "diameter_mm", "ggo_fraction")


def patch_stats(hu: np.ndarray, mask: np.ndarray) -> list[float]:
    """The statistics of the module docstring for one ``(S, S)`` HU patch and its tumour mask."""
    from scipy import ndimage

    core = ndimage.binary_erosion(mask, iterations=3)
    core = core if core.sum() >= 10 else mask
    solid = core & (hu > -100)
    values = hu[solid] if solid.sum() > 5 else hu[core]
    high = hu - ndimage.gaussian_filter(hu, 2)
    lung = ~ndimage.binary_dilation(mask, iterations=3) & (hu < -600)
    lung_var = float(high[lung].var()) if lung.sum() > 20 else 0.0
    return [float(values.std()), float(np.median(values)), float((values < 20).mean()), float(high[core].std()),
            float(high[core].var()) - lung_var]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-radiogenomics")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hypoxia_signal.json")
    args = ap.parse_args()
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")

    from rgops.data.datasets import Datasets
    from rgops.data.pseudonym import load_key
    from rgops.evaluation import association as A
    from rgops.evaluation.evaluate import GroundTruth, truth_dir_for
    from rgops.evaluation.protocol import PatientSplit, per_patient

    from rgops.config import load_params

    # the radiogenomics bench's cohort and datasets (built and cached there when missing)
    cohort, datasets, _ = prepare(args.work, load_params(ROOT / "params.yaml"), args.patients, args.cohort_seed,
                                  [0.6, 0.2, 0.2])
    ds = Datasets.load(datasets)
    truth = GroundTruth.load(truth_dir_for(cohort), load_key(create=False))
    split = PatientSplit.of(ds.manifest, ["val", "test"])
    hu = ds.spec.to_hu(ds.patches[:, 0])
    rows = np.asarray([patch_stats(h, m > 0) for h, m in zip(hu, ds.masks[:, 0])])
    x = per_patient(ds.patient_ids, rows, split.train)
    scores = A.module_scores(ds.genes.astype(np.float64), list(ds.panel.genes),
                             {p: truth.modules[p] for p in truth.programs})
    hypoxia = per_patient(ds.patient_ids, scores, split.train)[:, list(truth.programs).index("hypoxia")]
    table = truth.table.loc[split.train]
    out: dict[str, dict[str, dict[str, float]]] = {}
    # all training patients, and those whose ground glass is small (it dominates the HU spread otherwise)
    for subset, keep in (("all", np.ones(len(table), bool)), ("ggo_fraction<0.08", table["ggo_fraction"].to_numpy() < 0.08)):
        out[subset] = {}
        for j, name in enumerate(STATS):
            r = {p: float(np.corrcoef(x[keep, j], table[p].to_numpy(float)[keep])[0, 1]) for p in PHENOTYPES}
            r["hypoxia_score"] = float(np.corrcoef(x[keep, j], hypoxia[keep])[0, 1])
            out[subset][name] = {k: round(v, 3) for k, v in r.items()}
            print(f"{subset:18s} {name:22s} " + "  ".join(f"{k} {v:+.2f}" for k, v in out[subset][name].items()))
        out[subset]["n_patients"] = int(keep.sum())  # type: ignore[assignment]
    truth_r = {p: round(float(np.corrcoef(table[p].to_numpy(float), hypoxia)[0, 1]), 3)
               for p in ("necrosis", "heterogeneity")}
    doc = {"cohort": {"patients": args.patients, "cohort_seed": args.cohort_seed, "n_train_patients": len(split.train)},
           "pearson_r_on_training_patients": out, "true_phenotype_vs_hypoxia_score": truth_r,
           "note": "per-patient means over the patch contract's slices; statistics of the HU patch inside the tumour"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
