"""Training throughput of the rgops loops against a plain PyTorch loop of the same model.

For the CAE and the GAN at their default size (params.yaml ``train.<kind>.model``, the ``full``
preset's models) and the real panel width (2,000 genes), for each patch size and batch size, it
times the rgops training step itself (``rgops.training.cae._train_batch`` and
``rgops.training.gan.train_step``: data staged on the device, on-device augmentation, the gene-PC
and scale side inputs, the mode-seeking term and the EMA update; on CUDA bf16 autocast,
channels_last, fused AdamW, and ``torch.compile`` with ``--compile``) and a plain loop (fp32, a
DataLoader from host memory, the same model and the bare losses), in the same process, and prints
images/s, the ratio, and on CUDA the model FLOPs utilisation against the bf16 dense peak.

    python bench/train_throughput.py [--device auto|cpu|cuda] [--steps N] [--compile]
                                     [--sizes 64,128] [--batches 128,512] [--out FILE]

Writes bench/results/train_throughput_<device>[_compile].json unless ``--out`` says otherwise. On
CPU it uses small batches and few steps (the CPU figure says nothing about the GPU target: CAE >=
130k, GAN >= 60k images/s at S=64, batch 512 on an H100/H200).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgops.config import load_params  # noqa: E402
from rgops.data.datasets import Datasets, GenePanel  # noqa: E402
from rgops.models.cae import ConditionalAE  # noqa: E402
from rgops.models.gan import Discriminator, Generator  # noqa: E402
from rgops.training.cae import _cae_splits, _train_batch  # noqa: E402
from rgops.training.common import LoopState, make_adamw, maybe_compile, prepare_module, resolve_device, setup_device  # noqa: E402
from rgops.training.gan import build_state, stage_gan_data, train_step  # noqa: E402
from rgops.training.presets import load_preset, model_config  # noqa: E402

BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
N_GENES = 2000  # the real panel's width


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(size: int, rows: int) -> Datasets:
    """``rows`` random patches (4 slices per patient), all in the train split, a 2,000-gene panel."""
    gen = np.random.default_rng(0)
    patches = (gen.random((rows, 1, size, size), dtype=np.float32) * 2 - 1)
    genes = gen.standard_normal((rows // 4, N_GENES)).astype(np.float32).repeat(4, axis=0)
    manifest = pd.DataFrame({"pseudo_id": [f"P{i // 4:05d}" for i in range(rows)], "split": "train",
                             "mm_per_px": gen.uniform(0.5, 1.5, rows).astype(np.float32)})
    panel = GenePanel(tuple(f"G{i}" for i in range(N_GENES)), np.zeros(N_GENES), np.ones(N_GENES))
    return Datasets(patches, np.zeros(patches.shape, np.uint8), genes, manifest, panel)


def full_preset(kind: str, ds: Datasets, **overrides: object):  # noqa: ANN201
    """``(model config for ds, training config)`` of the ``full`` preset with ``overrides``. params.yaml is
    read without checking its other sections, whose readers need pydicom and MLflow (absent on a GPU
    machine); the train section is still checked by ``load_preset``."""
    fields, tcfg = load_preset(load_params(ROOT / "params.yaml", check=False), kind, "full")  # type: ignore[arg-type]
    return model_config(kind, ds, fields), dataclasses.replace(tcfg, **overrides)


def rgops_steps(kind: str, size: int, device: torch.device, batch: int, steps: int, compile_: bool
                ) -> tuple[float, float, object]:
    """images/s of the rgops training step, FLOPs of one step (eager), and the model config."""
    ds = synthetic(size, batch * 4)
    cfg, tcfg = full_preset(kind, ds, batch_size=batch, compile=compile_)
    setup_device(device, 0)
    if kind == "cae":
        model = prepare_module(ConditionalAE(cfg), device)
        opt = make_adamw(model.parameters(), device, tcfg.lr, weight_decay=tcfg.weight_decay)
        train, _ = _cae_splits(ds, cfg, device)
        loop = LoopState.start(3, device)
        run = maybe_compile(model, compile_, device)

        def step(net: torch.nn.Module) -> None:
            idx = torch.randint(0, len(train), (batch,))
            _train_batch(loop, train, idx, net, opt, tcfg, device, 0)
        eager, fast = model, run
    else:
        st = build_state(cfg, tcfg, ds, device)
        train, _ = stage_gan_data(ds, cfg, device)
        nets_fast = (maybe_compile(st.gen, compile_, device), maybe_compile(st.disc, compile_, device))
        nets_fast = (*nets_fast, nets_fast[1])

        def step(nets: tuple) -> None:
            idx = torch.randint(0, len(train), (batch,))
            train_step(st, nets, train, idx, cfg, tcfg, 0, device)
        eager, fast = (st.gen, st.disc, st.disc), nets_fast

    with FlopCounterMode(display=False) as counter:
        step(eager)
    flops = counter.get_total_flops()
    for _ in range(3):  # warm-up (cudnn autotuning, compilation)
        step(fast)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(fast)
    sync(device)
    return batch * steps / (time.perf_counter() - t0), flops, cfg


def plain_steps(kind: str, cfg, device: torch.device, batch: int, steps: int) -> float:
    """images/s of a textbook fp32 loop: DataLoader from host memory, no autocast, no fusion, the bare
    losses (reconstruction + gene head; hinge + mismatch)."""
    torch.manual_seed(0)
    if device.type == "cuda":  # PyTorch's defaults, which setup_device changed for the rgops step
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
    n = batch * 4
    loader = DataLoader(TensorDataset(torch.rand(n, 1, cfg.image_size, cfg.image_size) * 2 - 1, torch.randn(n, N_GENES),
                                      torch.rand(n) - 0.5), batch_size=batch, shuffle=True, drop_last=True)
    if kind == "cae":
        model = ConditionalAE(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def step(x, g, s):
            recon, _, gp = model(x, g, s, return_latent=True)
            loss = F.mse_loss(recon, x) + (F.mse_loss(gp, g[:, :gp.shape[1]]) if gp is not None else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        gen, disc = Generator(cfg).to(device), Discriminator(cfg).to(device)
        og = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.0, 0.9))
        od = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.0, 0.9))

        def step(x, g, s):
            z = torch.randn(len(x), cfg.z_dim, device=device)
            fake = gen(z, g)
            d = F.relu(1 - disc(x, g)).mean() + F.relu(1 + disc(fake.detach(), g)).mean() + \
                0.5 * F.relu(1 + disc(x, g.roll(1, 0))).mean()
            od.zero_grad()
            d.backward()
            od.step()
            gl = -disc(fake, g).mean()
            og.zero_grad()
            gl.backward()
            og.step()

    done, t0 = 0, time.perf_counter()
    while done < steps + 2:
        for x, g, s in loader:
            if done == 2:
                sync(device)
                t0 = time.perf_counter()
            step(x.to(device), g.to(device), s.to(device))
            done += 1
            if done >= steps + 2:
                break
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the rgops models (CUDA only)")
    ap.add_argument("--sizes", type=_ints, default=None, help="patch sizes (default 64,128 on CUDA, 64 on CPU)")
    ap.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 128,512 on CUDA, 16,32 on CPU)")
    ap.add_argument("--kinds", default="cae,gan")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain fp32 baseline")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (50 if gpu else 3)
    sizes = args.sizes or ((64, 128) if gpu else (64,))
    batches = args.batches or ((128, 512) if gpu else (16, 32))
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None) if gpu else None
    compiled = args.compile and gpu
    out = args.out or ROOT / "bench" / "results" / f"train_throughput_{'cuda' if gpu else 'cpu'}{'_compile' if compiled else ''}.json"
    rows = []
    for kind in args.kinds.split(","):
        for size in sizes:
            for batch in batches:
                t = time.perf_counter()
                ips, flops, cfg = rgops_steps(kind, size, device, batch, steps, args.compile)
                setup_s = time.perf_counter() - t - batch * steps / ips
                base = None if args.no_plain else plain_steps(kind, cfg, device, batch, steps)
                mfu = flops * ips / batch / peak if peak else None
                rows.append({"kind": kind, "size": size, "batch": batch, "rgops_images_per_s": round(ips, 1),
                             "plain_fp32_images_per_s": round(base, 1) if base else None,
                             "ratio": round(ips / base, 3) if base else None, "flops_per_step": flops,
                             "mfu_bf16": round(mfu, 4) if mfu is not None else None,
                             "setup_and_warmup_s": round(setup_s, 1)})
                print(f"{kind} S={size} B={batch}: rgops {ips:,.0f} img/s" +
                      (f", plain fp32 {base:,.0f} img/s, ratio {ips / base:.2f}" if base else "") +
                      (f", MFU {mfu:.1%}" if mfu is not None else "") + f" (setup {setup_s:.0f} s)", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({
                    "device": device.type, "device_name": name, "torch": torch.__version__, "steps": steps,
                    "compile": compiled, "bf16_peak_flops": peak, "n_genes": N_GENES,
                    "note": ("CPU run on a shared 2-core machine: a smoke figure, not the GPU target" if not gpu else
                             "targets at S=64, batch 512 on an H100/H200: CAE >= 130k, GAN >= 60k images/s"),
                    "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
