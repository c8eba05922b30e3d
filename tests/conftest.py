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

# --- Prefect, retrain and the shared trained registry (integration tests) ---------------------------


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (a temporary database and a local API) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    # The harness starts a local API server in a subprocess; on a busy 2-core CI box that can take
    # well over the default 30 s.
    with prefect_test_harness(server_startup_timeout=180):
        yield


def retrain_params(params: dict) -> dict:
    """params.yaml sized for the 16-patient retrain cohort: 8 training and 8 held-out patients under
    ``split_seed: 7``; presets ``good`` (trains the GAN for 40 steps) and ``worse`` (leaves it at its
    initialisation, lr ~ 0: its Frechet distance, in radiomics features, is above the champion's);
    floors relaxed so that tiny models pass them (the gates are tested in tests/unit/test_promotion.py)."""
    params["ingest"].update(split_fractions=[0.5, 0.25, 0.25], split_seed=7)
    params["evaluate"] = {"n_splits": 2, "inner_splits": 2, "min_train_patients": 8, "min_held_out_patients": 4,
                          "probe_inner_splits": 2,
                          # the tiny CAE's 2-epoch features cannot tell a trained generator from an untrained
                          # one (Frechet 41.0 vs 39.6, even 38.5 for a diverged one): radiomics features can
                          "gan_feature_space": "radiomics"}
    gan, cae = params["train"]["gan"]["presets"], params["train"]["cae"]["presets"]
    gan["good"] = {**gan["tiny"], "epochs": 10, "batch_size": 2, "lr_g": 0.002, "lr_d": 0.002}
    gan["worse"] = {**gan["tiny"], "epochs": 1, "lr_g": 1e-9, "lr_d": 1e-9}
    cae["good"] = cae["worse"] = cae["tiny"]
    params["promote"].update(
        floors={"cae.probe_r2.primary.lo": -100.0, "cae.probe_diff.radiomics.primary": -100.0,
                "gan.frechet": 10000.0, "gan.cond_consistency": -1.0},
        tolerance={"cae.probe_r2.primary": 1.0, "gan.frechet": 0.0, "gan.cond_consistency": 1.0})
    return params


@pytest.fixture(scope="session")
def retrain_env(tmp_path_factory):
    """(cohort, params path) for the retrain tests: a 16-patient cohort and :func:`retrain_params`."""
    from pathlib import Path

    import yaml

    root = tmp_path_factory.mktemp("retrain")
    cohort = build_cohort(root, n_patients=16)
    repo = Path(__file__).resolve().parents[1]
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(retrain_params(yaml.safe_load((repo / "params.yaml").read_text()))))
    return cohort, path


class TrainedRegistry:
    """The outcome of one auto-approved retrain (preset ``good``) of the retrain cohort.

    Attributes:
        store: folder holding ``mlflow.db``, ``mlartifacts/`` and the flow's ``work/`` (datasets, reports).
        uri: the SQLite tracking URI of that store.
        cohort, params: what was trained on (:func:`retrain_env`).
        state: the flow run's final Prefect state.
    """

    def __init__(self, store, cohort, params, state):
        self.store, self.cohort, self.params, self.state = store, cohort, params, state
        self.uri = f"sqlite:///{store / 'mlflow.db'}"
        self.work = store / "work"

    def copy_to(self, dest):
        """A private copy of the store's database and work folder in ``dest`` (file times kept, so the
        ingest cache still holds); returns its tracking URI. Artifacts stay in the shared store."""
        import shutil

        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.store / "mlflow.db", dest / "mlflow.db")
        shutil.copytree(self.work, dest / "work")
        return f"sqlite:///{dest / 'mlflow.db'}"


@pytest.fixture(scope="session")
def trained_registry(prefect_harness, retrain_env, tmp_path_factory):
    """One trained tiny registry shared by the slow integration tests (built once a session): the
    retrain flow run once, both models @champion version 1. Read it, or :meth:`TrainedRegistry.copy_to`
    a private copy before changing it."""
    import contextlib

    from flows.retrain import retrain

    cohort, params = retrain_env
    store = tmp_path_factory.mktemp("trained-registry")
    trained = TrainedRegistry(store, cohort, params, None)
    with contextlib.chdir(store):  # nothing the flow writes lands in the repository
        trained.state = retrain(cohort=str(cohort), workdir=str(trained.work), params_path=str(params),
                                tracking_uri=trained.uri, preset="good", approval="auto", return_state=True)
    return trained
