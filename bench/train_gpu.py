"""The rgops training loops on a GPU against fp32 on CPU: loss curves, the ``full`` preset, and its science.

The GPU machine has PyTorch, numpy, pandas and pyarrow but no pydicom, MLflow or the bench cohort
(3.8 GB of DICOM), so the training data travels as a *bundle*: the train and val rows of an ingested
datasets folder, patches stored as float16 (the largest rounding error is 2^-11 of the [-1, 1] HU
window, 0.37 HU, far below the scanner noise the cohort simulates), genes once per patient. The
same bundle feeds the CPU and the GPU runs, so both train on identical numbers.

    # here (CPU), once: the bundle, and the fp32 CPU reference curves
    python bench/train_gpu.py bundle DATASETS .gpu/bundle.npz
    python bench/train_gpu.py curves .gpu/bundle.npz --device cpu --seeds 0,1,2 --out bench/results/train_gpu_curves_cpu.json
    # on the GPU machine: the same curves under bf16 autocast, and the full preset (weights to --weights-dir)
    python bench/train_gpu.py curves .gpu/bundle.npz --device cuda --seeds 0,1,2,3,4 --out train_gpu_curves_cuda.json
    python bench/train_gpu.py full .gpu/bundle.npz --device cuda --weights-dir OUT --out train_gpu_full_cuda.json
    # here again: the verdict, and the full preset's models on the held-out patients (probe protocol)
    python bench/train_gpu.py compare bench/results/train_gpu_curves_cpu.json train_gpu_curves_cuda.json
    python bench/train_gpu.py evaluate DATASETS TRUTH --weights-dir OUT --full train_gpu_full_cuda.json

**What "matching within noise" means** (fixed before the GPU ran): both devices train the default
(``full`` preset) models with the real ``train_cae``/``train_gan`` loops, the same rows, epochs and
batch size, over several seeds each. For every loss the curves report, the mean over the last
``--tail`` epochs is taken per seed; the GPU's seed mean minus the CPU's seed mean must lie within
2 standard errors of that difference (from both devices' seed-to-seed spread). The per-epoch
fraction of epochs within 2 standard errors is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

log = logging.getLogger("train_gpu")
RESULTS = ROOT / "bench" / "results"
CURVE_EPOCHS = {"cae": 24, "gan": 6}  # both at batch 128: about 120 and 30 steps on 608 training patients
CURVE_BATCH = 128


# ---- the bundle -------------------------------------------------------------------------------------


def make_bundle(datasets: Path, out: Path) -> dict[str, Any]:
    """Write the train and val rows of ``datasets`` as one compressed ``.npz`` (see the module doc)."""
    from rgops.data.datasets import Datasets

    ds = Datasets.load(datasets, mmap=True)
    rows = np.flatnonzero(ds.manifest["split"].isin(["train", "val"]).to_numpy())
    man = ds.manifest.iloc[rows].reset_index(drop=True)
    pids, first = np.unique(man["pseudo_id"].to_numpy(), return_index=True)
    patient_of_row = np.searchsorted(pids, man["pseudo_id"].to_numpy())
    genes = ds.genes[rows][first]
    if not np.array_equal(ds.genes[rows], genes[patient_of_row]):
        raise SystemExit("genes differ between slices of one patient; the bundle stores them once per patient")
    patches = np.asarray(ds.patches[rows], dtype=np.float32)
    half = patches.astype(np.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, patches=half, genes=genes.astype(np.float32), patient_of_row=patient_of_row.astype(np.int32),
        pseudo_id=pids.astype(str), split=man["split"].to_numpy().astype(str),
        mm_per_px=man["mm_per_px"].to_numpy(dtype=np.float32),
        panel=np.array(json.dumps(ds.panel.to_json())), spec=np.array(json.dumps(ds.spec.to_json())),
        source_digest=np.array(ds.digest()))
    err = float(np.abs(half.astype(np.float32) - patches).max())
    info = {"rows": len(rows), "patients": len(pids), "bytes": out.stat().st_size, "max_abs_rounding": err,
            "max_abs_rounding_hu": err * (ds.spec.hu_window[1] - ds.spec.hu_window[0]) / 2}
    print(json.dumps(info))
    return info


def load_bundle(path: Path):  # noqa: ANN201
    """The bundle as an in-memory :class:`rgops.data.datasets.Datasets` (float32 patches, empty masks)."""
    from rgops.data.datasets import Datasets, GenePanel
    from rgops.data.patch import PatchSpec

    z = np.load(path)
    patches = z["patches"].astype(np.float32)
    por = z["patient_of_row"]
    manifest = pd.DataFrame({"pseudo_id": z["pseudo_id"][por], "split": z["split"], "mm_per_px": z["mm_per_px"]})
    panel = GenePanel.from_json(json.loads(str(z["panel"])))
    spec = PatchSpec.from_json(json.loads(str(z["spec"])))
    return Datasets(patches, np.zeros(patches.shape, np.uint8), z["genes"][por], manifest, panel, None, spec)


# ---- training ---------------------------------------------------------------------------------------


def _configs(kind: str, ds: Any, overrides: dict[str, Any]) -> tuple[Any, Any]:
    from train_throughput import full_preset

    return full_preset(kind, ds, **overrides)


def _train(kind: str, ds: Any, config: Any, tcfg: Any, device: str):  # noqa: ANN202
    from rgops.training import train_cae, train_gan

    return (train_cae if kind == "cae" else train_gan)(ds, config, tcfg, tracker=None, device=device)


def _machine(device: str) -> dict[str, Any]:
    import torch

    gpu = device.startswith("cuda")
    return {"device": device, "device_name": torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(),
            "precision": "bf16 autocast, channels_last, fused AdamW" if gpu else "fp32",
            "threads": torch.get_num_threads()}


def run_curves(bundle: Path, device: str, seeds: list[int], kinds: list[str], out: Path) -> dict[str, Any]:
    """Per-epoch loss records of the full preset's models, ``CURVE_EPOCHS`` at ``CURVE_BATCH``, per seed."""
    ds = load_bundle(bundle)
    doc: dict[str, Any] = {"machine": _machine(device), "batch_size": CURVE_BATCH, "epochs": CURVE_EPOCHS,
                           "rows": len(ds), "curves": {}}
    for kind in kinds:
        for seed in seeds:
            config, tcfg = _configs(kind, ds, {"epochs": CURVE_EPOCHS[kind], "batch_size": CURVE_BATCH,
                                               "compile": False, "checkpoint_every": 0, "seed": seed})
            t = time.perf_counter()
            res = _train(kind, ds, config, tcfg, device)
            seconds = time.perf_counter() - t
            doc["curves"].setdefault(kind, {})[str(seed)] = {"seconds": round(seconds, 1), "steps": res.steps,
                                                              "history": res.history}
            print(f"{kind} seed {seed}: {res.steps} steps in {seconds:.0f} s, last {_short(res.history[-1])}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1))
    return doc


def run_full(bundle: Path, device: str, kinds: list[str], weights_dir: Path, out: Path,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the ``full`` preset as params.yaml has it (seed 0); save the weights and the history.
    ``overrides`` (fewer epochs, no compile) are for a smoke run and are recorded."""
    import torch

    ds = load_bundle(bundle)
    doc: dict[str, Any] = {"machine": _machine(device), "rows": len(ds), "overrides": overrides or {}, "models": {}}
    weights_dir.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        config, tcfg = _configs(kind, ds, {"checkpoint_every": 0, **(overrides or {})})
        t = time.perf_counter()
        res = _train(kind, ds, config, tcfg, device)
        seconds = time.perf_counter() - t
        torch.save(res.module.state_dict(), weights_dir / f"{kind}_full.pt")
        doc["models"][kind] = {"seconds": round(seconds, 1), "steps": res.steps, "model": dataclasses.asdict(config),
                               "train": {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "augment"},
                               "history": res.history}
        images = sum(r.get("images_per_second", 0.0) * r.get("epoch_seconds", 0.0) for r in res.history)
        doc["models"][kind]["training_images"] = round(images)
        print(f"{kind} full: {res.steps} steps, {images:,.0f} images in {seconds:.0f} s ({images / seconds:,.0f} "
              f"images/s with compilation and per-epoch evaluation), last {_short(res.history[-1])}", flush=True)
        out.write_text(json.dumps(doc, indent=1))
    return doc


def _short(record: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith(("train_", "val_")))


# ---- the verdict ------------------------------------------------------------------------------------


def compare(cpu: dict[str, Any], gpu: dict[str, Any], tail: int) -> dict[str, Any]:
    """For each model and loss: tail means per device, their difference and its 2-SE band (module doc)."""
    out: dict[str, Any] = {"cpu": cpu["machine"], "gpu": gpu["machine"], "tail_epochs": tail,
                           "criterion": "GPU seed mean - CPU seed mean of the last `tail` epochs' mean loss within "
                                        "2 standard errors of the difference (seed-to-seed spread of both)",
                           "models": {}}
    for kind in cpu["curves"]:
        if kind not in gpu["curves"]:
            continue
        keys = [k for k in cpu["curves"][kind]["0"]["history"][0] if k.startswith(("train_", "val_"))]
        per: dict[str, Any] = {}
        for key in keys:
            c = np.array([[r[key] for r in s["history"]] for s in cpu["curves"][kind].values()])
            g = np.array([[r[key] for r in s["history"]] for s in gpu["curves"][kind].values()])
            n = min(c.shape[1], g.shape[1])
            c, g = c[:, :n], g[:, :n]
            ct, gt = c[:, -tail:].mean(1), g[:, -tail:].mean(1)
            se = math.sqrt(ct.var(ddof=1) / len(ct) + gt.var(ddof=1) / len(gt))
            diff = float(gt.mean() - ct.mean())
            se_e = np.sqrt(c.var(0, ddof=1) / len(c) + g.var(0, ddof=1) / len(g))
            within_e = np.abs(g.mean(0) - c.mean(0)) <= 2 * np.maximum(se_e, 1e-12)
            per[key] = {"cpu_tail": [round(float(ct.mean()), 5), round(float(ct.std(ddof=1)), 5)],
                        "gpu_tail": [round(float(gt.mean()), 5), round(float(gt.std(ddof=1)), 5)],
                        "difference": round(diff, 5), "two_se": round(2 * se, 5),
                        "relative_difference": round(diff / abs(ct.mean()), 4) if ct.mean() else None,
                        "within_noise": bool(abs(diff) <= 2 * se),
                        "epochs_within_2se": round(float(within_e.mean()), 3),
                        "cpu_curve": [round(float(v), 5) for v in c.mean(0)],
                        "gpu_curve": [round(float(v), 5) for v in g.mean(0)]}
        out["models"][kind] = {"seeds": {"cpu": len(cpu["curves"][kind]), "gpu": len(gpu["curves"][kind])},
                               "all_within_noise": all(v["within_noise"] for v in per.values()), "losses": per}
    return out


# ---- the full preset's science (CPU, with the whole cohort) ------------------------------------------


def evaluate_full(datasets: Path, truth_dir: Path, weights_dir: Path, n_boot: int) -> dict[str, Any]:
    """The GPU-trained full-preset CAE on the probe protocol (held-out patients, radiomics beside it) and
    the GPU-trained full-preset GAN (when its weights are there) on the phenotype measures, as
    ``rgops evaluate`` computes them."""
    import os

    import torch

    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")
    from rgops.config import load_params
    from rgops.data.datasets import Datasets
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, evaluate
    from rgops.models.cae import ConditionalAE
    from rgops.models.gan import Generator

    params = load_params(ROOT / "params.yaml")
    ds = Datasets.load(datasets)
    cae_cfg, _ = _configs("cae", ds, {})
    gan_cfg, _ = _configs("gan", ds, {})
    cae = ConditionalAE(cae_cfg)
    cae.load_state_dict(torch.load(weights_dir / "cae_full.pt", weights_only=True))
    gen = None
    if (weights_dir / "gan_full.pt").is_file():
        gen = Generator(gan_cfg)
        gen.load_state_dict(torch.load(weights_dir / "gan_full.pt", weights_only=True))
        gen = gen.eval()
    truth = GroundTruth.load(truth_dir, load_key(create=False))
    cfg = EvaluateConfig.from_params({"evaluate": {**params.get("evaluate", {}), "n_boot": n_boot}})
    result = evaluate(ds, {"cae_full": cae.eval()}, gan=gen, truth=truth, cfg=cfg)
    return {k: round(float(v), 4) for k, v in result.metrics.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle")
    b.add_argument("datasets", type=Path)
    b.add_argument("out", type=Path)
    c = sub.add_parser("curves")
    c.add_argument("bundle", type=Path)
    c.add_argument("--device", default="cpu")
    c.add_argument("--seeds", default="0,1,2")
    c.add_argument("--kinds", default="cae,gan")
    c.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("full")
    f.add_argument("bundle", type=Path)
    f.add_argument("--device", default="cuda")
    f.add_argument("--kinds", default="cae,gan")
    f.add_argument("--weights-dir", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--epochs", type=int, help="fewer epochs than the preset (a smoke run)")
    f.add_argument("--no-compile", action="store_true", help="train without torch.compile")
    v = sub.add_parser("compare")
    v.add_argument("cpu", type=Path)
    v.add_argument("gpu", type=Path)
    v.add_argument("--tail", type=int, default=3)
    v.add_argument("--out", type=Path, default=RESULTS / "train_gpu_curves.json")
    e = sub.add_parser("evaluate")
    e.add_argument("datasets", type=Path)
    e.add_argument("truth", type=Path)
    e.add_argument("--weights-dir", type=Path, required=True)
    e.add_argument("--full", type=Path, required=True, help="the full run's JSON (its history goes in the result)")
    e.add_argument("--n-boot", type=int, default=1000)
    e.add_argument("--out", type=Path, default=RESULTS / "train_gpu_full_cuda.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "bundle":
        make_bundle(args.datasets, args.out)
    elif args.cmd == "curves":
        run_curves(args.bundle, args.device, [int(s) for s in args.seeds.split(",")], args.kinds.split(","), args.out)
    elif args.cmd == "full":
        overrides = {**({"epochs": args.epochs} if args.epochs else {}), **({"compile": False} if args.no_compile else {})}
        run_full(args.bundle, args.device, args.kinds.split(","), args.weights_dir, args.out, overrides)
    elif args.cmd == "compare":
        doc = compare(json.loads(args.cpu.read_text()), json.loads(args.gpu.read_text()), args.tail)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        for kind, m in doc["models"].items():
            print(f"{kind}: all losses within noise: {m['all_within_noise']}")
            for key, r in m["losses"].items():
                print(f"  {key:16s} cpu {r['cpu_tail'][0]:.4g} gpu {r['gpu_tail'][0]:.4g} diff {r['difference']:+.4g} "
                      f"(2 SE {r['two_se']:.3g}) epochs within 2 SE {r['epochs_within_2se']:.0%}")
        print(f"wrote {args.out}")
    else:
        full = json.loads(args.full.read_text())
        metrics = evaluate_full(args.datasets, args.truth, args.weights_dir, args.n_boot)
        doc = {**full, "evaluation": metrics}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps({k: v for k, v in metrics.items() if "probe_r2.primary" in k or "phenotype_rho" in k},
                         indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
