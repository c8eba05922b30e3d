"""The synthetic cohort generator: DICOM read back, SEG, tables, PHI, determinism, ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID, CTImageStorage, SegmentationStorage

from rgops.data.synth import (
    CLINICAL_COLUMNS,
    DECOYS,
    IMAGING_LINKED,
    MARKERS,
    PHENOTYPE_DRIVER,
    PHENOTYPES,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PROGRAMS,
    SynthConfig,
    gene_modules,
    generate_cohort,
    sample_clinical,
    sample_expression,
    sample_patients,
    synth_config,
)
from rgops.errors import CohortError, ConfigError


def _patients(cohort: Path) -> list[Path]:
    return sorted(p for p in (cohort / "ct").iterdir() if p.is_dir())


def _series(patient: Path) -> tuple[Path, list[pydicom.Dataset]]:
    (series_dir,) = [d for d in patient.iterdir() if d.is_dir() and d.name != "seg"]
    slices = [pydicom.dcmread(f) for f in sorted(series_dir.glob("*.dcm"))]
    return series_dir, slices


def _seg(patient: Path) -> hd.seg.Segmentation:
    (path,) = sorted((patient / "seg").glob("*.dcm"))
    return hd.seg.segread(path)


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    X = np.c_[np.ones(len(x)), x]
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(1 - ((y - X @ beta) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def test_cohort_layout_follows_the_contract(tiny_cohort: Path) -> None:
    meta = json.loads((tiny_cohort / "cohort.json").read_text())
    assert meta["format"] == "rgops-cohort/1" and meta["n_patients"] == 8 and meta["seed"] == 7
    patients = _patients(tiny_cohort)
    assert len(patients) == 8
    for patient in patients:
        series_dir, slices = _series(patient)
        assert series_dir.name == slices[0].SeriesInstanceUID
        assert {ds.PatientID for ds in slices} == {patient.name}
        assert len(list((patient / "seg").glob("*.dcm"))) == 1
    truth = tiny_cohort.with_name(tiny_cohort.name + "-truth")
    assert (truth / "ground_truth.json").is_file() and (truth / "patients.csv").is_file()
    assert not any(p.name in ("ground_truth.json", "patients.csv") for p in tiny_cohort.rglob("*"))


def test_ct_slices_are_valid_ct_with_plausible_hu(tiny_cohort: Path) -> None:
    signed_seen = set()
    for patient in _patients(tiny_cohort):
        series_dir, slices = _series(patient)
        uids = [ds.SOPInstanceUID for ds in slices]
        assert len(set(uids)) == len(uids)
        by_instance = sorted(slices, key=lambda ds: ds.InstanceNumber)
        assert [ds.InstanceNumber for ds in by_instance] == list(range(1, len(slices) + 1))
        names_in_slice_order = [f.name for f in sorted(series_dir.glob("*.dcm"),
                                                       key=lambda f: pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)]
        assert names_in_slice_order != sorted(names_in_slice_order), "file names must not sort in slice order"
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in by_instance])
        assert np.allclose(np.diff(z), -float(slices[0].SliceThickness))
        for ds in slices:
            assert ds.SOPClassUID == CTImageStorage and ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
            for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
                assert UID(uid).is_valid
            assert ds.Rows == ds.Columns == 128 and [float(v) for v in ds.PixelSpacing] == [250 / 128] * 2
            assert ds.Manufacturer and ds.ConvolutionKernel and float(ds.KVP) == 120
            assert ds.BitsAllocated == 16 and ds.RescaleType == "HU"
        signed_seen.add(int(slices[0].PixelRepresentation))
        hu = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in by_instance])
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert np.median(hu[:, :8, :8]) < -950  # air in the corners
        assert np.percentile(hu, 99.9) > 300  # bone (spine)
        centre_row = hu[len(hu) // 2, 64]
        assert (centre_row < -700).sum() > 20 and (np.abs(centre_row - 40) < 60).sum() > 10  # lungs and soft tissue
    assert signed_seen <= {0, 1}


def test_seg_references_the_series_and_covers_only_tumour_slices(tiny_cohort: Path) -> None:
    partial = 0
    for patient in _patients(tiny_cohort):
        _, slices = _series(patient)
        seg = _seg(patient)
        assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Tumor"]
        by_uid = {ds.SOPInstanceUID: ds for ds in slices}
        (ref_series,) = seg.ReferencedSeriesSequence
        assert ref_series.SeriesInstanceUID == slices[0].SeriesInstanceUID
        assert {item.ReferencedSOPInstanceUID for item in ref_series.ReferencedInstanceSequence} == set(by_uid)
        ordered = sorted(by_uid, key=lambda u: by_uid[u].InstanceNumber)
        masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered, segment_numbers=[1],
                                                  ignore_spatial_locations=True)[..., 0].astype(bool)
        on = masks.any(axis=(1, 2))
        assert seg.NumberOfFrames == on.sum() >= 1  # one frame per tumour slice, none empty
        partial += int(on.sum() < len(on))
        assert np.ptp(np.flatnonzero(on)) + 1 == on.sum()  # contiguous in z
        hu = np.stack([apply_modality_lut(by_uid[u].pixel_array, by_uid[u]) for u in ordered])
        k = int(masks.sum(axis=(1, 2)).argmax())
        inside = hu[k][masks[k]]
        from scipy import ndimage

        ring = ndimage.binary_dilation(masks[k], iterations=3) & ~masks[k]
        assert inside.max() > -200, f"{patient.name}: no solid tumour where the SEG says"
        assert inside.mean() > hu[k][ring].mean() + 150
    assert partial >= 4, "the SEG should cover only the tumour slices, not whole series"


def test_segmented_size_follows_truth_diameter(tiny_cohort: Path) -> None:
    truth = pd.read_csv(tiny_cohort.with_name(tiny_cohort.name + "-truth") / "patients.csv").set_index("patient_id")
    measured = {}
    for patient in _patients(tiny_cohort):
        seg = _seg(patient)
        area = seg.pixel_array.reshape(seg.NumberOfFrames, -1).sum(axis=1).max() if seg.NumberOfFrames > 1 else \
            seg.pixel_array.sum()
        measured[patient.name] = 2 * np.sqrt(area * (250 / 128) ** 2 / np.pi)
    m = pd.Series(measured)
    rho = m.rank().corr(truth.loc[m.index, "diameter_mm"].rank())
    assert rho > 0.6, f"segmented size vs truth diameter: Spearman {rho:.2f}"


def test_genes_table_is_geo_style_non_negative_with_a_few_missing(tiny_cohort: Path) -> None:
    genes = pd.read_csv(tiny_cohort / "genes.tsv", sep="\t")
    clinical = pd.read_csv(tiny_cohort / "clinical.csv")
    assert genes.columns[0] == "gene_symbol"
    assert genes.shape == (200, 9)
    assert list(genes.columns[1:]) == list(clinical["patient_id"])
    assert set(genes.columns[1:]) == {p.name for p in _patients(tiny_cohort)}
    assert genes["gene_symbol"].is_unique
    values = genes.iloc[:, 1:]
    n_missing = int(values.isna().sum().sum())
    assert 1 <= n_missing <= 10
    assert np.nanmin(values.to_numpy(dtype=float)) >= 0
    assert {"MKI67", "TOP2A", "CA9", "VEGFA", "VIM", "SNAI2", "EGFR", "DUSP6", "CD8A", "GZMB", "ISG15",
            "IFIT1"} <= set(genes["gene_symbol"])


def test_gene_list_scales_to_20000_unique_symbols() -> None:
    genes, modules = gene_modules(SynthConfig(n_genes=20000))
    assert len(genes) == len(set(genes)) == 20000
    assert all(len(v) == 40 for v in modules.values())
    assert modules["proliferation"][:2] == ["MKI67", "TOP2A"]


def test_module_genes_track_their_program_and_others_do_not() -> None:
    config = SynthConfig(n_patients=200, seed=5, n_genes=400, genes_per_module=12, missing_fraction=0.0)
    patients = sample_patients(config)
    z = patients[list(PROGRAMS)].to_numpy()
    table = sample_expression(config, z, list(patients["patient_id"])).set_index("gene_symbol")
    logx = np.log2(table.to_numpy() + 1)
    _, modules = gene_modules(config)
    in_module = {g for genes in modules.values() for g in genes}
    for k, program in enumerate(PROGRAMS):
        rows = [table.index.get_loc(g) for g in modules[program]]
        r = np.array([abs(np.corrcoef(logx[i], z[:, k])[0, 1]) for i in rows])
        assert r.mean() > 0.6, f"{program} module genes: mean |r| {r.mean():.2f}"
        first = np.corrcoef(logx[rows[0]], z[:, k])[0, 1]
        assert first > 0.5, f"{MARKERS[program][0]} must rise with {program}"
    others = [i for i, g in enumerate(table.index) if g not in in_module]
    r_other = np.abs([[np.corrcoef(logx[i], z[:, k])[0, 1] for k in range(len(PROGRAMS))] for i in others])
    assert r_other.mean() < 0.1


def test_phenotypes_are_recoverable_from_imaging_programs_not_decoys() -> None:
    df = sample_patients(SynthConfig(n_patients=300, seed=11))
    for phenotype in PHENOTYPES:
        y = df[phenotype].to_numpy()
        r2_all = _r2(df[list(PROGRAMS)].to_numpy(), y)
        r2_driver = _r2(df[[PHENOTYPE_DRIVER[phenotype]]].to_numpy(), y)
        r2_decoys = _r2(df[list(DECOYS)].to_numpy(), y)
        assert 0.75 < r2_all < 0.99, f"{phenotype}: R^2 on programs {r2_all:.3f}"
        assert r2_driver > 0.7, f"{phenotype}: R^2 on its driver {r2_driver:.3f}"
        assert r2_decoys < 0.05, f"{phenotype}: R^2 on decoys {r2_decoys:.3f}"
    assert set(PHENOTYPE_DRIVER.values()) == set(IMAGING_LINKED)


def test_ground_truth_files(tiny_cohort: Path) -> None:
    truth = tiny_cohort.with_name(tiny_cohort.name + "-truth")
    gt = json.loads((truth / "ground_truth.json").read_text())
    assert gt["programs"] == list(PROGRAMS) and gt["decoys"] == list(DECOYS)
    assert gt["imaging_linked"] == list(IMAGING_LINKED) and gt["phenotypes"] == PHENOTYPE_DRIVER
    genes = set(pd.read_csv(tiny_cohort / "genes.tsv", sep="\t")["gene_symbol"])
    assert all(len(v) == 12 and set(v) <= genes for v in gt["modules"].values())
    table = pd.read_csv(truth / "patients.csv")
    assert list(table.columns) == ["patient_id", *PROGRAMS, *PHENOTYPES, "site"]
    assert sorted(table["patient_id"]) == [p.name for p in _patients(tiny_cohort)]


def test_clinical_table_and_its_link_to_programs(tiny_cohort: Path) -> None:
    clinical = pd.read_csv(tiny_cohort / "clinical.csv")
    assert tuple(clinical.columns) == CLINICAL_COLUMNS and len(clinical) == 8
    assert set(clinical["smoking_status"]) <= {"never", "former", "current"}
    assert set(clinical["histology"]) <= {"adenocarcinoma", "squamous cell carcinoma", "NSCLC NOS"}
    assert set(clinical["egfr_status"]) | set(clinical["kras_status"]) <= {"mutant", "wildtype", "unknown"}
    assert (clinical.loc[clinical["smoking_status"] == "never", "pack_years"] == 0).all()
    assert set(clinical["event"]) <= {0, 1} and (clinical["survival_months"] > 0).all()

    config = SynthConfig(n_patients=600, seed=2)
    patients = sample_patients(config)
    big = sample_clinical(config, patients)
    known = big["egfr_status"] != "unknown"
    high = patients["egfr_signalling"] > 0.5
    low = patients["egfr_signalling"] < -0.5
    rate = lambda sel: (big.loc[sel & known, "egfr_status"] == "mutant").mean()  # noqa: E731
    assert rate(high) > rate(low) + 0.15


def test_headers_carry_phi_and_truth_does_not(tiny_cohort: Path) -> None:
    truth = tiny_cohort.with_name(tiny_cohort.name + "-truth")
    truth_text = "".join(p.read_text() for p in truth.iterdir())
    for patient in _patients(tiny_cohort):
        _, slices = _series(patient)
        ds = slices[0]
        last, first = str(ds.PatientName).split("^")[:2]
        assert last and first and len(ds.PatientBirthDate) == 8 and ds.PatientSex in ("M", "F")
        assert ds.PatientAge.endswith("Y") and ds.AccessionNumber and ds.StudyID and ds.StudyDate
        assert ds.InstitutionName and ds.InstitutionAddress and ds.ReferringPhysicianName and ds.OperatorsName
        assert f"{first} {last}" in ds.ImageComments and f"{first} {last}" in ds.PatientComments
        mrn = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x01].value
        assert mrn and mrn in str(ds.OtherPatientIDs) and mrn in ds.ImageComments
        assert str(ds.PatientName) == str(pydicom.dcmread(next((patient / "seg").glob("*.dcm"))).PatientName)
        for secret in (f"{first} {last}", mrn, ds.AccessionNumber, ds.PatientBirthDate):
            assert secret not in truth_text


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path, make_cohort) -> None:
    small = dict(n_patients=2, image_size=64, max_slices=10)
    a = make_cohort(tmp_path / "a", **small)
    b = make_cohort(tmp_path / "b", **small)
    c = make_cohort(tmp_path / "c", **small, seed=8)

    def files(root: Path) -> dict[str, bytes]:
        out = {}
        for base in (root, root.with_name(root.name + "-truth")):
            out.update({str(p.relative_to(base.parent)).replace(base.name, "X", 1): p.read_bytes()
                        for p in base.rglob("*") if p.is_file()})
        return out

    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    pix = lambda root: [pydicom.dcmread(f).PixelData for f in sorted((root / "ct").rglob("*.dcm"))]  # noqa: E731
    assert pix(a) != pix(c)
    assert (a / "genes.tsv").read_bytes() != (c / "genes.tsv").read_bytes()


def test_patients_do_not_change_when_the_cohort_grows() -> None:
    small = sample_patients(SynthConfig(n_patients=5, seed=3))
    large = sample_patients(SynthConfig(n_patients=12, seed=3))
    pd.testing.assert_frame_equal(small, large.iloc[:5])


def test_refuses_non_empty_output_unless_forced_on_a_cohort(tmp_path: Path) -> None:
    config = SynthConfig(n_patients=1, image_size=64, n_genes=240, genes_per_module=12, min_slices=4, max_slices=8,
                         slice_thickness_mm=(5.0,))
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not a cohort")
    with pytest.raises(CohortError, match="not empty"):
        generate_cohort(other, config)
    with pytest.raises(CohortError, match="no cohort.json"):
        generate_cohort(other, config, overwrite=True)
    assert (other / "keep.txt").is_file()
    out = tmp_path / "cohort"
    calls: list[tuple[int, int]] = []
    first = generate_cohort(out, config, progress=lambda done, total: calls.append((done, total)))
    assert first["patients"] == 1 and first["instances"] >= 2 and calls == [(1, 1)]
    assert not any(p.name.startswith(".rgops-synth") for p in tmp_path.rglob("*"))
    with pytest.raises(CohortError):
        generate_cohort(out, config)
    assert generate_cohort(out, config, overwrite=True)["patients"] == 1
    (out / "cohort.json").unlink()
    (out / ".rgops-synth-in-progress").touch()  # a run that stopped half-way may be replaced
    assert generate_cohort(out, config, overwrite=True)["patients"] == 1
    with pytest.raises(CohortError, match="inside the cohort"):
        generate_cohort(tmp_path / "x", config, truth_out=tmp_path / "x" / "truth")


def test_config_rejects_bad_values_and_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_patients: got 0"):
        SynthConfig(n_patients=0)
    with pytest.raises(ConfigError, match="n_genes"):
        SynthConfig(n_genes=10)
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  n_patients: 3\n  colour: blue\n")
    with pytest.raises(ConfigError, match="colour"):
        synth_config(params)
    params.write_text("synth:\n  n_patients: 3\n  slice_thickness_mm: [1.25, 2.5]\n")
    config = synth_config(params, seed=9, n_genes=None)
    assert (config.n_patients, config.seed, config.slice_thickness_mm) == (3, 9, (1.25, 2.5))


def test_repository_params_synth_section_is_valid() -> None:
    root = Path(__file__).resolve().parents[3]
    config = synth_config(root / "params.yaml")
    assert config.n_patients >= 100 and config.image_size == 256
