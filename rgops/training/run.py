"""One training run end to end, as ``rgops train`` (and a DVC stage or Prefect task) runs it:
params -> datasets -> train -> MLflow run with the logged model -> metrics and plots files.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on CUDA, gloo on CPU);
only rank 0 talks to MLflow and writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rgops.config import load_params
from rgops.data.datasets import Datasets
from rgops.training.common import ProgressFn, TrainResult, dist_rank_world, resolve_device
from rgops.training.presets import load_preset, model_config

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def _init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def write_outputs(result: TrainResult, metrics_out: Path | None, plots_out: Path | None) -> None:
    """Final metrics as JSON and the per-epoch history as CSV (DVC ``metrics`` and ``plots`` files)."""
    if metrics_out is not None:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps({result.kind: result.metrics}, indent=2) + "\n")
    if plots_out is not None and result.history:
        plots_out.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for h in result.history for k in h))
        with open(plots_out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(result.history)


@dataclass(frozen=True)
class TrainedModel:
    """A trained model logged to MLflow (not registered)."""

    kind: str
    run_id: str
    model_uri: str
    data_digest: str
    train_metrics: dict[str, float]


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run, so a later start can tell a dead run from a live one."""
    return {"rgops.host": socket.gethostname(), "rgops.pid": str(os.getpid())}


def train_and_log(kind: Literal["cae", "gan"], datasets_dir: str | Path, params: Mapping[str, Any], preset: str, *,
                  device: str | None = "auto", checkpoint_dir: str | Path | None = None, resume: bool = False,
                  experiment: str = "rgops", tracking_uri: str | None = None, tags: Mapping[str, str] | None = None,
                  progress: ProgressFn | None = None) -> tuple[TrainedModel, TrainResult] | None:
    """The one training step (``rgops train``, the DVC stages and the retrain flow): train ``kind``
    on a datasets folder with a params preset in its own MLflow run and log the model with its card.

    The run is tagged with the owning host/pid (:func:`owner_tags`), the caller's ``tags`` (e.g. the
    validation outcome), the git commit and the preset; it ends FAILED when training raises. With
    ``checkpoint_dir`` the run id is kept beside the checkpoint, so ``resume`` continues the same run.

    Returns:
        ``(TrainedModel, TrainResult)``; None on ranks other than 0 under torchrun.
    """
    from rgops.training.cae import train_cae
    from rgops.training.gan import train_gan

    fields, train_cfg = load_preset(dict(params), kind, preset)
    datasets = Datasets.load(datasets_dir)
    config = model_config(kind, datasets, fields)
    dev = resolve_device(device)
    started_group = _init_distributed(dev)
    rank, _ = dist_rank_world()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    train_fn = train_cae if kind == "cae" else train_gan
    try:
        if rank != 0:
            train_fn(datasets, config, train_cfg, None, dev, ckpt, resume, None)  # type: ignore[arg-type]
            return None
        from rgops.lineage import dvc_hash, git_commit
        from rgops.tracking import MlflowTracker, log_model, model_card

        run_id = None
        if resume and ckpt is not None and (ckpt / RUN_FILE).is_file():
            run_id = json.loads((ckpt / RUN_FILE).read_text())["run_id"]
        with MlflowTracker(experiment, run_name=f"{kind}-{preset}", tracking_uri=tracking_uri, run_id=run_id) as tracker:
            if ckpt is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / RUN_FILE).write_text(json.dumps({"run_id": tracker.run_id}))
            commit = git_commit()
            tracker.set_tags({**owner_tags(), **dict(tags or {}), "rgops.git_commit": commit, "rgops.preset": preset,
                              "rgops.kind": kind})
            tracker.log_params({"preset": preset})
            digest = tracker.log_dataset(datasets)
            result = train_fn(datasets, config, train_cfg, tracker, dev, ckpt, resume, progress)  # type: ignore[arg-type]
            card = model_card(kind, config, datasets.panel, datasets, result.metrics, digest,
                              dvc_hash(datasets_dir), commit)
            model_uri = log_model(result.module, kind, config, datasets.panel, card)
            trained = TrainedModel(kind, str(tracker.run_id), model_uri, digest,
                                   {k: float(v) for k, v in result.metrics.items()})
        return trained, result
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def run_training(kind: Literal["cae", "gan"], datasets_dir: str | Path, preset: str,
                 params_path: str | Path = "params.yaml", device: str = "auto",
                 checkpoint_dir: str | Path | None = None, resume: bool = False, experiment: str = "rgops",
                 metrics_out: str | Path | None = None, plots_out: str | Path | None = None,
                 progress: ProgressFn | None = None, model_uri_out: str | Path | None = None) -> str | None:
    """What ``rgops train`` and the DVC stages run: :func:`train_and_log`, then the DVC outputs.

    The tracking store is :func:`rgops.tracking.resolve_tracking_uri`.

    Returns:
        the MLflow run id (None on ranks other than 0 under torchrun).

    Raises:
        ConfigError, DatasetError, TrainingError, TrackingError: see the functions called.
    """
    done = train_and_log(kind, datasets_dir, load_params(params_path), preset, device=device,
                         checkpoint_dir=checkpoint_dir, resume=resume, experiment=experiment, progress=progress)
    if done is None:
        return None
    trained, result = done
    if model_uri_out is not None:
        # A file a DVC stage can list as an out and the next stage can read (`$(cat ...)`).
        Path(model_uri_out).parent.mkdir(parents=True, exist_ok=True)
        Path(model_uri_out).write_text(trained.model_uri + "\n")
    write_outputs(result, Path(metrics_out) if metrics_out else None, Path(plots_out) if plots_out else None)
    return trained.run_id
