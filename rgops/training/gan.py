"""Training the conditional GAN: hinge loss, mismatched-pair negatives, spectral norm, generator EMA."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rgops.config import to_dict
from rgops.data.datasets import Datasets
from rgops.errors import ConfigError, TrainingError
from rgops.models.gan import Discriminator, GANConfig, Generator
from rgops.training.cae import check_fits, flat_params, system_tags
from rgops.training.common import (
    GANTrainConfig,
    ProgressFn,
    SplitData,
    Tracker,
    TrainResult,
    all_reduce_mean,
    augment,
    autocast,
    dist_rank_world,
    patient_batches,
    image_grid,
    load_checkpoint,
    log_loss_curves,
    make_adamw,
    maybe_compile,
    prepare_module,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    setup_device,
    stage_split,
    step_generator,
    unwrap,
    wrap_ddp,
)

log = logging.getLogger(__name__)

LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake", "d_mismatch")
FIXED_NOISE_SEED = 1234


def d_step(gen: nn.Module, disc: nn.Module, opt_d: torch.optim.Optimizer, x: torch.Tensor, g: torch.Tensor,
           z: torch.Tensor, mismatch_weight: float, device: torch.device) -> torch.Tensor:
    """One discriminator step; returns detached ``[d_loss, d_real, d_fake, d_mismatch]`` (mean scores).

    Negatives are generated images for the batch's profiles and, when the batch has two or more
    rows, real images paired with another row's profile (the batch rolled by one).
    """
    with autocast(device):
        with torch.no_grad():
            fake = gen(z, g)
        mismatched = g.roll(1, dims=0) if len(g) > 1 else None
        d_real = disc(x, g).float()
        d_fake = disc(fake, g).float()
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if mismatched is not None:
            d_mis = disc(x, mismatched).float()
            loss = loss + mismatch_weight * F.relu(1 + d_mis).mean()
        else:
            d_mis = torch.zeros_like(d_real)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return torch.stack([loss, d_real.mean(), d_fake.mean(), d_mis.mean()]).detach()


def g_step(gen: nn.Module, disc_plain: nn.Module, opt_g: torch.optim.Optimizer, g: torch.Tensor, z: torch.Tensor,
           gen_params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """One generator step (hinge: maximise the discriminator's score of fakes); returns the loss.

    ``disc_plain`` is the discriminator *without* its DDP wrapper and gradients are computed for the
    generator's parameters only, so this step neither computes nor all-reduces discriminator grads.
    """
    with autocast(device):
        loss = -disc_plain(gen(z, g), g).float().mean()
    opt_g.zero_grad(set_to_none=True)
    loss.backward(inputs=gen_params)
    opt_g.step()
    return loss.detach()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model``, parameters and buffers."""
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


@torch.no_grad()
def evaluate_gan(gen: nn.Module, disc: nn.Module, data: SplitData, device: torch.device, batch_size: int,
                 z_dim: int, seed: int) -> dict[str, float]:
    """Mean discriminator scores on a split: real pairs, EMA fakes, mismatched pairs (no grads)."""
    sums, n = torch.zeros(3, device=device), 0
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = disc.training
    disc.eval()  # eval mode: spectral norm does not advance its power iteration here
    for idx in torch.arange(len(data)).split(batch_size):
        x, g = data.batch(idx, device)
        z = torch.randn(len(x), z_dim, generator=rng, device=device)
        with autocast(device):
            scores = [disc(x, g), disc(gen(z, g), g), disc(x, g.roll(1, dims=0))]
        sums += torch.stack([s.float().sum() for s in scores])
        n += len(x)
    disc.train(was_training)
    real, fake, mis = (sums / max(n, 1)).tolist()
    return {"d_real": real, "d_fake": fake, "d_mismatch": mis}


def train_gan(datasets: Datasets, config: GANConfig, train_cfg: GANTrainConfig, tracker: Tracker | None = None,
              device: str | torch.device | None = None, checkpoint_dir: str | Path | None = None,
              resume: bool = False, progress: ProgressFn | None = None) -> TrainResult:
    """Train a gene-conditioned :class:`Generator` against a projection :class:`Discriminator`.

    Same arguments and errors as :func:`rgops.training.cae.train_cae`. The result's ``module`` is
    the EMA generator; its ``discriminator`` the trained discriminator. Each epoch the tracker gets
    the losses, mean scores on the val split and a grid of EMA samples from a fixed noise batch and
    fixed val profiles (real patches in the first row, samples in the second).
    """
    check_fits(config.image_size, config.n_genes, datasets, "GAN")
    dev = resolve_device(device)
    rank, world = dist_rank_world()
    setup_device(dev, train_cfg.seed)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt_dir is None:
        raise ConfigError("resume asked for without a checkpoint directory; pass --checkpoint-dir DIR")

    gen = prepare_module(Generator(config), dev)
    disc = prepare_module(Discriminator(config), dev)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    opt_g = make_adamw(gen.parameters(), dev, train_cfg.lr_g, betas=train_cfg.betas)
    opt_d = make_adamw(disc.parameters(), dev, train_cfg.lr_d, betas=train_cfg.betas)
    model_cfg_d, train_cfg_d, digest = to_dict(config), to_dict(train_cfg), datasets.digest()
    history: list[dict[str, float]] = []
    start_epoch, start_batch, step = 0, 0, 0
    sums, seen = torch.zeros(len(LOSS_KEYS), device=dev), 0
    if resume:
        state = load_checkpoint(ckpt_dir, "gan", model_cfg_d, train_cfg_d, digest)  # type: ignore[arg-type]
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        sums, seen, history = state["sums"].to(dev), state["seen"], list(state["history"])
        set_rng_state(state["rng"])
        log.info("resumed GAN training at epoch %d, step %d", start_epoch, step)

    pids = datasets.patient_ids
    train = stage_split(datasets.patches, datasets.genes, datasets.indices("train"), dev, patient_ids=pids)
    val = stage_split(datasets.patches, datasets.genes, datasets.indices("val"), dev)
    if len(train) == 0:
        raise TrainingError("the datasets have no train rows; re-run `rgops ingest` with a larger cohort")
    shown = val if len(val) else train
    grid_x, grid_g = shown.batch(torch.arange(min(train_cfg.grid_size, len(shown))), dev)
    fixed_z = torch.randn(len(grid_x), config.z_dim, generator=torch.Generator().manual_seed(FIXED_NOISE_SEED)).to(dev)
    run_gen = maybe_compile(wrap_ddp(gen, dev), train_cfg.compile, dev)
    run_disc = maybe_compile(wrap_ddp(disc, dev), train_cfg.compile, dev)
    disc_plain = maybe_compile(disc, train_cfg.compile, dev) if world > 1 else run_disc
    gen_params = list(gen.parameters())
    log_to = tracker if rank == 0 else None
    if log_to is not None:
        log_to.log_params({**flat_params("model", model_cfg_d), **flat_params("train", train_cfg_d),
                           "kind": "gan", "n_train": len(train), "n_val": len(val)})
        log_to.set_tags(system_tags(dev, world))

    def batches_of(epoch: int) -> list[torch.Tensor]:  # patients, then one random slice of each
        return patient_batches(train.groups, len(train), train_cfg.batch_size, epoch, train_cfg.seed, rank, world)

    n_batches = len(batches_of(0))
    total = n_batches * train_cfg.epochs
    last_ckpt: Path | None = None

    def checkpoint(epoch: int, batch: int) -> Path | None:
        if ckpt_dir is None or rank != 0:
            return None
        return save_checkpoint(ckpt_dir, {
            "kind": "gan", "model_config": model_cfg_d, "train_config": train_cfg_d, "dataset_digest": digest,
            "generator": unwrap(gen).state_dict(), "discriminator": unwrap(disc).state_dict(),
            "ema": ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "epoch": epoch, "batch": batch, "step": step, "sums": sums.cpu(), "seen": seen,
            "history": history, "rng": rng_state(),
        })

    gen.train()
    disc.train()
    for epoch in range(start_epoch, train_cfg.epochs):
        batches = batches_of(epoch)
        t0, first = time.perf_counter(), (start_batch if epoch == start_epoch else 0)
        for b in range(first, len(batches)):
            x, g = train.batch(batches[b], dev)
            rng = step_generator(train_cfg.seed, rank, step, dev)
            x = augment(x, train_cfg.augment, rng)
            z_d = torch.randn(len(x), config.z_dim, generator=rng, device=dev)
            z_g = torch.randn(len(x), config.z_dim, generator=rng, device=dev)
            d_loss, d_real, d_fake, d_mis = d_step(run_gen, run_disc, opt_d, x, g, z_d, train_cfg.mismatch_weight, dev)
            g_loss = g_step(run_gen, disc_plain, opt_g, g, z_g, gen_params, dev)
            update_ema(ema, gen, train_cfg.ema_decay)
            sums += torch.stack([d_loss, g_loss, d_real, d_fake, d_mis]) * len(x)
            seen += len(x)
            step += 1
            if progress is not None:
                progress(step, total)
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0 and b + 1 < len(batches):
                last_ckpt = checkpoint(epoch, b + 1) or last_ckpt
        seconds = time.perf_counter() - t0
        means = all_reduce_mean(sums / max(seen, 1)).tolist()
        if not all(torch.isfinite(torch.tensor(means))):
            raise TrainingError(f"GAN losses became non-finite in epoch {epoch + 1} ({means}); lower lr_g/lr_d")
        record = {"epoch": float(epoch + 1), **{f"train_{k}": v for k, v in zip(LOSS_KEYS, means)}}
        if len(val):
            scores = evaluate_gan(ema, disc, val, dev, train_cfg.batch_size, config.z_dim, train_cfg.seed)
            record.update({f"val_{k}": v for k, v in scores.items()})
        record.update({"epoch_seconds": seconds, "images_per_second": seen * world / max(seconds, 1e-9)})
        history.append(record)
        sums, seen = torch.zeros(len(LOSS_KEYS), device=dev), 0
        last_ckpt = checkpoint(epoch + 1, 0) or last_ckpt
        if log_to is not None:
            log_to.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
            with torch.no_grad(), autocast(dev):
                samples = ema(fixed_z, grid_g)
            grid = image_grid(torch.cat([grid_x.float(), samples.float()]), nrow=len(grid_x))
            log_to.log_image(grid, f"samples/epoch_{epoch + 1:03d}.png")
        log.info("GAN epoch %d/%d: %s", epoch + 1, train_cfg.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))

    if log_to is not None and history:
        log_loss_curves(log_to, history, "GAN")
    final = ema.to("cpu", memory_format=torch.contiguous_format).eval()
    d_final = unwrap(disc).to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult("gan", final, config, train_cfg, history, dict(history[-1]) if history else {},
                       step, d_final, last_ckpt)
