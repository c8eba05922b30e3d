"""Promotion gates (rgops.promotion): pure functions of numbers, no registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from rgops.config import load_params
from rgops.errors import ConfigError
from rgops.promotion import PromoteConfig, evaluate_gates

CFG = PromoteConfig(
    approval="auto",
    require_validation=True,
    floors={"cae.cv_r2.mean": 0.0, "gan.frechet": 100.0},
    tolerance={"cae.cv_r2.mean": 0.05, "gan.frechet": 10.0},
    higher_is_better=("cae.cv_r2.mean",),
    lower_is_better=("gan.frechet",),
)
DIGEST = "d" * 64
#: The gates as the project runs them: params.yaml's promote section (probe-protocol CAE floors).
PROJECT = PromoteConfig.from_params(load_params(Path(__file__).resolve().parents[2] / "params.yaml"))
VALID = dict(validation="passed", validated_digest=DIGEST, data_digest=DIGEST)


def test_config_rejects_undirected_metric_and_negative_tolerance():
    with pytest.raises(ConfigError, match="cae.other.*neither"):
        PromoteConfig(floors={"cae.other": 1.0})
    with pytest.raises(ConfigError, match="expected >= 0"):
        PromoteConfig(tolerance={"gan.frechet": -1.0}, lower_is_better=("gan.frechet",))
    with pytest.raises(ConfigError, match="unknown key"):
        PromoteConfig.from_params({"promote": {"floor": {}}})


def test_gates_floor_and_champion_tolerance_name_both_numbers():
    ok = evaluate_gates("cae", {"cae.cv_r2.mean": 0.3}, CFG, champion={"cae.cv_r2.mean": 0.32},
                        champion_version="1", validation="passed", validated_digest=DIGEST, data_digest=DIGEST)
    assert ok.passed and [r.gate for r in ok.results] == ["data_validation", "floor", "vs_champion"]
    worse = evaluate_gates("cae", {"cae.cv_r2.mean": 0.2}, CFG, champion={"cae.cv_r2.mean": 0.32},
                           champion_version="1", validation="passed", validated_digest=DIGEST, data_digest=DIGEST)
    assert not worse.passed
    assert worse.failed[0].gate == "vs_champion"
    assert "challenger 0.2" in worse.summary() and "champion 1 0.32" in worse.summary()
    low = evaluate_gates("gan", {"gan.frechet": 150.0}, CFG, validation="passed",
                         validated_digest=DIGEST, data_digest=DIGEST)
    assert [r.metric for r in low.failed] == ["gan.frechet"] and "150" in low.summary() and "<= 100" in low.summary()
    missing = evaluate_gates("gan", {}, CFG, validation="passed", validated_digest=DIGEST, data_digest=DIGEST)
    assert not missing.passed and "no finite value" in missing.summary()


def test_gates_validation_must_match_trained_data():
    failed = evaluate_gates("cae", {"cae.cv_r2.mean": 0.3}, CFG, validation="failed",
                            validated_digest=DIGEST, data_digest=DIGEST)
    assert failed.failed[0].gate == "data_validation" and "failed" in failed.summary()
    other = evaluate_gates("cae", {"cae.cv_r2.mean": 0.3}, CFG, validation="passed",
                           validated_digest="e" * 64, data_digest=DIGEST)
    assert not other.passed and "eeeeeeeeeeee" in other.summary()


def test_gates_refuse_comparison_across_data_versions():
    r = evaluate_gates("cae", {"cae.cv_r2.mean": 0.9}, CFG, champion={"cae.cv_r2.mean": 0.1}, champion_version="3",
                       validation="passed", validated_digest=DIGEST, data_digest=DIGEST,
                       champion_data_digest="f" * 64)
    assert not r.passed and "same held-out split" in r.summary()
    assert "| vs_champion | cae.cv_r2.mean | 0.9 | 0.1 | FAIL |" in r.to_markdown()



def test_project_floors_are_the_probe_protocol():
    assert PROJECT.floors["cae.probe_r2.primary.lo"] == 0.0
    assert PROJECT.floors["cae.probe_diff.radiomics.primary"] == -0.1
    assert PROJECT.higher("cae.probe_r2.primary.lo") and PROJECT.higher("gan.cond_consistency")


def test_cae_whose_held_out_interval_includes_zero_is_refused_first_version_too():
    # The null run of params.yaml: primary -0.03 [-0.10, 0.01]; no champion yet.
    metrics = {"cae.probe_r2.primary": -0.03, "cae.probe_r2.primary.lo": -0.10,
               "cae.probe_diff.radiomics.primary": 0.05}
    report = evaluate_gates("cae", metrics, PROJECT, **VALID)
    assert not report.passed and report.champion_version is None
    (failed,) = report.failed
    assert (failed.gate, failed.metric, failed.challenger, failed.reference) == (
        "floor", "cae.probe_r2.primary.lo", -0.10, 0.0)
    assert "gate floor[cae.probe_r2.primary.lo]: challenger -0.1, required >= 0" in report.summary()


def test_cae_clearly_below_radiomics_is_refused():
    # the bench CAE: 0.128 below radiomics, beyond the noise band
    metrics = {"cae.probe_r2.primary": 0.53, "cae.probe_r2.primary.lo": 0.51,
               "cae.probe_diff.radiomics.primary": -0.128}
    report = evaluate_gates("cae", metrics, PROJECT, **VALID)
    assert [r.metric for r in report.failed] == ["cae.probe_diff.radiomics.primary"]
    assert "gate floor[cae.probe_diff.radiomics.primary]: challenger -0.128, required >= -0.1" in report.summary()
    within_noise = {**metrics, "cae.probe_diff.radiomics.primary": -0.058}  # the demo CAE
    assert evaluate_gates("cae", within_noise, PROJECT, **VALID).passed


def test_untrained_gan_is_refused():
    # an untrained demo generator's numbers (null runs: phenotype consistency 0.15-0.22)
    metrics = {"gan.cond_consistency": -0.05, "gan.frechet": 40.0, "gan.phenotype_rho.linked_mean": 0.16,
               "gan.ground_truth": 1.0}
    report = evaluate_gates("gan", metrics, PROJECT, **VALID)
    failed = {f.metric: f for f in report.failed}
    assert set(failed) == {"gan.cond_consistency", "gan.phenotype_rho.linked_mean"}
    assert (failed["gan.cond_consistency"].challenger, failed["gan.cond_consistency"].reference) == (-0.05, 0.1)
    assert "gate floor[gan.cond_consistency]: challenger -0.05, required >= 0.1" in report.summary()
    assert "| floor | gan.cond_consistency | -0.05 | 0.1 | FAIL |" in report.to_markdown()
    assert "gate floor[gan.phenotype_rho.linked_mean]: challenger 0.16, required >= 0.35" in report.summary()


def test_phenotype_floor_is_not_applied_without_ground_truth_but_a_missing_flag_refuses():
    """On site data (no ground truth) the phenotype consistency cannot be measured: the floor is
    reported as such and the other gates decide; without the flag, a missing metric still refuses."""
    good = {"gan.cond_consistency": 0.3, "gan.frechet": 20.0}
    site = evaluate_gates("gan", {**good, "gan.ground_truth": 0.0}, PROJECT, **VALID)
    assert site.passed, site.summary()
    assert any("not measurable on this cohort" in r.detail for r in site.results)
    unknown = evaluate_gates("gan", good, PROJECT, **VALID)
    assert [f.metric for f in unknown.failed] == ["gan.phenotype_rho.linked_mean"]
    synthetic = evaluate_gates("gan", {**good, "gan.ground_truth": 1.0}, PROJECT, **VALID)
    assert [f.metric for f in synthetic.failed] == ["gan.phenotype_rho.linked_mean"]


def test_challenger_worse_than_champion_beyond_tolerance_names_both_numbers():
    metrics = {"cae.probe_r2.primary": 0.30, "cae.probe_r2.primary.lo": 0.15,
               "cae.probe_diff.radiomics.primary": 0.1}
    report = evaluate_gates("cae", metrics, PROJECT, champion={"cae.probe_r2.primary": 0.49},
                            champion_version="4", **VALID)
    assert [r.gate for r in report.failed] == ["vs_champion"]
    assert "challenger 0.3, champion 4 0.49, required >= 0.39 (tolerance 0.1)" in report.summary()
