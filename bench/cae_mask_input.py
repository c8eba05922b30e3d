"""Does the tumour mask as a second input channel lift the CAE's biomarker? (bench cohort, probe protocol)

The CAE sees only the HU patch; radiomics and the handcrafted set are computed inside the tumour
mask. This bench trains the CAE exactly as ``train_cae`` does with the ``bench`` preset (the same
batches, augmentation draws, optimiser and loss: ``--mode plain`` reproduces the default variant's
weights, and so its R^2, to the last digit) but with the patch's tumour mask as a second input
channel of the encoder: geometric augmentation moves the mask with the image, intensity jitter
touches only the image, and the loss still reconstructs only the image. Modes:

* ``plain``: one channel, the production CAE (the control);
* ``mask01``: mask channel 0 outside the tumour, 1 inside (0 is also what the convolution pads with);
* ``mask_pm``: mask channel -1 outside, +1 inside;
* ``mask_pm_pool``: ``mask_pm``, and the biomarker also carries the mean and standard deviation,
  inside the tumour, of each of the first encoder block's feature maps (learned texture pooled over
  the tumour: the hypoxia signal is a faint necrotic core at the scale of the noise, which the
  bottleneck's global layout may not keep). The gene head reads latent and pooled statistics, so
  its gradient shapes the first block's filters; the decoder still reads the latent only;
* ``mask_pm_pool_soft``: ``mask_pm_pool`` with a soft-tissue window (-100..150 HU) of the patch as a
  further input channel and no intensity jitter (the one earlier setting that found some hypoxia,
  ``bench/cae_variants.py``), so the pooled statistics see the 12 HU core at a finer HU step;
* ablations of it: ``mask_pm_soft`` (the view and no jitter, no pooled statistics) and
  ``mask_pm_pool_nojit`` (pooled statistics and no jitter, no view).

Each run adds its row to ``bench/results/cae_mask_input.json`` (a rerun of a mode and seed replaces
its row) with each mode's mean and spread over seeds. The cohort is the radiogenomics bench's
(``bench/radiogenomics.py``, built and cached when missing). Serving a mask-reading CAE would need
the mask on ``/extract_patches`` too; this bench only measures whether that is worth building.

    .venv/bin/python bench/cae_mask_input.py --mode mask_pm --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cae_variants import BASELINES, PROTOCOL, summarise_seeds  # noqa: E402
from radiogenomics import prepare  # noqa: E402

MODES = ("plain", "mask01", "mask_pm", "mask_pm_pool", "mask_pm_pool_soft", "mask_pm_soft", "mask_pm_pool_nojit")
SOFT_TISSUE_HU = (-100.0, 150.0)
OUT = ROOT / "bench" / "results" / "cae_mask_input.json"


def mask_channel(masks: np.ndarray, mode: str) -> np.ndarray:
    """``(N, 1, S, S)`` uint8 masks -> the encoder's mask channel, float32 in the mode's coding."""
    m = np.asarray(masks, dtype=np.float32)
    return m if mode == "mask01" else m * 2.0 - 1.0


def tumour_pooled(h: Any, mask_pm: Any) -> Any:
    """Mean and standard deviation of each channel of ``h`` (B, C, s, s) inside the tumour, the mask
    (B, 1, S, S, coded +-1) average-pooled to ``s``: (B, 2C)."""
    import torch
    import torch.nn.functional as F

    w = F.adaptive_avg_pool2d((mask_pm + 1) / 2, h.shape[-1])
    total = w.sum(dim=(2, 3)).clamp_min(1e-3)
    mean = (h * w).sum(dim=(2, 3)) / total
    var = ((h - mean[:, :, None, None]) ** 2 * w).sum(dim=(2, 3)) / total
    return torch.cat([mean, (var + 1e-6).sqrt()], dim=1)


def train(ds: Any, params: dict[str, Any], mode: str, seed: int, repeats: int | None = None) -> tuple[Any, Any, float]:
    """The CAE trained like ``train_cae`` (bench preset; ``repeats`` overrides its patient_repeats), with
    the mask channel unless ``plain``: ``(model, encode function (x (B, C, S, S), scale (B,)) -> latent, seconds)``."""
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from torch import nn

    from rgops.data.patch import log_scale
    from rgops.models.cae import ConditionalAE
    from rgops.training.cae import gene_targets
    from rgops.training.common import AugmentConfig, augment, make_adamw, patient_batches, step_generator
    from rgops.training.presets import load_preset, model_config

    fields, tc = load_preset(params, "cae", "bench")
    if repeats is not None:
        tc = type(tc)(**{**tc.__dict__, "patient_repeats": repeats})
    config = model_config("cae", ds, fields)
    dev = torch.device("cpu")
    torch.manual_seed(seed)
    model = ConditionalAE(config)
    first = model.stem[0][0]
    soft = mode.endswith("_soft")
    no_jitter = soft or mode.endswith("_nojit")
    if mode != "plain":  # (B, 2, S, S): the image and its tumour mask [+ the soft-tissue view]
        model.stem[0][0] = nn.Conv2d(3 if soft else 2, first.out_channels, 4, stride=2, padding=1, bias=False)
    pool = "_pool" in mode
    if no_jitter:
        tc = type(tc)(**{**tc.__dict__, "augment": type(tc.augment)(
            **{**tc.augment.__dict__, "intensity_scale": 0.0, "intensity_shift": 0.0})})
    if soft:  # the model's own re-windowing (ConditionalAE.window_views), set after its layers are drawn
        model.config = dataclasses.replace(config, views=(SOFT_TISSUE_HU,))
    if pool:  # the gene head reads the latent and the tumour-pooled statistics of the first block
        model.aux_head = nn.Sequential(nn.Linear(config.latent_dim + 2 * first.out_channels, config.gene_hidden),
                                       nn.SiLU(), nn.Linear(config.gene_hidden, config.aux_dim))

    def encode_parts(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latent for the decoder, the biomarker: the latent [+ pooled statistics])."""
        if soft:  # (image, soft-tissue view, mask)
            x = torch.cat([model.window_views(x[:, :1]), x[:, 1:]], dim=1)
        h1 = model.stem[0](x)
        h = model.stem[1:](h1).flatten(1)
        z = torch.cat([model.to_latent(h), scale[:, None]], dim=1)  # the scale input, as in ConditionalAE
        return z, torch.cat([z, tumour_pooled(h1, x[:, -1:])], dim=1) if pool else z

    def encode(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return encode_parts(x, scale)[1]

    rows, pids = ds.indices("train"), ds.patient_ids
    targets = torch.from_numpy(gene_targets(ds.genes, pids, rows, config.aux_pcs)[rows])
    x_all = torch.from_numpy(np.asarray(ds.patches[rows], dtype=np.float32))
    # geometric augmentation pads rotations with -1: code the mask +-1 through it, then back
    m_all = torch.from_numpy(np.asarray(ds.masks[rows], dtype=np.float32) * 2.0 - 1.0)
    genes = torch.from_numpy(np.asarray(ds.genes[rows], dtype=np.float32))
    scale = torch.from_numpy(log_scale(ds.mm_per_px)[rows])
    groups = pd.factorize(np.asarray(pids)[rows])[0]
    opt = make_adamw(model.parameters(), dev, tc.lr, weight_decay=tc.weight_decay)
    geometric = AugmentConfig(**{**tc.augment.__dict__, "intensity_scale": 0.0, "intensity_shift": 0.0})
    t0, step = time.perf_counter(), 0
    model.train()
    for epoch in range(tc.epochs):
        for idx in patient_batches(groups, len(x_all), tc.batch_size, epoch, seed, 0, 1, tc.patient_repeats):
            gen = step_generator(seed, 0, step, dev)
            x = augment(torch.cat([x_all[idx], m_all[idx]], dim=1), geometric, gen)
            b = len(x)
            jitter_scale = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * tc.augment.intensity_scale
            jitter_shift = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * tc.augment.intensity_shift
            image = (x[:, :1] * jitter_scale + jitter_shift).clamp(-1.0, 1.0)
            mask = (x[:, 1:] + 1) / 2 if mode == "mask01" else x[:, 1:]
            z, feats = encode_parts(image if mode == "plain" else torch.cat([image, mask], dim=1), scale[idx])
            loss = (F.mse_loss(model.decode(z, genes[idx]), image)
                    + tc.aux_weight * F.mse_loss(model.aux_head(feats), targets[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print(f"{mode} seed {seed}: epoch {epoch + 1}/{tc.epochs} loss {float(loss):.4f}", flush=True)
    return model.eval(), encode, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES, default="mask_pm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patient-repeats", type=int, default=None,
                    help="override the bench preset's patient_repeats (the row's mode gets a _r<N> suffix)")
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-radiogenomics")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")
    import torch

    from rgops.config import load_params
    from rgops.data.datasets import Datasets
    from rgops.data.patch import log_scale
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, _targets, truth_dir_for
    from rgops.evaluation.protocol import check_cohort, per_patient, probe_metrics

    params = load_params(ROOT / "params.yaml")
    _, datasets, _ = prepare(args.work, params, args.patients, args.cohort_seed, [0.6, 0.2, 0.2])
    ds = Datasets.load(datasets)
    _, encode, train_s = train(ds, params, args.mode, args.seed, args.patient_repeats)
    feats = []
    with torch.no_grad():
        scale = torch.from_numpy(log_scale(ds.mm_per_px))
        for i in range(0, len(ds.patches), 256):
            x = torch.from_numpy(np.asarray(ds.patches[i:i + 256], dtype=np.float32))
            if args.mode != "plain":
                x = torch.cat([x, torch.from_numpy(mask_channel(ds.masks[i:i + 256], args.mode))], dim=1)
            feats.append(encode(x, scale[i:i + 256]).numpy())
    feats_all = np.concatenate(feats)
    truth = GroundTruth.load(truth_dir_for(args.work / f"cohort{args.patients}-s{args.cohort_seed}"), load_key(create=False))
    cfg = EvaluateConfig.from_params({"evaluate": params.get("evaluate", {})})
    targets = _targets(ds, truth, cfg, {})
    split = check_cohort(ds.manifest, ["val", "test"], cfg.probe().min_train, cfg.probe().min_held_out)
    pid = ds.patient_ids
    name = args.mode if args.patient_repeats is None else f"{args.mode}_r{args.patient_repeats}"
    metrics, _ = probe_metrics({name: per_patient(pid, feats_all, split.train)},
                               {name: per_patient(pid, feats_all, split.held_out)},
                               per_patient(pid, targets.rows, split.train), per_patient(pid, targets.rows, split.held_out),
                               targets.names, targets.primary, [], cfg.probe())
    key = f"{name}.probe_r2.primary"
    row = {"mode": name, "seed": args.seed, "linked_mean": [round(metrics[k], 4) for k in (key, key + ".lo", key + ".hi")],
           **{t: round(metrics[f"{name}.probe_r2.{t}"], 4) for t in targets.names}, "train_s": round(train_s, 1),
           "n_train_patients": len(split.train), "n_held_out_patients": len(split.held_out)}
    print(json.dumps(row))
    write_results(args.out, row)


def write_results(out: Path, row: dict[str, Any]) -> None:
    """Add ``row`` (replacing an earlier run of its mode and seed); each mode's mean and spread over seeds."""
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in rows if (r["mode"], r["seed"]) != (row["mode"], row["seed"])] + [row]
    rows.sort(key=lambda r: (r["mode"].split("_r")[0] not in MODES, r["mode"], r["seed"]))
    doc = {"what": "the tumour mask as a second encoder channel; otherwise train_cae's bench preset",
           "protocol": PROTOCOL, "baselines": BASELINES, "summary": summarise_seeds(rows, "mode", ("hypoxia",)),
           "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
