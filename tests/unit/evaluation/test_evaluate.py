"""`evaluate` end to end on a constructed in-memory cohort with a known answer: two imaging-linked
programs drive tumour size and attenuation, one decoy program drives genes only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rgops.config import from_dict
from rgops.data.datasets import Datasets, GenePanel
from rgops.errors import ConfigError, EvaluationError
from rgops.evaluation.evaluate import EvaluateConfig, GroundTruth, evaluate, write_outputs
from rgops.models.cae import CAEConfig, ConditionalAE
from rgops.models.gan import GANConfig, Generator

S, N, G = 32, 120, 30
N_TRAIN = 80  # 80 training patients, 40 held out (val/test): the probe protocol's split
PROGRAMS = ("size", "density", "decoy")


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, 3))
    radius = 6 + 1.6 * z[:, 0]
    hu = -100 + 120 * z[:, 1]
    yy, xx = np.mgrid[:S, :S]
    dist = np.sqrt((yy - S / 2 + 0.5) ** 2 + (xx - S / 2 + 0.5) ** 2)
    masks = (dist[None] <= np.clip(radius, 2.5, 13)[:, None, None]).astype(np.uint8)
    img = np.where(masks > 0, hu[:, None, None], -850.0) + rng.normal(0, 15, (N, S, S))
    patches = ((np.clip(img, -1000, 500) + 1000) / 1500 * 2 - 1).astype(np.float32)[:, None]
    genes = [f"G{i}" for i in range(G)]
    expr = rng.standard_normal((N, G))
    modules = {"size": genes[0:6], "density": genes[6:12], "decoy": genes[12:18]}
    for j, p in enumerate(PROGRAMS):
        expr[:, 6 * j : 6 * j + 6] += 1.5 * z[:, j : j + 1]
    ids = [f"P-{i:016x}" for i in range(N)]
    split = np.array(["train"] * N_TRAIN + ["val", "test"] * ((N - N_TRAIN) // 2))
    manifest = pd.DataFrame({"pseudo_id": ids, "split": split, "pixel_spacing_mm": 0.8, "crop_side_px": 40})
    panel = GenePanel(tuple(genes), np.zeros(G), np.ones(G))
    ds = Datasets(patches, masks[:, None], expr.astype(np.float32), manifest, panel)
    table = pd.DataFrame({"size": z[:, 0], "density": z[:, 1], "decoy": z[:, 2],
                          "diameter_mm": 2 * radius * 0.8, "attenuation_hu": hu}, index=ids)
    truth = GroundTruth(PROGRAMS, ("size", "density"), ("decoy",), {k: tuple(v) for k, v in modules.items()},
                        {"diameter_mm": "size", "attenuation_hu": "density"}, table)
    return ds, truth


@pytest.fixture(scope="module")
def result(cohort):
    import torch

    ds, truth = cohort
    torch.manual_seed(0)
    cae = ConditionalAE(CAEConfig(image_size=S, n_genes=G, latent_dim=4, widths=(8, 16), gene_embed_dim=4,
                                  gene_hidden=8, conditioning="encoder"))
    ae = ConditionalAE(CAEConfig(image_size=S, n_genes=G, latent_dim=4, widths=(8, 16), conditioning="none"))
    gan = Generator(GANConfig(image_size=S, n_genes=G, z_dim=8, gene_embed_dim=8, gene_hidden=8, g_channels=8,
                              max_channels=16))
    cfg = EvaluateConfig(n_splits=4, inner_splits=3, diversity_profiles=2, samples_per_profile=3,
                         traversal_values=(-2.0, 0.0, 2.0), n_boot=300)
    return evaluate(ds, {"cae": cae, "ae": ae}, gan=gan, truth=truth, cfg=cfg), cfg


def test_stable_metric_names(result):
    res, _ = result
    for name in ("cae.cv_r2.mean", "cae.cca1", "cae.sig_pairs", "cae.program_recall", "cae.program_precision",
                 "ae.cv_r2.mean", "radiomics.cv_r2.mean", "radiomics.program_recall",
                 "gan.frechet", "gan.frechet_ref", "gan.cond_consistency", "gan.ms_ssim", "gan.ms_ssim_real"):
        assert name in res.metrics, name
        assert np.isfinite(res.metrics[name]), name
    for name in ("cae", "ae", "radiomics", "handcrafted", "oracle"):
        for key in (f"{name}.probe_r2.primary", f"{name}.probe_r2.primary.lo", f"{name}.probe_r2.primary.hi",
                    f"{name}.probe_r2.size", f"{name}.probe_r2.decoy"):
            assert np.isfinite(res.metrics[key]), key
    for key in ("cae.probe_diff.radiomics.primary", "cae.probe_diff.handcrafted.primary", "cae.probe_diff.ae.primary"):
        lo, mid, hi = (res.metrics[key + s] for s in (".lo", "", ".hi"))
        assert lo <= mid <= hi, key
    assert res.info["n_patients"] == 40 and res.info["n_train_patients"] == N_TRAIN and res.info["equal_dim"] == 4


def test_probe_protocol_finds_the_phenotype_and_not_the_decoy(result):
    """Baselines that see size and attenuation predict the linked programs on held-out patients and not
    the decoy; the oracle (the true program values) sits at the top."""
    m = result[0].metrics
    for name in ("radiomics", "handcrafted"):
        assert m[f"{name}.probe_r2.size"] > 0.3 and m[f"{name}.probe_r2.density"] > 0.3, name
        assert m[f"{name}.probe_r2.primary.lo"] > 0, name
        assert abs(m[f"{name}.probe_r2.decoy"]) < 0.15, name
    assert m["oracle.probe_r2.primary"] > max(m["radiomics.probe_r2.primary"], 0.5)
    # untrained encoders carry little: radiomics beats them with an interval above 0
    assert m["radiomics.probe_r2.primary"] > m["cae.probe_r2.primary"]


def test_radiomics_recovers_linked_programs_not_decoy(result):
    res, _ = result
    m = res.metrics
    # secondary numbers: radiomics cut to the encoders' 4 dimensions, cross-validated among held-out patients
    assert m["radiomics.cv_r2.size"] > 0.3
    assert m["radiomics.cv_r2.decoy"] < 0.1
    assert m["radiomics.program_precision"] == 1.0 and "size" in res.details["radiomics"]["recovery"]["found"]
    assert m["oracle.probe_r2.primary"] > m["oracle.probe_r2.decoy"] + 0.3
    assert m["radiomics.cca1"] > 0.5


def test_untrained_generator_is_far_from_real(result):
    res, _ = result
    m = res.metrics
    assert m["gan.frechet"] > m["gan.frechet_ref"]
    assert set(res.strips) == set(PROGRAMS) and res.strips["size"].shape == (3, 1, S, S)


def test_phenotype_metrics_of_generated_and_real_images(result):
    res, _ = result
    m = res.metrics
    # size -> lesion area (mm^2), density -> core attenuation; the decoy takes the largest |rho| of any measure
    for prefix in ("gan.phenotype_rho", "real.phenotype_rho"):
        for key in ("size", "density", "decoy", "linked_min", "linked_mean", "decoy_max_abs"):
            assert np.isfinite(m[f"{prefix}.{key}"]), f"{prefix}.{key}"
    for key in ("size", "density", "linked_min"):
        assert np.isfinite(m[f"gan.strip_rho.{key}"])
    # real patches of this cohort show both phenotypes; an untrained generator shows neither
    assert m["real.phenotype_rho.size"] > 0.7 and m["real.phenotype_rho.density"] > 0.7
    assert m["real.phenotype_rho.decoy_max_abs"] < 0.5
    assert m["gan.phenotype_rho.linked_mean"] < m["real.phenotype_rho.linked_mean"] - 0.4
    assert m["gan.diversity_ratio"] == pytest.approx((1 - m["gan.ms_ssim"]) / (1 - m["gan.ms_ssim_real"]))


def test_outputs_written(result, tmp_path):
    res, cfg = result
    files = write_outputs(res, tmp_path / "evaluation.json", tmp_path / "report", cfg)
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert doc["metrics"]["cae.cca1"] == pytest.approx(res.metrics["cae.cca1"])
    assert doc["feature_sets"]["radiomics"]["recovery"]["false_links"] == []
    md = files["report_md"].read_text()
    assert "program recall" in md and "figures/map_radiomics.png" in md
    for key in ("fig_cv_r2", "fig_map_cae", "fig_scatter_ae", "fig_traversals", "report_html"):
        assert files[key].stat().st_size > 0


def test_config_from_params_rejects_unknown_keys():
    cfg = EvaluateConfig.from_params({"evaluate": {"n_splits": 3, "radiomics": {"bin_width": 10}}})
    assert cfg.n_splits == 3 and cfg.radiomics.bin_width == 10.0
    with pytest.raises(ConfigError, match="nsplits"):
        EvaluateConfig.from_params({"evaluate": {"nsplits": 3}})
    assert from_dict(EvaluateConfig, {}) == EvaluateConfig()


def test_too_few_patients_is_refused_with_the_minimum(cohort):
    ds, _ = cohort
    with pytest.raises(EvaluationError, match="80 training and 40 held-out.*at least 20 training and 50 held-out"):
        evaluate(ds, cfg=EvaluateConfig(min_held_out_patients=50))
    with pytest.raises(ConfigError, match="reserved"):
        evaluate(ds, {"radiomics": None})


def test_program_head_is_a_serving_linear_map(result):
    from rgops.evaluation.evaluate import fit_program_head
    from rgops.models.program_head import ProgramHead

    res, _ = result
    head = ProgramHead.from_json(res.program_heads["ae"])
    assert head.names == PROGRAMS and head.coef.shape == (3, 4)
    assert set(res.to_json()["program_heads"]) == {"cae", "ae"}
    # raw-scale latents with a known linear map: the folded-back coefficients reproduce it
    rng = np.random.default_rng(1)
    lat = rng.standard_normal((60, 3)) * np.array([10.0, 0.1, 1.0]) + 5.0
    y = np.column_stack([0.2 * lat[:, 0] - 30 * lat[:, 1] + 3, lat[:, 2]])
    known = ProgramHead.from_json(fit_program_head(lat, y, ["a", "b"], EvaluateConfig(alphas=(1e-6,))))
    np.testing.assert_allclose(known(lat), y, atol=1e-3)


@pytest.mark.slow
def test_gan_in_radiomics_space_is_scale_free(cohort):
    import torch

    ds, _ = cohort
    torch.manual_seed(0)
    gan = Generator(GANConfig(image_size=S, n_genes=G, z_dim=8, gene_embed_dim=8, gene_hidden=8, g_channels=8,
                              max_channels=16))
    res = evaluate(ds, gan=gan, cfg=EvaluateConfig(n_splits=4, gan_feature_space="radiomics", diversity_profiles=2,
                                                    samples_per_profile=2, traversal_values=(0.0, 1.0), n_boot=100))
    m = res.metrics
    assert res.info["gan_feature_space"] == "radiomics:whole_patch"
    assert 0 < m["gan.frechet_ref"] < 100  # standardised features: a handful of units, not 1e14
    assert m["gan.frechet"] > m["gan.frechet_ref"]
    assert set(res.strips) == {"pc1", "pc2", "pc3"}  # no ground truth: traverse gene PCs


def test_gates_refuse_an_untrained_cae_evaluated_on_the_protocol(result):
    """An untrained CAE (random features) evaluated on the probe protocol fails the params.yaml floors
    (its held-out interval reaches 0, or it is below radiomics beyond the noise), as a first version too."""
    from pathlib import Path

    from rgops.config import load_params
    from rgops.promotion import PromoteConfig, evaluate_gates

    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml")
    report = evaluate_gates("cae", result[0].metrics, PromoteConfig.from_params(params), validation="passed",
                            validated_digest="d", data_digest="d")
    assert not report.passed
    failed = {(g.gate, g.metric) for g in report.failed}
    assert failed & {("floor", "cae.probe_r2.primary.lo"), ("floor", "cae.probe_diff.radiomics.primary")}, failed


def test_untrained_generator_is_refused_by_the_phenotype_floor(result):
    """The promotion floor on phenotype consistency (params.yaml, from measured null runs) refuses an
    untrained generator, whatever its other numbers."""
    from pathlib import Path

    from rgops.config import load_params

    from rgops.promotion import PromoteConfig, evaluate_gates

    res, _ = result
    cfg = PromoteConfig.from_params(load_params(Path(__file__).resolve().parents[3] / "params.yaml"))
    metric = "gan.phenotype_rho.linked_mean"
    assert metric in cfg.floors and cfg.higher(metric)
    report = evaluate_gates("gan", res.metrics, cfg, validation="passed", validated_digest="d", data_digest="d")
    gate = next(r for r in report.results if r.metric == metric)
    assert not gate.passed and gate.challenger < cfg.floors[metric]
    # the same metrics with the phenotype consistency of real patches would clear that floor
    real = {**res.metrics, metric: res.metrics["real.phenotype_rho.linked_mean"]}
    again = evaluate_gates("gan", real, cfg, validation="passed", validated_digest="d", data_digest="d")
    assert next(r for r in again.results if r.metric == metric).passed
