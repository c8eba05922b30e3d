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
from pathlib import Path
from typing import Literal

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


def run_training(kind: Literal["cae", "gan"], datasets_dir: str | Path, preset: str,
                 params_path: str | Path = "params.yaml", device: str = "auto",
                 checkpoint_dir: str | Path | None = None, resume: bool = False, experiment: str = "rgops",
                 metrics_out: str | Path | None = None, plots_out: str | Path | None = None,
                 progress: ProgressFn | None = None, model_uri_out: str | Path | None = None) -> str | None:
    """Train ``kind`` on a datasets folder with a params preset and track it in MLflow.

    The tracking store is :func:`rgops.tracking.resolve_tracking_uri`. With ``checkpoint_dir`` the
    run id is kept beside the checkpoint, so ``resume`` continues the same MLflow run.

    Returns:
        the MLflow run id (None on ranks other than 0 under torchrun).

    Raises:
        ConfigError, DatasetError, TrainingError, TrackingError: see the functions called.
    """
    from rgops.training.cae import train_cae
    from rgops.training.gan import train_gan

    params = load_params(params_path)
    fields, train_cfg = load_preset(params, kind, preset)
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
        from rgops.tracking import MlflowTracker, git_commit, log_model, model_card

        run_id = None
        if resume and ckpt is not None and (ckpt / RUN_FILE).is_file():
            run_id = json.loads((ckpt / RUN_FILE).read_text())["run_id"]
        with MlflowTracker(experiment, run_name=f"{kind}-{preset}", run_id=run_id) as tracker:
            if ckpt is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / RUN_FILE).write_text(json.dumps({"run_id": tracker.run_id}))
            digest = tracker.log_dataset(datasets)
            commit = git_commit()
            tracker.set_tags({"rgops.git_commit": commit, "rgops.preset": preset, "rgops.kind": kind})
            tracker.log_params({"preset": preset})
            result = train_fn(datasets, config, train_cfg, tracker, dev, ckpt, resume, progress)  # type: ignore[arg-type]
            from rgops.tracking import dvc_hash

            card = model_card(kind, config, datasets.panel, datasets, result.metrics, digest,
                              dvc_hash(datasets_dir), commit)
            model_uri = log_model(result.module, kind, config, datasets.panel, card)
            if model_uri_out is not None:
                # A file a DVC stage can list as an out and the next stage can read (`$(cat ...)`).
                Path(model_uri_out).parent.mkdir(parents=True, exist_ok=True)
                Path(model_uri_out).write_text(model_uri + "\n")
            write_outputs(result, Path(metrics_out) if metrics_out else None, Path(plots_out) if plots_out else None)
            return tracker.run_id
    finally:
        if started_group:
            torch.distributed.destroy_process_group()
