"""A CAE's program head travels with its registered version: logged to the run, digest tagged on the
version in the registration call, verified on load, served as program scores. Real MLflow SQLite store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgops.data.datasets import GenePanel
from rgops.errors import IntegrityError
from rgops.models.cae import CAEConfig, ConditionalAE
from rgops.registry import Registry
from rgops.tracking import (
    PROGRAM_HEAD_DIR,
    TAG_PROGRAM_HEAD,
    MlflowTracker,
    load_logged_model,
    log_model,
    log_program_head,
    model_card,
)

GENES = ("EGFR", "KRAS", "TP53")
CONFIG = CAEConfig(image_size=16, n_genes=3, latent_dim=4, gene_embed_dim=4, gene_hidden=8, widths=(8, 8), groups=2)
HEAD = {"names": ["hypoxia", "emt"], "coef": [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]], "intercept": [0.5, -1.0]}


def _logged_run(uri: str) -> tuple[str, str]:
    torch.manual_seed(0)
    panel = GenePanel(GENES, np.zeros(3), np.ones(3), n_train=4)
    card = model_card("cae", CONFIG, panel, None, {}, "d" * 64, "untracked", "abc123")
    with MlflowTracker("program-head-test", tracking_uri=uri) as tracker:
        model_uri = log_model(ConditionalAE(CONFIG), "cae", CONFIG, panel, card)
    assert tracker.run_id is not None
    return tracker.run_id, model_uri


def _register(reg: Registry, run_id: str, model_uri: str) -> str:
    return reg.register("cae", model_uri, run_id, metrics={"cae.cv_r2.mean": 0.1},
                        data_version={"data_digest": "d" * 64}, actor="ci").version


def test_registered_cae_serves_its_verified_program_head(tmp_path, monkeypatch):
    from rgops import serving

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = Registry(uri)
    run_id, model_uri = _logged_run(uri)
    bare = _register(reg, run_id, model_uri)  # registered before any evaluation: no head
    digest = log_program_head(run_id, HEAD)
    with_head = _register(reg, run_id, model_uri)

    assert TAG_PROGRAM_HEAD not in reg.version("rgops-cae", bare).tags
    assert reg.version("rgops-cae", with_head).tags[TAG_PROGRAM_HEAD] == digest
    assert reg.load_model(f"models:/rgops-cae/{bare}").program_head is None
    assert reg.load_model(f"models:/rgops-cae/{with_head}").program_head == HEAD

    _, load = serving.registry_source(uri)
    served = load("rgops-cae", with_head, None)
    patches = np.random.default_rng(0).uniform(-1, 1, (2, 1, 16, 16))
    feats = serving.encode(served, patches)
    row = feats.row(1)
    assert set(row["program_scores"]) == {"hypoxia", "emt"} and row["program_scores_reason"] is None
    expected = feats.latent @ np.asarray(HEAD["coef"]).T + np.asarray(HEAD["intercept"])
    assert row["program_scores"]["emt"] == pytest.approx(expected[1, 1])
    assert serving.encode(load("rgops-cae", bare, None), patches).row(0)["program_scores"] is None

    # Re-evaluating the run writes a new, content-addressed head: the registered version keeps its own.
    log_program_head(run_id, {**HEAD, "intercept": [0.0, 0.0]})
    assert reg.load_model(f"models:/rgops-cae/{with_head}").program_head == HEAD
    assert load_logged_model(model_uri).program_head["intercept"] == [0.0, 0.0]  # runs' latest head

    head_file = next((tmp_path / "mlartifacts").rglob(f"{PROGRAM_HEAD_DIR}/{digest}.json"))
    head_file.write_text(head_file.read_text().replace("0.5", "5.0"))
    with pytest.raises(IntegrityError, match=r"program head of run .* differs from the recorded"):
        reg.load_model(f"models:/rgops-cae/{with_head}")
    with pytest.raises(IntegrityError, match="program head"):
        load("rgops-cae", with_head, None)
    head_file.unlink()
    with pytest.raises(IntegrityError, match="cannot be read"):
        reg.load_model(f"models:/rgops-cae/{with_head}")
