"""The committed NSCLC Radiogenomics summary, checked against the IDC index when it is installed."""

from __future__ import annotations

import json

import pytest

from rgops.data.idc_reference import REFERENCE_JSON, index_path, load_reference, summarize_collection
from rgops.data.synth import SynthConfig, sample_patients
from rgops.errors import ConfigError


def test_committed_json_matches_the_idc_index() -> None:
    if index_path() is None:
        pytest.fail("idc-index-data is a dependency of rgops and is not installed: run `make install`")
    assert summarize_collection() == json.loads(REFERENCE_JSON.read_text())


def test_reference_describes_the_real_collection() -> None:
    ref = load_reference()
    assert ref["collection_id"] == "nsclc_radiogenomics" and ref["n_patients"] == 211
    assert abs(sum(ref["manufacturers"].values()) - 1) < 1e-3
    assert max(ref["manufacturers"], key=ref["manufacturers"].get) == "GE MEDICAL SYSTEMS"
    assert set(ref["slice_thickness_mm"]["shares"]) <= {"0.625", "1.0", "1.25", "2.0", "2.5", "3.0", "5.0"}
    assert ref["slices_per_series"]["values"] == sorted(ref["slices_per_series"]["values"])


def test_unknown_collection_is_a_config_error() -> None:
    if index_path() is None:
        pytest.fail("idc-index-data is a dependency of rgops and is not installed: run `make install`")
    with pytest.raises(ConfigError, match="no CT series for collection 'no_such_collection'"):
        summarize_collection(collection_id="no_such_collection")


def test_synthetic_sites_follow_the_real_shares() -> None:
    ref = load_reference()
    df = sample_patients(SynthConfig(n_patients=1500, seed=4))
    shares = df["manufacturer"].value_counts(normalize=True)
    assert abs(shares["GE MEDICAL SYSTEMS"] - ref["manufacturers"]["GE MEDICAL SYSTEMS"]) < 0.05
    siemens = ref["manufacturers"]["SIEMENS"] + ref["manufacturers"].get("Siemens Molecular Imaging", 0)
    assert abs(shares["SIEMENS"] - siemens) < 0.05
    thick = df["slice_thickness_mm"].value_counts(normalize=True)
    assert abs(thick[1.25] - ref["slice_thickness_mm"]["shares"]["1.25"]) < 0.05
    prefixes = df["patient_id"].str[:3].value_counts(normalize=True)
    assert abs(prefixes["R01"] - ref["patient_id_prefixes"]["R01"]) < 0.05
