"""What a model was trained on: ingest records the cohort's origin, the model card copies it."""

from __future__ import annotations

import json
import shutil

import numpy as np

from rgops.data.datasets import Datasets
from rgops.data.ingest import IngestConfig, ingest_cohort
from rgops.data.provenance import ORIGIN_FILE, program_score_warning
from rgops.models.cae import CAEConfig
from rgops.tracking import model_card
from tests.conftest import TINY_KEY


def test_a_synthetic_cohort_makes_a_card_that_says_so(tiny_datasets) -> None:
    origin = json.loads((tiny_datasets / ORIGIN_FILE).read_text())
    assert origin["origin"] == "synthetic" and origin["generator"].startswith("rgops.data.synth")
    ds = Datasets.load(tiny_datasets)
    cfg = CAEConfig(image_size=64, n_genes=len(ds.panel.genes))
    card = model_card("cae", cfg, ds.panel, ds, {}, ds.digest(), "", "test")
    t = card["trained_on"]
    assert t["origin"] == "synthetic" and t["data_digest"] == ds.digest() and t["n_patches"] == len(ds)
    assert t["n_patients_ingested"] == ds.manifest["pseudo_id"].nunique() and t["patch_spec"] == card["patch"]
    warning = program_score_warning(card)
    assert warning is not None and "synthetic" in warning


def test_a_cohort_without_a_generator_is_site_data(tiny_cohort, tmp_path) -> None:
    cohort = tmp_path / "site"
    shutil.copytree(tiny_cohort, cohort)
    (cohort / "cohort.json").unlink()  # a hospital's folder has no generator record
    out = tmp_path / "datasets"
    ingest_cohort(cohort, out, IngestConfig(), key=TINY_KEY)
    ds = Datasets.load(out)
    card = model_card("cae", CAEConfig(image_size=64, n_genes=len(ds.panel.genes)), ds.panel, ds, {}, "d", "", "t")
    assert card["trained_on"]["origin"] == "site" and program_score_warning(card) is None


def test_a_card_without_datasets_says_unknown() -> None:
    from rgops.data.datasets import GenePanel

    panel = GenePanel(("A", "B"), np.zeros(2), np.ones(2), n_train=3)
    card = model_card("cae", CAEConfig(image_size=64, n_genes=2), panel, None, {}, "d", "", "t")
    assert card["trained_on"]["origin"] == "unknown" and program_score_warning(card) is None
