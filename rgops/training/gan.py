"""Training the conditional GAN: hinge loss, mismatched-pair negatives, spectral norm, generator EMA,
an auxiliary gene-PC head on the discriminator (AC-GAN), a mode-seeking diversity term (MSGAN) and
the generator's scale head fitted by ridge before the first step.

:func:`train_gan` reads as its steps: :func:`build_state` (networks, scale head, optimisers),
:func:`stage_gan_data`, optionally :func:`restore_state`, then per batch :func:`train_step`
(:func:`d_step`, :func:`g_step`, :func:`update_ema`) and per epoch :func:`end_epoch`,
a checkpoint (:func:`checkpoint_payload`) and :func:`log_epoch`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rgops.config import to_dict
from rgops.data.datasets import Datasets
from rgops.data.patch import log_scale
from rgops.errors import ConfigError, TrainingError
from rgops.models.gan import Discriminator, GANConfig, Generator
from rgops.training.cae import check_fits, flat_params, gene_targets, system_tags
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

LOSS_KEYS = ("d_loss", "d_real", "d_fake", "d_mismatch", "d_aux", "g_loss", "g_aux", "g_diversity")
FIXED_NOISE_SEED = 1234


def d_step(gen: nn.Module, disc: nn.Module, opt_d: torch.optim.Optimizer, x: torch.Tensor, g: torch.Tensor,
           z: torch.Tensor, mismatch_weight: float, device: torch.device, t: torch.Tensor | None = None,
           aux_weight: float = 0.0) -> torch.Tensor:
    """One discriminator step; returns detached ``[d_loss, d_real, d_fake, d_mismatch, d_aux]``.

    Negatives are generated images for the batch's profiles and, when the batch has two or more
    rows, real images paired with another row's profile (the batch rolled by one). With gene-PC
    targets ``t (B, T)`` and an auxiliary head, the head learns to predict them from real images.
    """
    with autocast(device):
        with torch.no_grad():
            fake = gen(z, g)
        mismatched = g.roll(1, dims=0) if len(g) > 1 else None
        d_real, aux = disc(x, g, with_aux=True)
        d_real = d_real.float()
        d_fake = disc(fake, g).float()
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if mismatched is not None:
            d_mis = disc(x, mismatched).float()
            loss = loss + mismatch_weight * F.relu(1 + d_mis).mean()
        else:
            d_mis = torch.zeros_like(d_real)
        d_aux = F.mse_loss(aux.float(), t) if aux is not None and t is not None else torch.zeros((), device=x.device)
        loss = loss + aux_weight * d_aux
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return torch.stack([loss, d_real.mean(), d_fake.mean(), d_mis.mean(), d_aux]).detach()


def g_step(gen: nn.Module, disc_plain: nn.Module, opt_g: torch.optim.Optimizer, g: torch.Tensor, z: torch.Tensor,
           gen_params: list[nn.Parameter], device: torch.device, t: torch.Tensor | None = None,
           aux_weight: float = 0.0, diversity_weight: float = 0.0) -> torch.Tensor:
    """One generator step; returns detached ``[g_loss, g_aux, g_diversity]``.

    Hinge: maximise the discriminator's score of fakes; plus, with gene-PC targets ``t (B, T)``,
    the auxiliary head's error on the fakes (the image must show the requested genes). With
    ``diversity_weight`` the first half of the batch's profiles is drawn twice with different
    noise and the mode-seeking term ``mean|z1 - z2| / mean|x1 - x2|`` (MSGAN) is added.

    ``disc_plain`` is the discriminator *without* its DDP wrapper and gradients are computed for the
    generator's parameters only, so this step neither computes nor all-reduces discriminator grads.
    """
    half = len(g) // 2 if diversity_weight > 0 and len(g) >= 2 else 0
    if half:  # rows i and i + half share a profile
        g = torch.cat([g[:half], g[:half]])
        t = torch.cat([t[:half], t[:half]]) if t is not None else None
        z = z[: 2 * half]
    with autocast(device):
        fake = gen(z, g)
        score, aux = disc_plain(fake, g, with_aux=True)
        loss = -score.float().mean()
        g_aux = F.mse_loss(aux.float(), t) if aux is not None and t is not None else torch.zeros((), device=g.device)
        if half:
            dx = (fake[:half].float() - fake[half:].float()).abs().mean()
            g_div = (z[:half] - z[half:]).abs().mean() / (dx + 1e-5)
        else:
            g_div = torch.zeros((), device=g.device)
        total = loss + aux_weight * g_aux + diversity_weight * g_div
    opt_g.zero_grad(set_to_none=True)
    total.backward(inputs=gen_params)
    opt_g.step()
    return torch.stack([loss, g_aux, g_div]).detach()


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


# ---- the named steps of train_gan ---------------------------------------------------------------


@dataclass
class GANState:
    """The networks, optimisers and counters of one GAN training (what a checkpoint holds)."""

    gen: nn.Module
    disc: nn.Module
    ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    epoch: int = 0
    batch: int = 0
    step: int = 0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(len(LOSS_KEYS)))
    seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_state(config: GANConfig, train_cfg: GANTrainConfig, datasets: Datasets, dev: torch.device) -> GANState:
    """Fresh generator (its scale head fitted, :func:`fit_scale_head`), discriminator, EMA copy and
    their Adam optimisers on ``dev``, in training mode."""
    gen = prepare_module(Generator(config), dev)
    fit_scale_head(gen, datasets, train_cfg.seed)
    disc = prepare_module(Discriminator(config), dev)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    gen.train()
    disc.train()
    return GANState(gen, disc, ema, make_adamw(gen.parameters(), dev, train_cfg.lr_g, betas=train_cfg.betas),
                    make_adamw(disc.parameters(), dev, train_cfg.lr_d, betas=train_cfg.betas),
                    sums=torch.zeros(len(LOSS_KEYS), device=dev))


def checkpoint_payload(st: GANState, meta: dict) -> dict:
    return {**meta, "generator": unwrap(st.gen).state_dict(), "discriminator": unwrap(st.disc).state_dict(),
            "ema": st.ema.state_dict(), "opt_g": st.opt_g.state_dict(), "opt_d": st.opt_d.state_dict(),
            "epoch": st.epoch, "batch": st.batch, "step": st.step, "sums": st.sums.cpu(), "seen": st.seen,
            "history": st.history, "rng": rng_state()}


def restore_state(st: GANState, ckpt_dir: Path | None, meta: dict, dev: torch.device) -> None:
    """Load ``ckpt_dir/last.pt`` into ``st`` (the configs and data digest must match)."""
    if ckpt_dir is None:
        raise ConfigError("resume asked for without a checkpoint directory; pass --checkpoint-dir DIR")
    state = load_checkpoint(ckpt_dir, "gan", meta["model_config"], meta["train_config"], meta["dataset_digest"])
    for name in ("gen", "disc", "ema", "opt_g", "opt_d"):
        key = {"gen": "generator", "disc": "discriminator"}.get(name, name)
        getattr(st, name).load_state_dict(state[key])
    st.epoch, st.batch, st.step = state["epoch"], state["batch"], state["step"]
    st.sums, st.seen, st.history = state["sums"].to(dev), state["seen"], list(state["history"])
    set_rng_state(state["rng"])
    log.info("resumed GAN training at epoch %d, step %d", st.epoch, st.step)


def fit_scale_head(gen: Generator, datasets: Datasets, seed: int) -> float | None:
    """Fit the generator's scale head: ridge of each training patient's mean log2 mm/px on its genes,
    the penalty chosen by inner CV over training patients; returns the penalty (None: no head).

    The head is frozen afterwards: a closed-form fit on about a hundred patients generalises better
    than an MLP trained alongside the GAN (held-out Spearman of the predicted scale with the
    proliferation score 0.69 on the demo cohort; the jointly trained MLP memorised its patients).
    """
    if gen.scale is None:
        return None
    from rgops.evaluation.association import fit_ridge  # numpy only

    train_rows, pids = datasets.indices("train"), datasets.patient_ids
    frame = pd.DataFrame(datasets.genes[train_rows].astype(np.float64))
    frame["_s"] = log_scale(datasets.mm_per_px)[train_rows]
    per = frame.groupby(pids[train_rows], sort=True).mean()
    x, y = per.drop(columns="_s").to_numpy(), per["_s"].to_numpy()[:, None]
    with torch.no_grad():
        gen.scale.weight.zero_()
        gen.scale.bias.fill_(float(y.mean()) if len(y) else 0.0)
        if len(y) < 6:
            log.warning("only %d training patients: the scale head predicts their mean scale", len(y))
            return None
        fit = fit_ridge(x, y, inner_splits=3, seed=seed)
        coef, intercept = fit.raw_coefficients()
        gen.scale.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        gen.scale.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    return float(fit.alphas[0])


def stage_gan_data(datasets: Datasets, config: GANConfig, dev: torch.device) -> tuple[SplitData, SplitData]:
    """Train and val splits with each row's log2 mm/px and (with the aux head) gene-PC targets."""
    train_rows, pids = datasets.indices("train"), datasets.patient_ids
    if len(train_rows) == 0:
        raise TrainingError("the datasets have no train rows; re-run `rgops ingest` with a larger cohort")
    scale = log_scale(datasets.mm_per_px)
    targets = gene_targets(datasets.genes, pids, train_rows, config.aux_pcs) if config.aux_pcs else None
    if targets is not None and targets.shape[1] < config.aux_pcs:  # fewer training patients than PCs
        log.warning("only %d gene PCs exist for aux_pcs=%d; the rest are zero targets",
                    targets.shape[1], config.aux_pcs)
        targets = np.pad(targets, ((0, 0), (0, config.aux_pcs - targets.shape[1])))
    train = stage_split(datasets.patches, datasets.genes, train_rows, dev, scale, targets, pids)
    val = stage_split(datasets.patches, datasets.genes, datasets.indices("val"), dev, scale, targets)
    return train, val


def fixed_grid(shown: SplitData, config: GANConfig, train_cfg: GANTrainConfig, dev: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real patches ``(n, 1, S, S)``, their profiles ``(n, G)`` and a fixed noise batch ``(n, z_dim)``
    for the sample grid logged each epoch (the same every epoch, so grids compare across epochs)."""
    grid_x, grid_g = shown.batch(torch.arange(min(train_cfg.grid_size, len(shown))), dev)
    fixed_z = torch.randn(len(grid_x), config.z_dim, generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))
    return grid_x, grid_g, fixed_z.to(dev)


def train_step(st: GANState, nets: tuple[nn.Module, nn.Module, nn.Module], train: SplitData, idx: torch.Tensor,
               config: GANConfig, train_cfg: GANTrainConfig, rank: int, dev: torch.device) -> None:
    """One batch: augment the real patches, a discriminator step, a generator step, the EMA update."""
    run_gen, run_disc, disc_plain = nets
    x, g = train.batch(idx, dev)
    _, t = train.side(idx, dev)
    rng = step_generator(train_cfg.seed, rank, st.step, dev)
    x = augment(x, train_cfg.augment, rng)
    z_d = torch.randn(len(x), config.z_dim, generator=rng, device=dev)
    z_g = torch.randn(len(x), config.z_dim, generator=rng, device=dev)
    d = d_step(run_gen, run_disc, st.opt_d, x, g, z_d, train_cfg.mismatch_weight, dev, t, train_cfg.aux_weight)
    g_out = g_step(run_gen, disc_plain, st.opt_g, g, z_g, [p for p in st.gen.parameters() if p.requires_grad], dev,
                   t, train_cfg.aux_weight, train_cfg.diversity_weight)
    update_ema(st.ema, st.gen, train_cfg.ema_decay)
    st.sums += torch.cat([d, g_out]) * len(x)
    st.seen += len(x)
    st.step += 1


def end_epoch(st: GANState, val: SplitData, seconds: float, world: int, config: GANConfig,
              train_cfg: GANTrainConfig, dev: torch.device) -> dict[str, float]:
    """The epoch's record: mean train losses, val scores of the EMA generator, throughput."""
    means = all_reduce_mean(st.sums / max(st.seen, 1)).tolist()
    if not all(torch.isfinite(torch.tensor(means))):
        raise TrainingError(f"GAN losses became non-finite in epoch {st.epoch + 1} ({means}); lower lr_g/lr_d")
    record = {"epoch": float(st.epoch + 1), **{f"train_{k}": v for k, v in zip(LOSS_KEYS, means)}}
    for key in [k for k, on in (("d_aux", config.aux_pcs), ("g_aux", config.aux_pcs),
                                ("g_diversity", train_cfg.diversity_weight)) if not on]:
        record.pop(f"train_{key}")
    if len(val):
        scores = evaluate_gan(st.ema, st.disc, val, dev, train_cfg.batch_size, config.z_dim, train_cfg.seed)
        record.update({f"val_{k}": v for k, v in scores.items()})
    record.update({"epoch_seconds": seconds, "images_per_second": st.seen * world / max(seconds, 1e-9)})
    st.history.append(record)
    st.sums, st.seen = torch.zeros(len(LOSS_KEYS), device=dev), 0
    st.epoch, st.batch = st.epoch + 1, 0
    return record


def log_epoch(tracker: Tracker | None, st: GANState, record: dict[str, float], grid: tuple[torch.Tensor, ...],
              train_cfg: GANTrainConfig, dev: torch.device) -> None:
    """Metrics to the tracker and the grid of real patches (first row) over EMA samples (second)."""
    if tracker is not None:
        grid_x, grid_g, fixed_z = grid
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=st.epoch)
        with torch.no_grad(), autocast(dev):
            samples = st.ema(fixed_z, grid_g)
        tracker.log_image(image_grid(torch.cat([grid_x.float(), samples.float()]), nrow=len(grid_x)),
                          f"samples/epoch_{st.epoch:03d}.png")
    log.info("GAN epoch %d/%d: %s", st.epoch, train_cfg.epochs,
             ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))


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
    dev, (rank, world) = resolve_device(device), dist_rank_world()
    setup_device(dev, train_cfg.seed)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = {"kind": "gan", "model_config": to_dict(config), "train_config": to_dict(train_cfg),
            "dataset_digest": datasets.digest()}
    st = build_state(config, train_cfg, datasets, dev)
    if resume:
        restore_state(st, ckpt_dir, meta, dev)
    train, val = stage_gan_data(datasets, config, dev)
    grid = fixed_grid(val if len(val) else train, config, train_cfg, dev)
    run_gen = maybe_compile(wrap_ddp(st.gen, dev), train_cfg.compile, dev)
    run_disc = maybe_compile(wrap_ddp(st.disc, dev), train_cfg.compile, dev)
    nets = (run_gen, run_disc, maybe_compile(st.disc, train_cfg.compile, dev) if world > 1 else run_disc)
    log_to = tracker if rank == 0 else None
    if log_to is not None:
        log_to.log_params({**flat_params("model", meta["model_config"]), **flat_params("train", meta["train_config"]),
                           "kind": "gan", "n_train": len(train), "n_val": len(val)})
        log_to.set_tags(system_tags(dev, world))

    def batches_of(epoch: int) -> list[torch.Tensor]:  # patients, then one random slice of each
        return patient_batches(train.groups, len(train), train_cfg.batch_size, epoch, train_cfg.seed, rank, world,
                               train_cfg.patient_repeats)

    total, last_ckpt = len(batches_of(0)) * train_cfg.epochs, None

    def checkpoint() -> Path | None:
        return save_checkpoint(ckpt_dir, checkpoint_payload(st, meta)) if ckpt_dir is not None and rank == 0 else None

    while st.epoch < train_cfg.epochs:
        batches, t0 = batches_of(st.epoch), time.perf_counter()
        for b in range(st.batch, len(batches)):
            train_step(st, nets, train, batches[b], config, train_cfg, rank, dev)
            st.batch = b + 1
            if progress is not None:
                progress(st.step, total)
            if train_cfg.checkpoint_every and st.step % train_cfg.checkpoint_every == 0 and b + 1 < len(batches):
                last_ckpt = checkpoint() or last_ckpt
        record = end_epoch(st, val, time.perf_counter() - t0, world, config, train_cfg, dev)
        last_ckpt = checkpoint() or last_ckpt
        log_epoch(log_to, st, record, grid, train_cfg, dev)
    if log_to is not None and st.history:
        log_loss_curves(log_to, st.history, "GAN")
    final = st.ema.to("cpu", memory_format=torch.contiguous_format).eval()
    d_final = unwrap(st.disc).to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult("gan", final, config, train_cfg, st.history, dict(st.history[-1]) if st.history else {},
                       st.step, d_final, last_ckpt)
