"""How much of each program's true score the CAE's gene-PC head is asked to predict (bench cohort).

The CAE's gene-aligned head predicts the top ``aux_pcs`` principal components of the training split's
gene matrix (``rgops.training.cae.gene_targets``). If a program's score were missing from those
components, no training could put it into the latent. This fits each program's true score (the
evaluation's primary target, per patient) linearly on the head's targets, over the training patients,
for k = 8, 16 (the default) and 32, and writes ``bench/results/aux_targets.json``.
No model is trained: it runs in seconds once the bench cohort exists (built and cached when missing).
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

OUT = ROOT / "bench" / "results" / "aux_targets.json"


def r2_linear(x: np.ndarray, y: np.ndarray) -> float:
    """In-sample R^2 of the least-squares fit of ``y (n,)`` on ``x (n, k)`` with an intercept."""
    design = np.c_[x, np.ones(len(x))]
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(1 - ((y - design @ beta) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-radiogenomics")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")

    from rgops.config import load_params
    from rgops.data.datasets import Datasets
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, _targets, truth_dir_for
    from rgops.evaluation.protocol import check_cohort, per_patient
    from rgops.training.cae import gene_targets

    params = load_params(ROOT / "params.yaml")
    _, datasets, _ = prepare(args.work, params, args.patients, args.cohort_seed, [0.6, 0.2, 0.2])
    ds = Datasets.load(datasets)
    truth = GroundTruth.load(truth_dir_for(args.work / f"cohort{args.patients}-s{args.cohort_seed}"), load_key(create=False))
    cfg = EvaluateConfig.from_params({"evaluate": params.get("evaluate", {})})
    targets = _targets(ds, truth, cfg, {})
    split = check_cohort(ds.manifest, ["val", "test"], cfg.probe().min_train, cfg.probe().min_held_out)
    pids, rows = ds.patient_ids, ds.indices("train")
    scores = per_patient(pids, targets.rows, split.train)
    table = {}
    for k in (8, 16, 32):
        head = per_patient(pids, gene_targets(ds.genes, pids, rows, k), split.train)
        table[f"top_{k}_pcs"] = {name: round(r2_linear(head, scores[:, j]), 3) for j, name in enumerate(targets.names)}
        print(k, table[f"top_{k}_pcs"])
    doc = {"what": "in-sample R^2 of each program's true score fitted linearly on the gene-PC head's targets",
           "patients": len(split.train), "default_aux_pcs": params["train"]["cae"]["model"].get("aux_pcs"),
           "r2": table}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
