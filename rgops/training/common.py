"""What both training loops share: configs, the tracker protocol, devices, data, augmentation,
checkpoints and image grids.

Nothing here imports mlflow, matplotlib or pydicom: on a GPU machine that has only PyTorch the
training path runs with ``torch`` and ``numpy`` alone (a tracker brings its own libraries).

Randomness is derived, never carried: the noise and augmentation of step ``t`` on rank ``r`` come
from a generator seeded with ``(seed, r, t)``, and the batch order of epoch ``e`` from ``(seed, e)``.
A checkpoint therefore holds everything needed to continue bit-for-bit on CPU (model, optimizer,
EMA, step counters, running sums), plus torch's global RNG state for any code that draws from it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rgops.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "rgops-checkpoint/1"
CHECKPOINT_NAME = "last.pt"
ProgressFn = Callable[[int, int], None]
"""``progress(steps_done, steps_total)``, called after every optimisation step."""


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of CT patches, applied per sample on the device.

    Attributes:
        flip: random horizontal and vertical flips (axial slices have no preferred side).
        max_rotation_deg: uniform rotation in [-max, max] degrees; the corners filled with air (-1).
        intensity_scale: multiplicative jitter, factor in [1 - s, 1 + s].
        intensity_shift: additive jitter in [-t, t] (scaled units: 0.04 is 30 HU); results are
            clipped back to the HU window [-1, 1].
        rot90: random multiples of 90-degree rotation (exact, no interpolation).
    """

    flip: bool = True
    rot90: bool = True
    max_rotation_deg: float = 10.0
    intensity_scale: float = 0.05
    intensity_shift: float = 0.04


@dataclass(frozen=True)
class CAETrainConfig:
    """One preset of ``train.cae.presets`` in params.yaml.

    Attributes:
        epochs: passes over the train split.
        batch_size: global batch (split over DDP ranks).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        aux_weight: weight of the auxiliary gene-prediction loss (when the model has the head).
        seed: seeds initialisation, batch order, augmentation.
        checkpoint_every: write a checkpoint every N steps (0: at the end of every epoch only).
        augment: augmentation of the training patches.
        compile: ``torch.compile`` the model on CUDA (ignored on CPU).
        grid_size: patches in the reconstruction grid logged each epoch.
        patient_repeats: an epoch visits every training patient this many times, one random slice
            each time (batches sample patients, then slices).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    aux_weight: float = 1.0
    patient_repeats: int = 1
    seed: int = 0
    checkpoint_every: int = 0
    augment: AugmentConfig = AugmentConfig()
    compile: bool = False
    grid_size: int = 8

    def __post_init__(self) -> None:
        _check_common(self.epochs, self.batch_size, self.checkpoint_every, self.grid_size)
        if self.lr <= 0:
            raise ConfigError(f"train.cae lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class GANTrainConfig:
    """One preset of ``train.gan.presets`` in params.yaml.

    Attributes:
        epochs: passes over the train split.
        batch_size: global batch (split over DDP ranks).
        lr_g: generator Adam learning rate.
        lr_d: discriminator Adam learning rate.
        betas: Adam betas of both optimisers ((0, 0.9) is the usual choice for hinge GANs).
        mismatch_weight: weight of the mismatched (real image, other genes) negatives in the D loss.
        ema_decay: decay of the generator's exponential moving average (used for sampling).
        seed: seeds initialisation, batch order, noise and augmentation.
        checkpoint_every: write a checkpoint every N steps (0: at the end of every epoch only).
        augment: augmentation of the real patches.
        compile: ``torch.compile`` both networks on CUDA (ignored on CPU).
        grid_size: samples in the fixed-noise grid logged each epoch.
        patient_repeats: an epoch visits every training patient this many times, one random slice
            each time (batches sample patients, then slices).
        aux_weight: weight of the auxiliary gene-PC loss (discriminator on real images, generator
            on its samples) when the model has the head (``GANConfig.aux_pcs``).
        diversity_weight: weight of the mode-seeking term (Mao et al. 2019, MSGAN): pairs of
            samples of one profile are pushed apart in image space per unit of noise distance,
            against a generator that ignores its noise (0 = off).
    """

    epochs: int
    batch_size: int
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    mismatch_weight: float = 0.5
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 0
    augment: AugmentConfig = AugmentConfig()
    compile: bool = False
    grid_size: int = 8
    patient_repeats: int = 1
    aux_weight: float = 1.0
    diversity_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.epochs, self.batch_size, self.checkpoint_every, self.grid_size)
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError(f"train.gan lr_g and lr_d must be > 0, got {self.lr_g} and {self.lr_d}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.gan ema_decay must be in [0, 1), got {self.ema_decay}")


def _check_common(epochs: int, batch_size: int, checkpoint_every: int, grid_size: int) -> None:
    if epochs < 1 or batch_size < 1 or checkpoint_every < 0 or grid_size < 1:
        raise ConfigError(
            f"training needs epochs >= 1, batch_size >= 1, checkpoint_every >= 0 and grid_size >= 1; got "
            f"epochs={epochs}, batch_size={batch_size}, checkpoint_every={checkpoint_every}, grid_size={grid_size}"
        )


@runtime_checkable
class Tracker(Protocol):
    """Where a training run reports. :class:`rgops.tracking.MlflowTracker` is the real one."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_image(self, image: np.ndarray, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


@dataclass
class TrainResult:
    """What a training run leaves behind.

    Attributes:
        kind: ``"cae"`` or ``"gan"``.
        module: the model to use, on CPU in eval mode (the CAE, or the EMA generator).
        config: its model config.
        train_config: the preset it was trained with.
        history: one record of metrics per epoch.
        metrics: the last epoch's metrics.
        steps: optimisation steps taken in total.
        discriminator: the GAN discriminator (None for the CAE).
        checkpoint: the last checkpoint written, if any.
    """

    kind: Literal["cae", "gan"]
    module: nn.Module
    config: Any
    train_config: Any
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    discriminator: nn.Module | None = None
    checkpoint: Path | None = None


# ---- devices ----------------------------------------------------------------------------------


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError.

    Under ``torchrun`` on CUDA the device is ``cuda:<LOCAL_RANK>``.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def setup_device(device: torch.device, seed: int) -> None:
    """Seed torch and, on CUDA, turn on the fast paths (cudnn autotuning, TF32 for fp32 leftovers)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; nothing on CPU (fp32 keeps CPU runs deterministic and exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device; channels_last on CUDA (faster convolutions with bf16 tensor cores)."""
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def make_adamw(params: Iterator[nn.Parameter] | list[nn.Parameter], device: torch.device, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA."""
    kwargs: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)


def maybe_compile(module: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``torch.compile`` on CUDA when asked; the module itself otherwise."""
    if enabled and device.type == "cuda":
        return torch.compile(module)  # type: ignore[return-value]
    if enabled:
        log.info("compile=true ignored on %s (compiles only on CUDA)", device)
    return module


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when a process group is initialised."""
    _, world = dist_rank_world()
    if world == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


# ---- data -------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """One split's patches ``(N, 1, S, S)`` and genes ``(N, G)``, on the device when they fit.

    ``s`` is the patch scale ``log2(mm_per_px)`` ``(N,)`` and ``t`` optional per-row targets
    ``(N, T)`` (the CAE's gene PCs); ``groups`` the patient index of each row (a patient has
    several slices), for :func:`patient_batches`.
    """

    x: torch.Tensor
    g: torch.Tensor
    s: torch.Tensor | None = None
    t: torch.Tensor | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` on ``device`` (channels_last on CUDA)."""
        x = self.x.index_select(0, idx.to(self.x.device))
        g = self.g.index_select(0, idx.to(self.g.device))
        if x.device != device:
            x = x.to(device, non_blocking=True)
            g = g.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, g

    def side(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scale ``(B,)`` and targets ``(B, T)`` of rows ``idx`` on ``device`` (None where absent)."""
        pick = lambda v: None if v is None else v.index_select(0, idx.to(v.device)).to(device)  # noqa: E731
        return pick(self.s), pick(self.t)


def stage_split(patches: np.ndarray, genes: np.ndarray, idx: np.ndarray, device: torch.device,
                scale: np.ndarray | None = None, targets: np.ndarray | None = None,
                patient_ids: np.ndarray | None = None) -> SplitData:
    """Copy one split to the GPU when it takes under half the free memory, else keep it on the host
    (pinned on CUDA so copies overlap compute). ``scale``, ``targets`` and ``patient_ids`` are
    full-length arrays indexed like ``patches``."""
    x = torch.from_numpy(np.ascontiguousarray(patches[idx], dtype=np.float32))
    g = torch.from_numpy(np.ascontiguousarray(genes[idx], dtype=np.float32))
    s = None if scale is None else torch.from_numpy(np.ascontiguousarray(scale[idx], dtype=np.float32))
    t = None if targets is None else torch.from_numpy(np.ascontiguousarray(targets[idx], dtype=np.float32))
    groups = None if patient_ids is None else pd.factorize(np.asarray(patient_ids)[idx])[0]
    tensors = [x, g, s, t]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if sum(v.nbytes for v in tensors if v is not None) < free // 2:
            tensors = [None if v is None else v.to(device) for v in tensors]
        else:
            log.info("split of %d patches does not fit in half the free GPU memory: streaming from pinned host memory",
                     len(x))
            tensors = [None if v is None else v.pin_memory() for v in tensors]
    return SplitData(*tensors, groups=groups)


def patient_batches(groups: np.ndarray | None, n: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                    world: int = 1, repeats: int = 1) -> list[torch.Tensor]:
    """Batches that sample patients, then one slice of each: every patient ``repeats`` times an epoch.

    A patient with many slices then weighs as much as one with few. Without ``groups`` (one row per
    patient) this is :func:`epoch_batches`. Deterministic in ``(seed, epoch)``.
    """
    if groups is None:
        return epoch_batches(n, batch_size, epoch, seed, rank, world)
    gen = np.random.default_rng([seed, epoch, 7])
    rows_of = pd.Series(np.arange(len(groups))).groupby(groups).apply(np.asarray)
    picks = [int(gen.choice(rows)) for _ in range(max(1, repeats)) for rows in rows_of]
    order = np.asarray(picks)[gen.permutation(len(picks))]
    if world > 1:
        order = order[: (len(order) // world) * world][rank::world]
    per_rank = max(1, batch_size // world)
    return list(torch.from_numpy(order).split(per_rank)) if len(order) else []


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """The batches (index tensors) of one epoch for one rank.

    The order depends only on ``(seed, epoch)``; under DDP every rank takes an equal share (a few
    trailing samples are dropped so ranks step in lockstep) and the global batch is split evenly.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if world > 1:
        perm = perm[: (n // world) * world][rank::world]
    per_rank = max(1, batch_size // world)
    return list(perm.split(per_rank)) if len(perm) else []


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for the noise and augmentation of one step (see the module docstring)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + step)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Flip, rotate slightly and jitter intensity, per sample; ``(B, 1, S, S) -> (B, 1, S, S)`` in [-1, 1].

    Each sample is transformed on its own, so no information crosses patients (or splits).
    """
    b, dev = x.shape[0], x.device
    rand = lambda *shape: torch.rand(*shape, generator=gen, device=dev)  # noqa: E731
    if cfg.flip:
        x = torch.where(rand(b, 1, 1, 1) < 0.5, x.flip(-1), x)
        x = torch.where(rand(b, 1, 1, 1) < 0.5, x.flip(-2), x)
    if cfg.rot90:  # with the flips above: all eight symmetries of the square
        x = torch.where(rand(b, 1, 1, 1) < 0.5, x.transpose(-1, -2), x)
    if cfg.max_rotation_deg > 0:
        angle = (rand(b) * 2 - 1) * math.radians(cfg.max_rotation_deg)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Shift so that zero padding means air (-1 in the scaled HU window), then shift back.
        x = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    if cfg.intensity_scale > 0 or cfg.intensity_shift > 0:
        scale = 1 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.intensity_scale
        shift = (rand(b, 1, 1, 1) * 2 - 1) * cfg.intensity_shift
        x = (x * scale + shift).clamp(-1.0, 1.0)
    return x


# ---- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``directory/last.pt`` atomically (a SIGKILL mid-write leaves the previous one intact)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = directory / (CHECKPOINT_NAME + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path, kind: str, model_config: dict[str, Any], train_config: dict[str, Any],
                    dataset_digest: str) -> dict[str, Any]:
    """Read ``directory/last.pt`` and check it belongs to this run.

    Raises:
        TrainingError: no checkpoint, an unreadable one, or one written for another model kind,
            config or dataset.
    """
    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainingError(f"--resume given but {str(path)!r} does not exist; train without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TrainingError(f"checkpoint {str(path)!r} cannot be read ({exc}); delete it and train afresh") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != kind:
        raise TrainingError(
            f"checkpoint {str(path)!r} is {state.get('format')!r}/{state.get('kind')!r}, expected "
            f"{CHECKPOINT_FORMAT!r}/{kind!r}; point --checkpoint-dir at a {kind} checkpoint folder"
        )
    for name, mine in (("model_config", model_config), ("train_config", train_config)):
        theirs = state.get(name, {})
        diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        if diff:
            raise TrainingError(
                f"checkpoint {str(path)!r} was written with another {name} (differs in {diff}); resume with "
                "the same preset and params, or use a fresh --checkpoint-dir"
            )
    if state.get("dataset_digest") != dataset_digest:
        raise TrainingError(
            f"checkpoint {str(path)!r} was trained on dataset {str(state.get('dataset_digest'))[:12]}, "
            f"this run has {dataset_digest[:12]}; resume on the same datasets or use a fresh --checkpoint-dir"
        )
    return state


def rng_state() -> dict[str, Any]:
    """torch's global RNG state (CPU, and CUDA when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- images -----------------------------------------------------------------------------------


def image_grid(images: torch.Tensor | np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """``(N, 1, S, S)`` in [-1, 1] -> a uint8 grayscale grid ``(H, W)`` with ``nrow`` images a row."""
    arr = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    n, _, s, _ = arr.shape
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (s + pad) + pad, nrow * (s + pad) + pad), dtype=np.uint8)
    pix = ((np.clip(arr[:, 0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (s + pad): pad + r * (s + pad) + s, pad + c * (s + pad): pad + c * (s + pad) + s] = pix[i]
    return grid


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over DDP ranks (identity in one process)."""
    _, world = dist_rank_world()
    if world > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= world
    return values


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def log_loss_curves(tracker: Tracker, history: list[dict[str, float]], title: str) -> None:
    """Plot every per-epoch loss in ``history`` and hand the figure to the tracker.

    matplotlib is imported here, only when a tracker is given.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h}):
        if "loss" in key or "mse" in key:
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tracker.log_figure(fig, "plots/loss_curves.png")


# ---- loop steps (resume, splits, close an epoch): step functions, not a trainer ---------------------


@dataclass
class LoopState:
    """Where a training loop stands: what a checkpoint saves and a resume restores.

    ``epoch``/``batch`` are the next to run; ``sums`` the running loss sums of the open epoch
    (one entry per loss key) over ``seen`` images; ``history`` one record per closed epoch.
    """

    epoch: int
    batch: int
    step: int
    sums: torch.Tensor
    seen: int
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def start(cls, n_losses: int, device: torch.device) -> "LoopState":
        return cls(0, 0, 0, torch.zeros(n_losses, device=device), 0, [])

    def checkpoint(self, epoch: int, batch: int) -> dict[str, Any]:
        """The loop's part of a checkpoint, positioned at ``epoch``/``batch``."""
        return {"epoch": epoch, "batch": batch, "step": self.step, "sums": self.sums.cpu(), "seen": self.seen,
                "history": self.history, "rng": rng_state()}


def resume_loop(checkpoint_dir: Path | None, kind: str, parts: Mapping[str, Any], model_config: dict[str, Any],
                train_config: dict[str, Any], dataset_digest: str, device: torch.device) -> LoopState:
    """Restore ``parts`` (checkpoint key -> module or optimizer) and the loop from ``checkpoint_dir/last.pt``.

    Raises:
        ConfigError: no checkpoint directory was given.
        TrainingError: see :func:`load_checkpoint`.
    """
    if checkpoint_dir is None:
        raise ConfigError("resume asked for without a checkpoint directory; pass --checkpoint-dir DIR")
    state = load_checkpoint(checkpoint_dir, kind, model_config, train_config, dataset_digest)
    for key, part in parts.items():
        part.load_state_dict(state[key])
    set_rng_state(state["rng"])
    loop = LoopState(state["epoch"], state["batch"], state["step"], state["sums"].to(device), state["seen"],
                     list(state["history"]))
    log.info("resumed %s training at epoch %d, step %d", kind.upper(), loop.epoch, loop.step)
    return loop


def save_loop(checkpoint_dir: Path | None, rank: int, header: Mapping[str, Any], parts: Mapping[str, Any],
              loop: LoopState, epoch: int, batch: int) -> Path | None:
    """Checkpoint ``header`` (kind, configs, digest), the state dicts of ``parts`` and the loop (rank 0 only)."""
    if checkpoint_dir is None or rank != 0:
        return None
    states = {key: unwrap(part).state_dict() if isinstance(part, nn.Module) else part.state_dict()
              for key, part in parts.items()}
    return save_checkpoint(checkpoint_dir, {**header, **states, **loop.checkpoint(epoch, batch)})


def stage_splits(patches: np.ndarray, genes: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                 device: torch.device, scale: np.ndarray | None = None, targets: np.ndarray | None = None,
                 patient_ids: np.ndarray | None = None) -> tuple[SplitData, SplitData]:
    """The train and val splits staged for the loop (:func:`stage_split`).

    Raises:
        TrainingError: there are no training rows.
    """
    if len(train_rows) == 0:
        raise TrainingError("the datasets have no train rows; re-run `rgops ingest` with a larger cohort")
    return (stage_split(patches, genes, train_rows, device, scale, targets, patient_ids),
            stage_split(patches, genes, val_rows, device, scale, targets, patient_ids))


def close_epoch(loop: LoopState, loss_keys: tuple[str, ...], seconds: float, world: int, what: str,
                val: Callable[[], Mapping[str, float]] | None = None) -> dict[str, float]:
    """Close the open epoch ``loop.epoch``: mean losses over every rank, checked finite, as
    ``train_<key>``, then ``val()``'s numbers and the throughput; appended to ``loop.history`` and
    returned. The running sums restart and the loop moves to the next epoch.

    Raises:
        TrainingError: a mean loss is not finite.
    """
    means = all_reduce_mean(loop.sums / max(loop.seen, 1)).tolist()
    if not all(math.isfinite(m) for m in means):
        raise TrainingError(f"{what} loss became non-finite in epoch {loop.epoch + 1} ({means}); "
                            "lower the learning rate")
    record = {"epoch": float(loop.epoch + 1), **{f"train_{k}": v for k, v in zip(loss_keys, means)},
              **(val() if val is not None else {}),
              "epoch_seconds": seconds, "images_per_second": loop.seen * world / max(seconds, 1e-9)}
    loop.history.append(record)
    loop.sums, loop.seen = torch.zeros_like(loop.sums), 0
    loop.epoch, loop.batch = loop.epoch + 1, 0
    return record
