"""Shared fixtures.

Environment for every test: no analytics, a pseudonymisation key, and tool homes (MLflow, Prefect,
BentoML) inside pytest's temporary folder, so tests never touch a user's stores.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "test-key-0123456789abcdef-not-secret")

# --- cohort fixtures (synthetic cohort) ------------------------------------------------------------

# The tiny cohort: 8 patients, 128 x 128 px at 1.95 mm, 8-16 slices of 2.5 or 5 mm, 200 genes
# (12 per module). Builds in a few seconds; pixel spacing and thickness pass `validate` ranges.
TINY_SYNTH = dict(n_patients=8, seed=7, n_genes=200, genes_per_module=12, missing_fraction=0.002,
                  image_size=128, field_of_view_mm=250.0, min_slices=8, max_slices=16,
                  slice_thickness_mm=(2.5, 5.0))


def build_cohort(root, **overrides):
    """Write a tiny synthetic cohort to ``root/cohort`` (truth at ``root/cohort-truth``); its Path."""
    from rgops.data.synth import SynthConfig, generate_cohort

    out = root / "cohort"
    generate_cohort(out, SynthConfig(**{**TINY_SYNTH, **overrides}))
    return out


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Path of the session's tiny synthetic cohort (read-only: copy it before corrupting it).

    Its ground truth is at ``<path>-truth`` (ground_truth.json, patients.csv).
    """
    return build_cohort(tmp_path_factory.mktemp("tiny-cohort"))


@pytest.fixture
def make_cohort():
    """Factory ``make_cohort(tmp_path, **overrides) -> Path``: a tiny cohort with SynthConfig overrides.

    Example: ``make_cohort(tmp_path, n_patients=4, seed=3, write_seg=False)``.
    """
    return build_cohort

# --- datasets fixtures (ingest) --------------------------------------------------------------------

#: Key of the session's pseudonyms (the RGOPS_PSEUDONYM_KEY set above): tests that link truth rows
#: to datasets rows pseudonymise ``patient_id`` with it.
TINY_KEY = os.environ["RGOPS_PSEUDONYM_KEY"].encode()


@pytest.fixture(scope="session")
def tiny_datasets(tiny_cohort, tmp_path_factory):
    """Path of the datasets folder ingested from ``tiny_cohort`` (defaults of IngestConfig, S=64).

    Read-only: copy it before changing it. ``ingest_report.json`` and ``instances.parquet`` are in it.
    """
    from rgops.data.ingest import IngestConfig, ingest_cohort

    out = tmp_path_factory.mktemp("tiny-datasets") / "datasets"
    ingest_cohort(tiny_cohort, out, IngestConfig(), key=TINY_KEY)
    return out

# --- training fixtures (models, training, tracking) ------------------------------------------------


def make_training_datasets(n: int = 24, size: int = 64, n_genes: int = 12, seed: int = 0):
    """An in-memory Datasets: a disc whose radius follows gene 0 on noise, splits 16/4/4 of 24."""
    import numpy as np
    import pandas as pd

    from rgops.data.datasets import Datasets, GenePanel

    rng = np.random.default_rng(seed)
    genes = rng.standard_normal((n, n_genes)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = size * (0.18 + 0.06 * np.tanh(genes[:, 0]))
    inside = (yy[None] ** 2 + xx[None] ** 2) < radius[:, None, None] ** 2
    patches = np.where(inside, 0.3, -0.8) + 0.05 * rng.standard_normal((n, size, size))
    patches = np.clip(patches, -1, 1).astype(np.float32)[:, None]
    splits = (["train", "train", "train", "train", "val", "test"] * n)[:n]
    manifest = pd.DataFrame({"pseudo_id": [f"P-{i:016x}" for i in range(n)], "split": splits})
    panel = GenePanel(tuple(f"GENE{j}" for j in range(n_genes)), np.zeros(n_genes), np.ones(n_genes), n_train=n)
    return Datasets(patches, inside[:, None].astype(np.uint8), genes, manifest, panel)


def write_training_datasets(ds, root):
    """Write an in-memory Datasets as a datasets folder (the layout `rgops ingest` writes)."""
    import numpy as np
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "patches.npy", ds.patches)
    np.save(root / "masks.npy", ds.masks)
    pd.DataFrame(ds.genes, columns=list(ds.panel.genes), index=pd.Index(ds.manifest["pseudo_id"], name="pseudo_id")
                 ).to_parquet(root / "genes.parquet")
    ds.panel.save(root / "gene_panel.json")
    ds.manifest.to_parquet(root / "manifest.parquet")
    return root


@pytest.fixture(scope="session")
def train_datasets_dir(tmp_path_factory):
    """Path of a small datasets folder for training tests (24 patients, S=64, 12 genes)."""
    return write_training_datasets(make_training_datasets(), tmp_path_factory.mktemp("train-datasets") / "datasets")
