"""Where a training step's GPU time goes: a kernel table per model, and the step's speed with
channels_last or bf16 autocast switched off (CUDA only; the step of bench/train_throughput.py).

    python bench/train_profile.py [--size 64] [--batch 512] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import train_throughput as tt  # noqa: E402

import rgops.training.cae as cae_mod  # noqa: E402
import rgops.training.common as common  # noqa: E402
import rgops.training.gan as gan_mod  # noqa: E402


@contextlib.contextmanager
def variant(channels_last: bool, bf16: bool):
    """Switch channels_last and bf16 autocast in the rgops step (restored afterwards)."""
    saved = (common.prepare_module, tt.prepare_module, gan_mod.prepare_module, common.SplitData.batch,
             cae_mod.autocast, gan_mod.autocast)
    if not channels_last:
        plain = lambda m, d: m.to(d)  # noqa: E731
        common.prepare_module = tt.prepare_module = gan_mod.prepare_module = plain
        orig = saved[3]

        def batch(self, idx, device):  # noqa: ANN001, ANN202
            x, g = orig(self, idx, device)
            return x.contiguous(), g
        common.SplitData.batch = batch
    if not bf16:
        cae_mod.autocast = gan_mod.autocast = lambda d: contextlib.nullcontext()  # noqa: E731
    try:
        yield
    finally:
        (common.prepare_module, tt.prepare_module, gan_mod.prepare_module, common.SplitData.batch,
         cae_mod.autocast, gan_mod.autocast) = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "train_profile_cuda.json")
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    doc = {"device_name": torch.cuda.get_device_name(0), "torch": torch.__version__, "size": args.size,
           "batch": args.batch, "variants": {}, "kernels": {}}
    for kind in ("cae", "gan"):
        for cl, bf in ((True, True), (False, True), (True, False), (False, False)):
            with variant(cl, bf):
                ips, _, _ = tt.rgops_steps(kind, args.size, dev, args.batch, 20, False)
            key = f"{kind} channels_last={cl} bf16={bf}"
            doc["variants"][key] = round(ips, 1)
            print(f"{key}: {ips:,.0f} img/s", flush=True)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            tt.rgops_steps(kind, args.size, dev, args.batch, 5, False)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
        print(table, flush=True)
        doc["kernels"][kind] = table
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
