"""Runner: corrupted cohorts are caught by the expected expectation, with the offending id.

The session's tiny synthetic cohort (8 patients) is validated clean, then copied and corrupted
once per rule on a different patient or gene, so one validation run checks every rule and each
rule's test checks that the right expectation names the right id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from rgops.config import load_params
from rgops.data.deid import deidentify
from rgops.data.pseudonym import load_key, pseudonymize
from rgops.errors import CohortError, DatasetError
from rgops.validation import ValidateConfig, validate_cohort, validate_datasets, write_json
from rgops.validation.runner import validate_tables

N_PATIENTS = 8  # tests/conftest.py TINY_SYNTH
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def config() -> ValidateConfig:
    """The repository's own thresholds (params.yaml ``validate:``)."""
    return ValidateConfig.from_params(load_params(REPO / "params.yaml"))


def _patients(cohort: Path) -> list[str]:
    return sorted(p.name for p in (cohort / "ct").iterdir())


def _series_dir(cohort: Path, pid: str) -> Path:
    return next(d for d in (cohort / "ct" / pid).iterdir() if d.is_dir() and d.name != "seg")


def _rewrite(folder: Path, edit) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds = edit(ds) or ds
        ds.save_as(f, enforce_file_format=True)


def _corrupt(cohort: Path) -> dict[str, str]:
    """Apply one corruption per rule; return rule -> the offending source id or gene symbol."""
    p = _patients(cohort)
    key = load_key()
    # wrong modality
    _rewrite(_series_dir(cohort, p[0]), lambda ds: setattr(ds, "Modality", "MR"))
    # missing SEG
    shutil.rmtree(cohort / "ct" / p[1] / "seg")
    # SEG referencing another patient's series
    other_series = pydicom.dcmread(next(_series_dir(cohort, p[3]).glob("*.dcm")), stop_before_pixels=True)
    def point_elsewhere(ds):
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = other_series.SeriesInstanceUID
    _rewrite(cohort / "ct" / p[2] / "seg", point_elsewhere)
    # out-of-range pixel spacing
    _rewrite(_series_dir(cohort, p[3]), lambda ds: setattr(ds, "PixelSpacing", [5.0, 5.0]))
    # de-identified headers with a patient name left behind
    def deid_leaky(ds):
        clean = deidentify(ds, key)
        clean.PatientName = "Doe^Jane"
        return clean
    _rewrite(_series_dir(cohort, p[4]), deid_leaky)
    _rewrite(cohort / "ct" / p[4] / "seg", lambda ds: deidentify(ds, key))
    # gene table: NaN-heavy gene, non-numeric cell, duplicate sample id, patient without genes
    genes = pd.read_csv(cohort / "genes.tsv", sep="\t", dtype=str, keep_default_na=False)
    nan_gene, text_gene = genes["gene_symbol"].iloc[5], genes["gene_symbol"].iloc[7]
    genes.iloc[5, 1: 1 + int(0.6 * N_PATIENTS)] = ""
    genes.loc[7, p[5]] = "high"
    genes = genes.drop(columns=[p[0]])
    header = [c if c != p[6] else p[7] for c in genes.columns]  # p[6]'s sample relabelled as p[7]
    genes.to_csv(cohort / "genes.tsv", sep="\t", index=False, header=header)
    # clinical: out-of-vocabulary smoking status
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str, keep_default_na=False)
    clinical.loc[clinical["patient_id"] == p[5], "smoking_status"] = "sometimes"
    clinical.to_csv(cohort / "clinical.csv", index=False)
    return {"wrong_modality": p[0], "missing_seg": p[1], "seg_other_series": p[2], "spacing": p[3],
            "leftover_name": p[4], "non_numeric_sample": p[5], "duplicate_sample": p[7], "no_genes": p[0],
            "vocabulary": p[5], "nan_gene": nan_gene, "non_numeric_gene": text_gene}


@pytest.fixture(scope="module")
def corrupted(tiny_cohort, config, tmp_path_factory):
    bad = tmp_path_factory.mktemp("corrupted") / "cohort"
    shutil.copytree(tiny_cohort, bad)
    offenders = _corrupt(bad)
    report = validate_cohort(bad, config)
    return report, offenders


def test_clean_synthetic_cohort_passes(tiny_cohort, config):
    report = validate_cohort(tiny_cohort, config)
    assert report.passed, report.summary()
    assert not report.warnings, report.summary()
    assert report.tables["imaging"] > N_PATIENTS and report.tables["linkage"] == N_PATIENTS
    assert "PASSED" in report.summary() and "PASSED" in report.to_markdown()


# rule -> (table, column, expectation type, severity, offender is a patient)
RULES = {
    "wrong_modality": ("imaging", "modality", "expect_column_values_to_be_in_set", "critical", True),
    "missing_seg": ("series", "n_seg", "expect_column_values_to_be_in_set", "critical", True),
    "seg_other_series": ("segmentations", "references_own_series", "expect_column_values_to_be_in_set",
                         "critical", True),
    "spacing": ("imaging", "pixel_spacing_min_mm", "expect_column_values_to_be_between", "critical", True),
    "leftover_name": ("imaging", "leftover_identifiers", "expect_column_values_to_be_in_set", "critical", True),
    "non_numeric_sample": ("samples", "n_non_numeric", "expect_column_values_to_be_in_set", "critical", True),
    "non_numeric_gene": ("genes", "n_non_numeric", "expect_column_values_to_be_in_set", "critical", False),
    "duplicate_sample": ("samples", "pseudo_id", "expect_column_values_to_be_unique", "critical", True),
    "no_genes": ("linkage", "has_genes", "expect_column_values_to_be_in_set", "warning", True),
    "nan_gene": ("genes", "missing_fraction", "expect_column_values_to_be_between", "critical", False),
    "vocabulary": ("clinical", "smoking_status", "expect_column_values_to_be_in_set", "critical", True),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_corruption_is_caught_by_its_expectation_with_the_offending_id(corrupted, rule):
    report, offenders = corrupted
    table, column, expectation, severity, is_patient = RULES[rule]
    failed = report.failed(table, column, expectation)
    assert failed, f"{rule}: no failure of {table}.{column} {expectation}\n{report.summary()}"
    outcome = failed[0]
    assert outcome.severity == severity
    want = pseudonymize(offenders[rule], load_key()) if is_patient else offenders[rule]
    assert want in [e["id"] for e in outcome.examples], f"{rule}: {outcome.describe()}"
    line = next(l for l in report.summary().splitlines() if f"{table}.{column}: {expectation}" in l)
    assert want in line
    bucket = report.critical_failures if severity == "critical" else report.warnings
    assert outcome in bucket


def test_corrupted_cohort_fails_and_counts_drops(corrupted):
    report, offenders = corrupted
    assert not report.passed
    key = load_key()
    assert pseudonymize(offenders["no_genes"], key) in report.linkage["no_genes"]
    assert pseudonymize(offenders["missing_seg"], key) in report.linkage["no_segmentation"]
    # 4 of 8 unlinked (dropped sample, no SEG, foreign SEG, relabelled sample): linked fraction 0.5
    linked = report.failed("linkage", "linked")[0]
    assert linked.observed == pytest.approx(0.5) and linked.severity == "critical"


def test_outputs_name_patients_by_pseudonym_only(corrupted, tmp_path):
    report, offenders = corrupted
    out = tmp_path / "report.json"
    write_json(report, out)
    texts = [out.read_text(), report.summary(), report.to_markdown()]
    data = json.loads(texts[0])
    assert data["passed"] is False and data["n_critical_failures"] == len(report.critical_failures)
    for source_id in {v for k, v in offenders.items() if RULES[k][4]}:
        for text in texts:
            assert source_id not in text
    for text in texts:
        assert "Doe^Jane" not in text and "Jane" not in text


def test_warning_is_reported_but_does_not_fail(config):
    linkage = pd.DataFrame({"pseudo_id": [f"P-{i:016x}" for i in range(10)], "has_imaging": True,
                            "has_segmentation": True, "has_genes": [True] * 9 + [False], "has_clinical": True,
                            "linked": [True] * 9 + [False], "drop_reason": [""] * 9 + ["no_genes"]})
    report = validate_tables({"linkage": linkage}, config, "cohort", ("linkage",))
    assert report.passed and len(report.warnings) == 1
    assert report.warnings[0].examples == ({"id": "P-0000000000000009", "value": False},)
    assert report.linkage == {"no_genes": ["P-0000000000000009"]}
    md = report.to_markdown()
    assert "| warning | linkage | has_genes |" in md and "P-0000000000000009" in md


def test_missing_panel_genes_are_named(config):
    genes = pd.DataFrame({"gene_symbol": ["MKI67", "G1", "G2"], "n_non_numeric": 0, "min_value": 1.0,
                          "missing_fraction": 0.0})
    cfg = ValidateConfig(required_genes=("MKI67", "CA9", "EGFR"))
    report = validate_tables({"genes": genes}, cfg, "cohort", ("genes",))
    panel = report.failed("genes", "gene_symbol", "expect_column_distinct_values_to_contain_set")[0]
    assert panel.observed == {"missing": ["CA9", "EGFR"], "n_missing": 2}
    assert [e["id"] for e in panel.examples] == ["CA9", "EGFR"] and not report.passed
    assert "CA9" in report.summary()


def test_a_free_text_value_is_named_by_column_and_pseudonym_never_quoted(config, tmp_path):
    clinical = pd.DataFrame({"pseudo_id": ["P-00000000000000aa", "P-00000000000000bb"], "age": [50.0, 60.0],
                             "sex": ["F", "M"], "smoking_status": ["never", "Jane Roe says never"],
                             "pack_years": [0.0, 10.0],
                             "histology": ["adenocarcinoma", "seen by Dr Jane Roe at St Elsewhere"],
                             "egfr_status": ["wildtype", "mutant"], "kras_status": ["wildtype", "unknown"],
                             "survival_months": [10.0, 20.0], "event": [0.0, 1.0]})
    report = validate_tables({"clinical": clinical}, config, "cohort", ("clinical",))
    (histology,) = report.failed("clinical", "histology")  # a warning
    (smoking,) = report.failed("clinical", "smoking_status")  # critical
    assert histology.examples == smoking.examples == ({"id": "P-00000000000000bb"},)
    write_json(report, tmp_path / "report.json")
    texts = [report.summary(), report.to_markdown(), (tmp_path / "report.json").read_text()]
    for text in texts:
        assert "P-00000000000000bb" in text and "histology" in text and "smoking_status" in text
        assert "Jane" not in text and "Elsewhere" not in text
    from rgops.errors import DataValidationError
    from rgops.validation import require_passed

    with pytest.raises(DataValidationError, match="clinical.smoking_status") as info:
        require_passed(report)
    assert "P-00000000000000bb" in str(info.value) and "Jane" not in str(info.value)


def test_missing_column_is_a_failure_not_a_crash(config):
    clinical = pd.DataFrame({"pseudo_id": ["P-a", "P-b"], "age": [50.0, 60.0]})
    report = validate_tables({"clinical": clinical}, config, "cohort", ("clinical",))
    sex = report.failed("clinical", "sex")
    assert sex and sex[0].error and not report.passed


def test_data_docs_are_written(config, tmp_path):
    clinical = pd.DataFrame({"pseudo_id": ["P-a", "P-a"], "age": [50.0, 60.0], "sex": ["F", "M"],
                             "smoking_status": ["never", "former"], "pack_years": [0.0, 3.0]})
    report = validate_tables({"clinical": clinical}, config, "cohort", ("clinical",), out_dir=tmp_path / "docs")
    assert report.docs == str(tmp_path / "docs" / "index.html")
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert pages
    assert any("P-a" in p.read_text() for p in pages)


def _datasets(root: Path, n: int = 18, size: int = 64, n_genes: int = 8) -> Path:
    rng = np.random.default_rng(0)
    splits = np.array((["train", "train", "train", "val", "test", "train"] * n)[:n])
    genes = rng.standard_normal((n, n_genes))
    train = splits == "train"
    genes = (genes - genes[train].mean(0)) / genes[train].std(0)
    patches = np.clip(rng.normal(0, 0.3, (n, 1, size, size)), -1, 1).astype(np.float32)
    ids = [f"P-{i:016x}" for i in range(n)]
    root.mkdir(parents=True)
    np.save(root / "patches.npy", patches)
    np.save(root / "masks.npy", (patches > 0).astype(np.uint8))
    names = [f"G{j}" for j in range(n_genes)]
    pd.DataFrame(genes.astype(np.float32), columns=names, index=pd.Index(ids, name="pseudo_id")).to_parquet(
        root / "genes.parquet")
    (root / "gene_panel.json").write_text(json.dumps({"genes": names, "mean": [0.0] * n_genes,
                                                      "std": [1.0] * n_genes, "n_train": int(train.sum())}))
    pd.DataFrame({"pseudo_id": ids, "split": splits}).to_parquet(root / "manifest.parquet")
    return root


def test_datasets_clean_passes_and_corruptions_are_caught(config, tmp_path):
    root = _datasets(tmp_path / "ok")
    report = validate_datasets(root, config)
    assert report.passed, report.summary()
    assert report.skipped == ["imaging", "segmentations", "clinical"]

    bad = _datasets(tmp_path / "bad")
    patches = np.load(bad / "patches.npy")
    patches[2, 0, 5, 5] = np.nan
    patches[3] *= 3.0
    np.save(bad / "patches.npy", patches)
    manifest = pd.read_parquet(bad / "manifest.parquet")
    manifest.loc[4, "pseudo_id"] = manifest.loc[0, "pseudo_id"]  # P-0 in train and test
    manifest.to_parquet(bad / "manifest.parquet")
    genes = pd.read_parquet(bad / "genes.parquet")
    genes.index = manifest["pseudo_id"].rename("pseudo_id")
    genes["G1"] = genes["G1"] + 2.0  # not centred on train
    genes.to_parquet(bad / "genes.parquet")
    report = validate_datasets(bad, config)
    assert not report.passed
    assert report.failed("datasets_patches", "n_nonfinite")[0].examples[0]["id"] == "P-0000000000000002"
    assert "P-0000000000000003" in [e["id"] for e in report.failed("datasets_patches", "max_value")[0].examples]
    assert report.failed("datasets_patches", "n_splits_of_patient")[0].examples[0]["id"] == "P-0000000000000000"
    assert report.failed("datasets_genes", "train_mean")[0].examples == ({"id": "G1", "value": pytest.approx(2.0)},)


def test_gene_statistics_are_per_patient_not_per_slice(config, tmp_path):
    """Patch contract v2 repeats a patient's profile on each of its slices: a patient with many slices
    must not pull the training mean away from 0."""
    root = _datasets(tmp_path / "multi")
    manifest = pd.read_parquet(root / "manifest.parquet")
    genes = pd.read_parquet(root / "genes.parquet")
    extra = manifest.index[manifest["split"] == "train"][:1].repeat(30)  # 30 more slices of one patient
    manifest = pd.concat([manifest, manifest.loc[extra]], ignore_index=True)
    genes = pd.concat([genes, genes.iloc[extra]])
    for name, arr in (("patches", np.load(root / "patches.npy")), ("masks", np.load(root / "masks.npy"))):
        np.save(root / f"{name}.npy", np.concatenate([arr, arr[extra]]))
    manifest.to_parquet(root / "manifest.parquet")
    genes.to_parquet(root / "genes.parquet")
    per_row = genes.to_numpy()[(manifest["split"] == "train").to_numpy()].mean(axis=0)
    assert np.abs(per_row).max() > 0.1  # averaged over rows, the repeated patient would fail the suite
    report = validate_datasets(root, config)
    assert report.passed, report.summary()


def test_datasets_folder_missing_files_is_a_typed_error(config, tmp_path):
    with pytest.raises(DatasetError, match="lacks"):
        validate_datasets(tmp_path, config)


def test_gene_train_statistics_count_each_patient_once(config, tmp_path):
    """A patient has several slices (patch contract v2): the train mean is over patients, as the panel
    was fitted, so a patient with many slices does not move it off 0."""
    root = _datasets(tmp_path / "slices")
    manifest = pd.read_parquet(root / "manifest.parquet")
    genes = pd.read_parquet(root / "genes.parquet")
    patches = np.load(root / "patches.npy")
    first = int(np.flatnonzero(manifest["split"].to_numpy() == "train")[0])
    extra = [first] * 12  # 12 more slices of the first training patient, same gene row
    manifest = pd.concat([manifest, manifest.iloc[extra]], ignore_index=True)
    genes = pd.concat([genes, genes.iloc[extra]])
    np.save(root / "patches.npy", np.concatenate([patches, patches[extra]]))
    np.save(root / "masks.npy", (np.load(root / "patches.npy") > 0).astype(np.uint8))
    manifest.to_parquet(root / "manifest.parquet")
    genes.to_parquet(root / "genes.parquet")
    assert abs(genes.iloc[np.flatnonzero(manifest["split"].to_numpy() == "train")].to_numpy().mean(0)).max() > 0.1
    report = validate_datasets(root, config)
    assert report.failed("datasets_genes") == [], report.summary()


@pytest.mark.parametrize("edit", ["drop a cell", "add a cell"])
def test_a_gene_row_with_another_number_of_fields_is_named_by_line(tiny_cohort, config, tmp_path, edit):
    """A short row would count its lost cells as missing; a long one made pandas raise its own error."""
    bad = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, bad)
    lines = (bad / "genes.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] if edit == "drop a cell" else lines[3] + "\t1.5"
    (bad / "genes.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CohortError, match=r"line 4 has \d+ tab-separated field\(s\), the header \d+") as info:
        validate_cohort(bad, config)
    assert not any(pid in str(info.value) for pid in _patients(bad))  # sample ids are source ids
