"""Training throughput of the rgops loops against a plain PyTorch loop of the same model.

For the CAE and the GAN at their default size (params.yaml ``train.<kind>.model``), for each patch
size and batch size, it times the rgops step (data resident on the device, on-device augmentation,
and on CUDA bf16 autocast, channels_last, fused AdamW, optional torch.compile) and a plain loop
(fp32, a DataLoader from host memory, the same model and optimiser), in the same process, and
prints images/s, the ratio, and on CUDA the model FLOPs utilisation against the bf16 dense peak.

    python bench/train_throughput.py [--device auto|cpu|cuda] [--steps N] [--compile]

Writes bench/results/train_throughput_<device>.json. On CPU it uses small batches and few steps
(the CPU figure says nothing about the GPU target: CAE >= 130k, GAN >= 60k images/s at S=64,
batch 512 on an H100).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgops.config import from_dict, load_params  # noqa: E402
from rgops.models.cae import CAEConfig, ConditionalAE  # noqa: E402
from rgops.models.gan import Discriminator, GANConfig, Generator  # noqa: E402
from rgops.training.cae import cae_step  # noqa: E402
from rgops.training.common import (AugmentConfig, augment, make_adamw, maybe_compile, prepare_module,  # noqa: E402
                                   resolve_device, setup_device, step_generator)
from rgops.training.gan import d_step, g_step, update_ema  # noqa: E402

BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
N_GENES = 500


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(kind: str, size: int, fields: dict):
    cls = CAEConfig if kind == "cae" else GANConfig
    return from_dict(cls, {**fields, "image_size": size, "n_genes": N_GENES})


def rgops_steps(kind: str, cfg, device: torch.device, batch: int, steps: int, compile_: bool) -> tuple[float, float]:
    """images/s of the rgops step and FLOPs of one step."""
    setup_device(device, 0)
    n = batch * 4
    x_all = (torch.rand(n, 1, cfg.image_size, cfg.image_size) * 2 - 1).to(device)
    g_all = torch.randn(n, N_GENES).to(device)
    aug = AugmentConfig()
    if kind == "cae":
        model = prepare_module(ConditionalAE(cfg), device)
        opt = make_adamw(model.parameters(), device, 1e-3)
        run = maybe_compile(model, compile_, device)

        def step(i: int) -> None:
            idx = torch.randint(0, n, (batch,), device=device)
            x = augment(x_all[idx], aug, step_generator(0, 0, i, device))
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            cae_step(run, opt, x, g_all[idx], 1.0, device)
    else:
        gen, disc = prepare_module(Generator(cfg), device), prepare_module(Discriminator(cfg), device)
        ema = prepare_module(Generator(cfg), device).requires_grad_(False)
        og, od = make_adamw(gen.parameters(), device, 2e-4, (0.0, 0.9)), make_adamw(disc.parameters(), device, 2e-4, (0.0, 0.9))
        rg, rd = maybe_compile(gen, compile_, device), maybe_compile(disc, compile_, device)
        params = list(gen.parameters())

        def step(i: int) -> None:
            idx = torch.randint(0, n, (batch,), device=device)
            rng = step_generator(0, 0, i, device)
            x = augment(x_all[idx], aug, rng)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            z1 = torch.randn(batch, cfg.z_dim, generator=rng, device=device)
            z2 = torch.randn(batch, cfg.z_dim, generator=rng, device=device)
            d_step(rg, rd, od, x, g_all[idx], z1, 0.5, device)
            g_step(rg, rd, og, g_all[idx], z2, params, device)
            update_ema(ema, gen, 0.999)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops()
    for i in range(1, 3):  # warm-up (cudnn autotuning, compilation)
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(3 + i)
    sync(device)
    return batch * steps / (time.perf_counter() - t0), flops


def plain_steps(kind: str, cfg, device: torch.device, batch: int, steps: int) -> float:
    """images/s of a textbook fp32 loop: DataLoader from host memory, no autocast, no fusion."""
    torch.manual_seed(0)
    n = batch * 4
    loader = DataLoader(TensorDataset(torch.rand(n, 1, cfg.image_size, cfg.image_size) * 2 - 1, torch.randn(n, N_GENES)),
                        batch_size=batch, shuffle=True, drop_last=True)
    if kind == "cae":
        model = ConditionalAE(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def step(x, g):
            recon, _, gp = model(x, g, return_latent=True)
            loss = F.mse_loss(recon, x) + (F.mse_loss(gp, g) if gp is not None else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        gen, disc = Generator(cfg).to(device), Discriminator(cfg).to(device)
        og = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.0, 0.9))
        od = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.0, 0.9))

        def step(x, g):
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

    done, t0 = 0, None
    while done < steps + 2:
        for x, g in loader:
            if done == 2:
                sync(device)
                t0 = time.perf_counter()
            step(x.to(device), g.to(device))
            done += 1
            if done >= steps + 2:
                break
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the rgops models (CUDA only)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (50 if gpu else 3)
    sizes, batches = ((64, 128), (128, 512)) if gpu else ((64,), (16, 32))
    params = load_params(ROOT / "params.yaml")
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None) if gpu else None
    rows = []
    for kind in ("cae", "gan"):
        fields = params["train"][kind]["model"]
        for size in sizes:
            cfg = build(kind, size, fields)
            for batch in batches:
                ips, flops = rgops_steps(kind, cfg, device, batch, steps, args.compile)
                base = plain_steps(kind, cfg, device, batch, steps)
                mfu = flops * ips / batch / peak if peak else None
                rows.append({"kind": kind, "size": size, "batch": batch, "rgops_images_per_s": round(ips, 1),
                             "plain_fp32_images_per_s": round(base, 1), "ratio": round(ips / base, 3),
                             "flops_per_step": flops, "mfu_bf16": round(mfu, 4) if mfu is not None else None})
                print(f"{kind} S={size} B={batch}: rgops {ips:,.0f} img/s, plain fp32 {base:,.0f} img/s, "
                      f"ratio {ips / base:.2f}" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    out = ROOT / "bench" / "results" / f"train_throughput_{'cuda' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device.type, "device_name": name, "torch": torch.__version__, "steps": steps,
        "compile": args.compile and gpu, "bf16_peak_flops": peak,
        "note": ("CPU run on a shared 2-core machine: a smoke figure, not the GPU target" if not gpu else
                 "targets at S=64, batch 512 on an H100: CAE >= 130k, GAN >= 60k images/s"),
        "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
