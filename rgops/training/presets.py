"""Reading the ``train:`` section of params.yaml into model and training configs.

Layout::

    train:
      cae:
        model: {latent_dim: 32, conditioning: decoder, ...}    # CAEConfig fields but image_size, n_genes
        presets:
          tiny: {epochs: 2, batch_size: 16, lr: 0.002, ..., model: {widths: [8, 16]}}  # optional overrides
          demo: {...}
          full: {...}
      gan: (the same, with GANConfig and GANTrainConfig fields)

``image_size`` and ``n_genes`` come from the datasets, never from params.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from rgops.config import from_dict, section
from rgops.data.datasets import Datasets
from rgops.errors import ConfigError
from rgops.models.cae import CAEConfig
from rgops.models.gan import GANConfig
from rgops.training.common import CAETrainConfig, GANTrainConfig

log = logging.getLogger(__name__)

Kind = Literal["cae", "gan"]
PRESETS = ("tiny", "demo", "full")
_MODEL = {"cae": CAEConfig, "gan": GANConfig}
_TRAIN = {"cae": CAETrainConfig, "gan": GANTrainConfig}
_FROM_DATA = ("image_size", "n_genes")


def load_preset(params: dict[str, Any], kind: Kind, preset: str) -> tuple[dict[str, Any], CAETrainConfig | GANTrainConfig]:
    """``(model fields from params, training config)`` of ``train.<kind>.presets.<preset>``.

    Raises:
        ConfigError: unknown kind or preset, unknown keys, wrong types, or ``image_size``/``n_genes``
            set in params (they come from the data).
    """
    if kind not in _MODEL:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {sorted(_MODEL)}")
    base = section(params, f"train.{kind}")
    presets = base.get("presets") or {}
    if preset not in presets:
        raise ConfigError(f"params has no preset train.{kind}.presets.{preset}; available: {sorted(presets)}")
    model = dict(base.get("model") or {})
    chosen = dict(presets[preset])
    model.update(chosen.pop("model", None) or {})
    fixed = sorted(set(model) & set(_FROM_DATA))
    if fixed:
        raise ConfigError(f"train.{kind}.model sets {fixed}; these come from the datasets, remove them from params")
    # Build once now so that a typo fails before any data is loaded.
    from_dict(_MODEL[kind], {**model, "image_size": 64, "n_genes": 1}, f"train.{kind}.model")
    return model, from_dict(_TRAIN[kind], chosen, f"train.{kind}.presets.{preset}")


def model_config(kind: Kind, datasets: Datasets, fields: dict[str, Any]) -> CAEConfig | GANConfig:
    """The model config for ``datasets``: ``fields`` plus the data's patch size and gene count (and,
    for the CAE, the HU window of the datasets' patch contract, so its views re-window correctly)."""
    data: dict[str, Any] = {"image_size": datasets.size, "n_genes": len(datasets.panel)}
    if kind == "cae":
        data["hu_window"] = list(datasets.spec.hu_window)
        # The gene-PC head cannot predict more components than the training split has: at most one
        # per training patient and one per gene (a tiny cohort of 16 patients x 12 genes has 12).
        pcs = int(fields.get("aux_pcs", CAEConfig.aux_pcs))
        if pcs > 0:
            train = datasets.manifest.loc[datasets.manifest["split"] == "train", "pseudo_id"].nunique()
            data["aux_pcs"] = max(1, min(pcs, len(datasets.panel), int(train)))
            if data["aux_pcs"] < pcs:
                log.info("CAE aux_pcs %d lowered to %d: the training split has %d patients and %d genes",
                         pcs, data["aux_pcs"], train, len(datasets.panel))
    return from_dict(_MODEL[kind], {**fields, **data}, f"train.{kind}.model")


def check_params(params: dict[str, Any]) -> None:
    """Read every model and preset of the ``train`` section (:func:`load_preset`), so that a bad value
    in any preset fails at load, before anything is trained.

    Raises:
        ConfigError: an unknown kind, or the first bad key (dotted) of a model or preset.
    """
    train = section(params, "train")
    unknown = sorted(set(train) - set(_MODEL))
    if unknown:
        raise ConfigError(f"train: unknown model kind(s) {unknown}; expected {sorted(_MODEL)}")
    for kind in train:
        for preset in section(params, f"train.{kind}").get("presets") or {}:
            load_preset(params, kind, preset)  # type: ignore[arg-type]
