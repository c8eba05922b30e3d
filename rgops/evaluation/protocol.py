"""The validity protocol: which patients a probe learns on, which it is scored on, and the metrics.

The primary number of every feature set (a CAE, the unconditional AE, radiomics, the handcrafted
shape + texture set, the oracle) is the **probe R^2** (:mod:`rgops.evaluation.probe`): a ridge probe
fitted on the *training split's* patients (the patients the models trained on, one row each: the
mean over the patient's slices), scored on the *held-out* patients (``evaluate.splits``), with a
bootstrap interval over held-out patients and paired differences between sets.

Metric names (flat, as logged to MLflow and read by the promotion gates)::

    <set>.probe_r2.<target>          R^2 of one target (program or gene PC) on held-out patients
    <set>.probe_r2.<target>.lo/.hi   its bootstrap interval (``evaluate.probe_level``, 90%)
    <set>.probe_r2.primary           mean R^2 over the primary targets: the imaging-linked programs
                                     with ground truth, else every gene PC (.lo/.hi: interval)
    <a>.probe_diff.<b>.primary       primary(a) - primary(b), paired bootstrap (.lo/.hi)

Cohort size is checked by :func:`check_cohort` *before* anything is trained, so a cohort too small
for the protocol is refused in seconds with the minimum it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rgops.errors import EvaluationError
from rgops.evaluation import probe as P


@dataclass(frozen=True)
class PatientSplit:
    """Training and held-out patients of a manifest, each in first-appearance order."""

    train: list[str]
    held_out: list[str]

    @classmethod
    def of(cls, manifest: pd.DataFrame, held_out_splits: Sequence[str]) -> "PatientSplit":
        pid = manifest["pseudo_id"].to_numpy()
        held = np.isin(manifest["split"].to_numpy(), list(held_out_splits))
        return cls(list(dict.fromkeys(pid[~held])), list(dict.fromkeys(pid[held])))


def check_cohort(manifest: pd.DataFrame, held_out_splits: Sequence[str], min_train: int, min_held_out: int) -> PatientSplit:
    """Refuse a cohort too small for the probe protocol, before any training.

    Raises:
        EvaluationError: fewer than ``min_train`` training or ``min_held_out`` held-out patients;
            the message names both counts, the minimum and what to do.
    """
    split = PatientSplit.of(manifest, held_out_splits)
    if len(split.train) < min_train or len(split.held_out) < min_held_out:
        raise EvaluationError(
            f"the cohort has {len(split.train)} training and {len(split.held_out)} held-out patients (splits "
            f"{list(held_out_splits)}); the probe protocol needs at least {min_train} training and {min_held_out} "
            f"held-out patients (evaluate.min_train_patients / evaluate.min_held_out_patients): bring a larger "
            f"cohort (about {int(np.ceil(min_held_out / 0.3))} patients with the default 70/15/15 split)")
    return split


def per_patient(ids: np.ndarray, values: np.ndarray, order: Sequence[str]) -> np.ndarray:
    """Rows of one patient (its slices) averaged, in the order of ``order``: ``(N, F) -> (len(order), F)``."""
    frame = pd.DataFrame(np.asarray(values, dtype=np.float64))
    frame["_pid"] = ids
    return frame.groupby("_pid", sort=False).mean().loc[list(order)].to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe protocol (from ``evaluate`` in params.yaml)."""

    alphas: tuple[float, ...] = P.DEFAULT_ALPHAS
    inner_splits: int = 5
    n_boot: int = 1000
    level: float = 0.9
    seed: int = 0
    min_train: int = P.MIN_TRAIN
    min_held_out: int = P.MIN_HELD_OUT


def probe_metrics(train_x: Mapping[str, np.ndarray], held_x: Mapping[str, np.ndarray], train_y: np.ndarray,
                  held_y: np.ndarray, targets: Sequence[str], primary: Sequence[str],
                  pairs: Sequence[tuple[str, str]], cfg: ProbeConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Probe every feature set, bootstrap, and name the metrics (see the module docstring).

    Args:
        train_x / held_x: set name -> ``(n_tr, F)`` / ``(n_ho, F)`` per-patient features.
        train_y / held_y: ``(n_tr, T)`` / ``(n_ho, T)`` targets.
        targets: the ``T`` target names; ``primary`` the subset averaged into ``.primary``.
        pairs: ``(a, b)`` sets whose paired difference is reported as ``a.probe_diff.b.primary``.

    Returns:
        ``(metrics, predictions)``: flat metrics, and the held-out predictions of each set.
    """
    preds = {name: P.fit_probe(train_x[name], train_y, held_x[name], alphas=cfg.alphas,
                               inner_splits=cfg.inner_splits, seed=cfg.seed,
                               min_train=cfg.min_train, min_held_out=cfg.min_held_out).pred
             for name in train_x}
    boot = P.bootstrap(held_y, preds, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed, pairs=pairs,
                       targets=targets, mean_over=primary, min_held_out=cfg.min_held_out)
    metrics: dict[str, float] = {}
    for name, scores in boot.sets.items():
        for target, iv in scores.per_target.items():
            key = f"{name}.probe_r2.{target}"
            metrics.update({key: iv.point, f"{key}.lo": iv.lo, f"{key}.hi": iv.hi})
        key = f"{name}.probe_r2.primary"
        metrics.update({key: scores.mean.point, f"{key}.lo": scores.mean.lo, f"{key}.hi": scores.mean.hi})
    for (a, b), iv in boot.diffs.items():
        key = f"{a}.probe_diff.{b}.primary"
        metrics.update({key: iv.point, f"{key}.lo": iv.lo, f"{key}.hi": iv.hi})
    metrics["probe.n_train"] = float(len(train_y))
    metrics["probe.n_held_out"] = float(len(held_y))
    return metrics, preds


def summary_lines(metrics: Mapping[str, float]) -> list[str]:
    """Side-by-side probe numbers of every feature set (models first, then baselines and the oracle),
    one line each, for the CLI and the demo: ``cae  primary 0.49 [0.35, 0.60]  proliferation 0.62 ...``."""
    sets = sorted({k.split(".probe_r2.")[0] for k in metrics if k.endswith(".probe_r2.primary")},
                  key=lambda n: (n in ("radiomics", "handcrafted", "oracle"), n == "oracle", n))
    lines = []
    for name in sets:
        p = f"{name}.probe_r2.primary"
        targets = [k[len(f"{name}.probe_r2."):] for k in metrics
                   if k.startswith(f"{name}.probe_r2.") and k.count(".") == 2 and not k.endswith(".primary")]
        per = "  ".join(f"{t} {metrics[f'{name}.probe_r2.{t}']:.2f}" for t in targets)
        lines.append(f"{name:<12} probe R2 {metrics[p]:.3f} [{metrics[p + '.lo']:.3f}, {metrics[p + '.hi']:.3f}]  {per}")
    for k in sorted(metrics):
        if ".probe_diff." in k and k.endswith(".primary"):
            a, b = k.removesuffix(".primary").split(".probe_diff.")
            lines.append(f"{a} - {b}: {metrics[k]:+.3f} [{metrics[k + '.lo']:+.3f}, {metrics[k + '.hi']:+.3f}]")
    return lines


__all__ = ["summary_lines", "PatientSplit", "ProbeConfig", "check_cohort", "per_patient", "probe_metrics"]
