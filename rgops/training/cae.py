"""Training the conditional autoencoder: one step function, one loop, one evaluation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rgops.config import to_dict
from rgops.data.datasets import Datasets
from rgops.data.patch import log_scale
from rgops.errors import ConfigError
from rgops.models.cae import CAEConfig, ConditionalAE
from rgops.training.common import (
    CAETrainConfig,
    LoopState,
    ProgressFn,
    SplitData,
    Tracker,
    TrainResult,
    augment,
    autocast,
    close_epoch,
    dist_rank_world,
    image_grid,
    log_loss_curves,
    make_adamw,
    maybe_compile,
    patient_batches,
    prepare_module,
    resolve_device,
    resume_loop,
    save_loop,
    setup_device,
    stage_splits,
    step_generator,
    unwrap,
    wrap_ddp,
)

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "recon_mse", "aux_mse")


def cae_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, g: torch.Tensor,
             s: torch.Tensor | None, t: torch.Tensor | None, aux_weight: float, device: torch.device) -> torch.Tensor:
    """One optimisation step on a batch ``x (B, 1, S, S)``, ``g (B, G)``, scale ``s (B,)`` and
    gene targets ``t (B, T)`` of the auxiliary head.

    Returns the detached losses ``[loss, recon_mse, aux_mse]`` (aux 0 without the head) as one
    tensor, so the loop never waits for the GPU to report a number.
    """
    with autocast(device):
        recon, _, gene_pred = model(x, g, s, return_latent=True)
        recon_mse = F.mse_loss(recon.float(), x.float())
        views = unwrap(model).window_views  # type: ignore[operator]
        view_mse = F.mse_loss(views(recon.float()), views(x.float()))  # = recon_mse without extra views
        aux = F.mse_loss(gene_pred.float(), t) if gene_pred is not None else torch.zeros((), device=x.device)
        loss = view_mse + aux_weight * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return torch.stack([loss, recon_mse, aux]).detach()


@torch.no_grad()
def evaluate_cae(model: nn.Module, data: SplitData, device: torch.device, batch_size: int) -> dict[str, float]:
    """Mean reconstruction MSE (and aux gene MSE) over a split, without augmentation."""
    model.eval()
    sums, n = torch.zeros(2, device=device), 0
    for idx in torch.arange(len(data)).split(batch_size):
        x, g = data.batch(idx, device)
        s, t = data.side(idx, device)
        with autocast(device):
            recon, _, gene_pred = model(x, g, s, return_latent=True)
        sums[0] += F.mse_loss(recon.float(), x.float(), reduction="sum") / x[0].numel()
        if gene_pred is not None and t is not None:
            sums[1] += F.mse_loss(gene_pred.float(), t, reduction="sum") / t.shape[1]
        n += len(x)
    model.train()
    out = {"recon_mse": float(sums[0] / max(n, 1))}
    if unwrap(model).aux_head is not None:  # type: ignore[union-attr]
        out["aux_mse"] = float(sums[1] / max(n, 1))
    return out


def gene_targets(genes: np.ndarray, patient_ids: np.ndarray, train_rows: np.ndarray, k: int) -> np.ndarray:
    """Targets of the gene-aligned head for every row: the top ``k`` gene PCs of the training split.

    The basis is fitted on training *patients* (one row each, not one per slice), and each
    component is scaled to unit variance there, so every PC weighs the same in the loss. With
    ``k = 0`` the targets are the normalised genes themselves. ``(N, G) -> (N, k or G)`` float32.
    """
    if k == 0:
        return genes.astype(np.float32)
    first = ~pd.Series(patient_ids[train_rows]).duplicated().to_numpy()
    base = genes[train_rows][first].astype(np.float64)
    mean = base.mean(axis=0)
    _, sv, vt = np.linalg.svd(base - mean, full_matrices=False)
    k = min(k, len(sv))
    sd = sv[:k] / np.sqrt(max(len(base) - 1, 1))
    return ((genes - mean) @ vt[:k].T / np.where(sd > 1e-8, sd, 1.0)).astype(np.float32)


def check_fits(image_size: int, n_genes: int, datasets: Datasets, what: str) -> None:
    """A model config must match the data it trains on."""
    if image_size != datasets.size or n_genes != len(datasets.panel):
        raise ConfigError(
            f"{what} config is for {image_size}x{image_size} patches and {n_genes} genes but the datasets hold "
            f"{datasets.size}x{datasets.size} patches and {len(datasets.panel)} genes; build the config with "
            "rgops.training.presets.model_config(kind, datasets, ...)"
        )


def flat_params(prefix: str, mapping: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``, for tracker params."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update(flat_params(f"{prefix}.{k}", v))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def system_tags(device: torch.device, world: int) -> dict[str, str]:
    """Device, torch version and world size, as tracker tags."""
    tags = {"rgops.device": str(device), "rgops.torch_version": torch.__version__, "rgops.world_size": str(world)}
    if device.type == "cuda":
        tags["rgops.cuda_device_name"] = torch.cuda.get_device_name(device)
        tags["rgops.cuda_version"] = str(torch.version.cuda)
    else:
        tags["rgops.cpu_threads"] = str(torch.get_num_threads())
    return tags


def train_cae(datasets: Datasets, config: CAEConfig, train_cfg: CAETrainConfig, tracker: Tracker | None = None,
              device: str | torch.device | None = None, checkpoint_dir: str | Path | None = None,
              resume: bool = False, progress: ProgressFn | None = None) -> TrainResult:
    """Train a :class:`ConditionalAE` on the train split; report val metrics each epoch.

    Args:
        datasets: the loaded datasets; only ``train`` rows are trained on, ``val`` rows evaluated.
        config: the model config (its image size and gene count must match ``datasets``).
        train_cfg: the training preset.
        tracker: receives params, per-epoch metrics, reconstructions, loss curves (rank 0 under DDP).
        device: ``auto`` (default), ``cpu``, ``cuda`` or a torch.device.
        checkpoint_dir: where ``last.pt`` is written every ``checkpoint_every`` steps and each epoch.
        resume: continue from ``checkpoint_dir/last.pt``.
        progress: ``progress(steps_done, steps_total)`` after each step.

    Raises:
        ConfigError: the config does not fit the data, or the device does not exist.
        TrainingError: no training rows, a bad checkpoint, or a non-finite loss.
    """
    check_fits(config.image_size, config.n_genes, datasets, "CAE")
    dev = resolve_device(device)
    rank, world = dist_rank_world()
    setup_device(dev, train_cfg.seed)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    model = prepare_module(ConditionalAE(config), dev)
    opt = make_adamw(model.parameters(), dev, train_cfg.lr, weight_decay=train_cfg.weight_decay)
    header = {"kind": "cae", "model_config": to_dict(config), "train_config": to_dict(train_cfg),
              "dataset_digest": datasets.digest()}
    parts = {"model": model, "optimizer": opt}
    loop = (resume_loop(ckpt_dir, "cae", parts, header["model_config"], header["train_config"],
                        header["dataset_digest"], dev) if resume else LoopState.start(len(LOSS_KEYS), dev))
    train, val = _cae_splits(datasets, config, dev)
    run_model = maybe_compile(wrap_ddp(model, dev), train_cfg.compile, dev)
    log_to = tracker if rank == 0 else None
    _log_start(log_to, header, len(train), len(val), dev, world)
    grid = _grid_batch(val if len(val) else train, train_cfg.grid_size, dev)
    total = len(_cae_batches(train, train_cfg, 0, rank, world)) * train_cfg.epochs
    last_ckpt: Path | None = None
    model.train()
    while loop.epoch < train_cfg.epochs:
        t0 = time.perf_counter()
        batches = _cae_batches(train, train_cfg, loop.epoch, rank, world)
        for b in range(loop.batch, len(batches)):
            _train_batch(loop, train, batches[b], run_model, opt, train_cfg, dev, rank)
            if progress is not None:
                progress(loop.step, total)
            if train_cfg.checkpoint_every and loop.step % train_cfg.checkpoint_every == 0 and b + 1 < len(batches):
                last_ckpt = save_loop(ckpt_dir, rank, header, parts, loop, loop.epoch, b + 1) or last_ckpt
        val_fn = (lambda: {f"val_{k}": v for k, v in evaluate_cae(run_model, val, dev, train_cfg.batch_size).items()}
                  ) if len(val) else None
        record = close_epoch(loop, LOSS_KEYS, time.perf_counter() - t0, world, "CAE", val_fn)
        if not config.aux_gene_head:
            record.pop("train_aux_mse")
        last_ckpt = save_loop(ckpt_dir, rank, header, parts, loop, loop.epoch, 0) or last_ckpt
        _log_cae_epoch(log_to, model, grid, record, train_cfg.epochs)
    if log_to is not None and loop.history:
        log_loss_curves(log_to, loop.history, "CAE")
    final = unwrap(model).to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult("cae", final, config, train_cfg, loop.history, dict(loop.history[-1]) if loop.history else {},
                       loop.step, None, last_ckpt)


def _train_batch(loop: LoopState, train: SplitData, idx: torch.Tensor, model: nn.Module, opt: torch.optim.Optimizer,
                 cfg: CAETrainConfig, dev: torch.device, rank: int) -> None:
    """One step on rows ``idx`` (augmented with the step's own generator), added to the epoch's sums."""
    x, g = train.batch(idx, dev)
    s, t = train.side(idx, dev)
    x = augment(x, cfg.augment, step_generator(cfg.seed, rank, loop.step, dev))
    loop.sums += cae_step(model, opt, x, g, s, t, cfg.aux_weight, dev) * len(x)
    loop.seen += len(x)
    loop.step += 1


def _log_start(tracker: Tracker | None, header: dict[str, Any], n_train: int, n_val: int, dev: torch.device,
               world: int) -> None:
    if tracker is not None:
        tracker.log_params({**flat_params("model", header["model_config"]),
                            **flat_params("train", header["train_config"]),
                            "kind": "cae", "n_train": n_train, "n_val": n_val})
        tracker.set_tags(system_tags(dev, world))


def _cae_splits(datasets: Datasets, config: CAEConfig, dev: torch.device) -> tuple[SplitData, SplitData]:
    """Train and val splits with the patch scale and, for the gene head, the training split's gene PCs."""
    train_rows, pids = datasets.indices("train"), datasets.patient_ids
    scale = log_scale(datasets.mm_per_px) if config.scale_input else None
    targets = (gene_targets(datasets.genes, pids, train_rows, config.aux_pcs)
               if config.aux_gene_head and len(train_rows) else None)
    return stage_splits(datasets.patches, datasets.genes, train_rows, datasets.indices("val"), dev, scale,
                        targets, pids)


def _cae_batches(train: SplitData, cfg: CAETrainConfig, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    return patient_batches(train.groups, len(train), cfg.batch_size, epoch, cfg.seed, rank, world,
                           cfg.patient_repeats)


def _grid_batch(split: SplitData, size: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """The fixed rows whose reconstructions are logged each epoch: ``(x, g, s)``."""
    idx = torch.arange(min(size, len(split)))
    (x, g), (s, _) = split.batch(idx, dev), split.side(idx, dev)
    return x, g, s


def _log_cae_epoch(tracker: Tracker | None, model: nn.Module, grid: tuple[torch.Tensor, ...],
                   record: dict[str, float], epochs: int) -> None:
    """Log an epoch's record and the fixed rows' reconstructions (rank 0), and a log line."""
    epoch = int(record["epoch"])
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        grid_x, grid_g, grid_s = grid
        with torch.no_grad():
            model.eval()
            with autocast(grid_x.device):
                recon = unwrap(model)(grid_x, grid_g, grid_s)
            model.train()
        tracker.log_image(image_grid(torch.cat([grid_x.float(), recon.float()]), nrow=len(grid_x)),
                          f"reconstructions/epoch_{epoch:03d}.png")
    log.info("CAE epoch %d/%d: %s", epoch, epochs, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
