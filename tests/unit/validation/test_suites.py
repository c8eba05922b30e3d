"""Suites: JSON loading, threshold substitution from params, severity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rgops.config import load_params
from rgops.errors import ConfigError
from rgops.validation.suites import (COHORT_SUITES, DATASETS_SUITES, DEFAULT_SUITE_DIR, ValidateConfig, load_suite,
                                     load_suites, to_gx_suite)

REPO = Path(__file__).resolve().parents[3]


def test_every_suite_file_loads_with_repo_params_and_builds_a_gx_suite():
    cfg = ValidateConfig.from_params(load_params(REPO / "params.yaml"))
    names = tuple(dict.fromkeys(COHORT_SUITES + DATASETS_SUITES))
    assert sorted(p.stem for p in DEFAULT_SUITE_DIR.glob("*.json")) == sorted(names)
    for name, suite in load_suites(names, cfg).items():
        for exp in suite.expectations:
            text = json.dumps(exp["kwargs"])
            assert "$" not in text, f"{name}: placeholder left in {text}"
        gx_suite = to_gx_suite(suite)
        assert [e.severity.value for e in gx_suite.expectations] == [e["meta"]["severity"] for e in suite.expectations]


def test_thresholds_come_from_params():
    cfg = ValidateConfig.from_params({"validate": {"pixel_spacing_mm": [0.5, 0.9], "vocabulary": {"sex": ["X"]}}})
    imaging = load_suite("imaging", cfg)
    between = [e for e in imaging.expectations if e["kwargs"].get("column") == "pixel_spacing_min_mm"
               and e["type"] == "expect_column_values_to_be_between"][0]
    assert (between["kwargs"]["min_value"], between["kwargs"]["max_value"]) == (0.5, 0.9)
    clinical = load_suite("clinical", cfg)
    sex = [e for e in clinical.expectations if e["kwargs"].get("column") == "sex"][0]
    assert sex["kwargs"]["value_set"] == ["X"]


def test_config_rejects_unknown_keys_and_inverted_ranges():
    with pytest.raises(ConfigError, match="unknown key"):
        ValidateConfig.from_params({"validate": {"pixel_spacing": [0.5, 0.9]}})
    with pytest.raises(ConfigError, match="low 2.0 is above high 1.0"):
        ValidateConfig.from_params({"validate": {"pixel_spacing_mm": [2.0, 1.0]}})
    with pytest.raises(ConfigError, match="fraction"):
        ValidateConfig(min_linked_fraction=1.5)


def _write(tmp_path: Path, expectations: list[dict]) -> Path:
    (tmp_path / "t.json").write_text(json.dumps({"name": "t", "meta": {"table": "t", "id_column": "id"},
                                                 "expectations": expectations}))
    return tmp_path


def test_unknown_severity_and_unknown_placeholder_are_refused(tmp_path):
    cfg = ValidateConfig()
    d = _write(tmp_path, [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"},
                           "meta": {"severity": "fatal"}}])
    with pytest.raises(ConfigError, match="severity is 'fatal'"):
        load_suite("t", cfg, d)
    d = _write(tmp_path, [{"type": "expect_column_values_to_be_between",
                           "kwargs": {"column": "a", "min_value": "$no_such.0"}, "meta": {"severity": "warning"}}])
    with pytest.raises(ConfigError, match=r"\$no_such.0 names no validate parameter"):
        load_suite("t", cfg, d)
    with pytest.raises(ConfigError, match="not found"):
        load_suite("absent", cfg, d)
