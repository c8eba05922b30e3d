"""GAN phenotype bench: train a generator on an ingested cohort and score it on held-out profiles.

    python bench/gan_phenotype.py DATASETS TRUTH_DIR --name NAME [--preset demo] [--epochs N]
        [--model key=value ...] [--train key=value ...] [--null] [--seed S] [--cae CKPT]

Prints and appends one JSON record to ``bench/results/gan_phenotype.jsonl``: training seconds,
``gan.phenotype_rho.*`` (signed Spearman of each measured phenotype with its program across
held-out profiles), ``gan.strip_rho.*``, ``gan.diversity_ratio``, ``gan.frechet_ratio`` and the
real-patch reference ``real.phenotype_rho.*``. ``--null`` scores an untrained generator whose
scale head is fitted (what training starts from: the promotion floor's null runs). The Frechet
feature space is a demo-preset CAE's latent (trained once and cached at ``--cae``), as in
``rgops evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgops.config import load_params  # noqa: E402
from rgops.data.datasets import Datasets  # noqa: E402
from rgops.data.pseudonym import load_key  # noqa: E402
from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, _gan_step, _targets  # noqa: E402
from rgops.models.gan import Generator  # noqa: E402
from rgops.training import load_preset, model_config, train_cae, train_gan  # noqa: E402
from rgops.training.gan import fit_scale_head  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gan_phenotype.jsonl"
KEYS = ("phenotype_rho", "strip_rho", "diversity_ratio", "frechet_ratio", "ms_ssim", "cond_consistency")


def _value(text: str):  # noqa: ANN202
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str]) -> dict:
    return {k: _value(v) for k, v in (item.split("=", 1) for item in items)}


def cae_encoder(ds: Datasets, params: dict, path: Path):  # noqa: ANN201
    if path.is_file():
        return torch.load(path, weights_only=False)
    fields, tcfg = load_preset(params, "cae", "demo")
    model = train_cae(ds, model_config("cae", ds, fields), tcfg, device="cpu").module
    torch.save(model, path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets")
    ap.add_argument("truth")
    ap.add_argument("--name", required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--model", nargs="*", default=[])
    ap.add_argument("--train", nargs="*", default=[])
    ap.add_argument("--null", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cae", default="/tmp/rgops_bench_cae.pt")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    ds = Datasets.load(args.datasets)
    truth = GroundTruth.load(args.truth, load_key(create=False))
    fields, tcfg = load_preset(params, "gan", args.preset)
    config = model_config("gan", ds, {**fields, **_pairs(args.model)})
    tcfg = dataclasses.replace(tcfg, seed=args.seed, **_pairs(args.train),
                               **({"epochs": args.epochs} if args.epochs else {}))
    t0 = time.perf_counter()
    if args.null:
        torch.manual_seed(args.seed)  # an untrained generator with its scale head fitted, as at step 0
        gen, steps = Generator(config).eval(), 0
        fit_scale_head(gen, ds, args.seed)
    else:
        res = train_gan(ds, config, tcfg, device="cpu")
        gen, steps = res.module, res.steps
    seconds = time.perf_counter() - t0
    cfg = EvaluateConfig.from_params(params)
    info: dict = {}
    targets = _targets(ds, truth, cfg, info)
    encoders = {"cae": cae_encoder(ds, params, Path(args.cae))}
    t1 = time.perf_counter()
    metrics, _ = _gan_step(gen, ds, encoders, targets, truth, cfg, info)
    record = {"name": args.name, "null": args.null, "seed": args.seed, "steps": steps,
              "train_seconds": round(seconds, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
              "model": dataclasses.asdict(config) | {"n_genes": None},
              "train": {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "augment"},
              "metrics": {k: round(v, 4) for k, v in metrics.items() if any(s in k for s in KEYS)}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record["metrics"], indent=1))
    print("train_seconds", record["train_seconds"], "steps", steps)


if __name__ == "__main__":
    main()
