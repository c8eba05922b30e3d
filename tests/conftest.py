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
