"""Ingest end to end on a small real-DICOM cohort built in the test (rg_dicom_factory)."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import rg_dicom_factory as f
from typer.testing import CliRunner

from rgops.data.datasets import Datasets
from rgops.data.ingest import IngestConfig, assign_splits, extract_patches, ingest_cohort, ingest_patient
from rgops.data.patch import PatchSpec
from rgops.data.pseudonym import pseudonymize
from rgops.errors import CohortError, ConfigError, SegmentationError

KEY = b"ingest-test-key-0123456789abcdef"
IDS = [f"R07-{i:03d}" for i in range(8)]
# 0-3 complete, 4 without SEG, 5 without genes, 6 genes only (no images), 7 a truncated slice
GENE_IDS = IDS[:5] + IDS[6:]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def build_cohort(root):
    cohort = root / "cohort"
    (cohort / "ct").mkdir(parents=True)
    slices = {}
    for i, pid in enumerate(IDS):
        if i == 6:
            continue
        slices[pid] = f.write_patient(cohort, pid, seed=i, with_seg=(i != 4))
    victim = sorted((cohort / "ct" / IDS[7]).glob("*/*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-300])
    f.write_tables(cohort, GENE_IDS, IDS)
    return cohort, slices


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    cohort, slices = build_cohort(root)
    handler = _Records()
    logger = logging.getLogger("rgops")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        report = ingest_cohort(cohort, root / "datasets", IngestConfig(), key=KEY)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return {"root": root, "cohort": cohort, "out": root / "datasets", "report": report,
            "slices": slices, "log": "\n".join(handler.lines)}


def pid(i: int) -> str:
    return pseudonymize(IDS[i], KEY)


def test_report_counts_every_skip_by_reason(ingested):
    report = ingested["report"]
    assert report.patients_seen == 8 and report.ingested == 4
    assert report.skipped == {"bad_series": [pid(7)], "no_genes": [pid(5)], "no_images": [pid(6)],
                              "no_seg": [pid(4)]}
    on_disk = json.loads((ingested["out"] / "ingest_report.json").read_text())
    assert on_disk["skipped_counts"] == {"bad_series": 1, "no_genes": 1, "no_images": 1, "no_seg": 1}
    assert on_disk["missing_gene_values"] == 1
    for i in (4, 5, 6, 7):
        assert pid(i) in ingested["log"]


def test_datasets_contract(ingested):
    ds = Datasets.load(ingested["out"])
    n = len(ds)
    assert n >= 4 and ds.patches.shape == (n, 1, 64, 64) and ds.patches.dtype == np.float32
    assert ds.patches.min() >= -1.0 and ds.patches.max() <= 1.0
    assert set(np.unique(ds.masks)) == {0, 1}
    m = ds.manifest
    side = np.ceil(2 * np.maximum(m.bbox_r1 - m.bbox_r0, m.bbox_c1 - m.bbox_c0))
    assert (m.crop_side_px == side).all()
    assert sorted(set(m.pseudo_id)) == sorted(pid(i) for i in range(4))
    assert set(m.split) <= {"train", "val", "test"} and (m.split == "train").any()
    assert (m.n_slices == 8).all() and np.allclose(m.pixel_spacing_mm, 0.8)
    # several slices per patient, one split per patient, the largest slice first (rank 0)
    assert m.groupby("pseudo_id")["split"].nunique().max() == 1
    assert (m.groupby("pseudo_id")["slice_rank"].min() == 0).all()
    assert np.allclose(m.mm_per_px, m.crop_side_px * m.pixel_spacing_mm / 64)
    assert ds.spec == IngestConfig().spec() and (ingested["out"] / "patch_spec.json").is_file()
    # train-split gene statistics, over patients: z-scores of the train patients have mean 0
    train = ds.genes[ds.indices("train")]
    first = ~m.iloc[ds.indices("train")].duplicated("pseudo_id").to_numpy()
    assert np.allclose(np.nanmean(train[first], axis=0), 0.0, atol=1e-5)


def test_pseudonyms_link_imaging_genes_and_clinical(ingested):
    out = ingested["out"]
    manifest = pd.read_parquet(out / "manifest.parquet")
    genes = pd.read_parquet(out / "genes.parquet")
    clinical = pd.read_parquet(out / "clinical.parquet")
    panel = json.loads((out / "gene_panel.json").read_text())
    assert list(genes.index) == list(manifest.pseudo_id)
    assert set(manifest.pseudo_id) <= set(clinical.pseudo_id)
    assert len(clinical) == len(IDS) and clinical.age.max() == 90
    raw = pd.read_csv(ingested["cohort"] / "genes.tsv", sep="\t", index_col=0)
    j = panel["genes"].index("TP53")
    x = raw.loc["TP53", IDS[2]]
    expected = (math.log2(x + 1) - panel["mean"][j]) / panel["std"][j]
    assert (genes.loc[[pid(2)], "TP53"].to_numpy() == pytest.approx(expected, rel=1e-5))  # every slice row


def test_instances_table_is_deidentified_and_seg_references_resolve(ingested):
    inst = pd.read_parquet(ingested["out"] / "instances.parquet")
    assert set(inst.modality) == {"CT", "SEG"}
    assert (inst.patient_identity_removed == "YES").all() and (inst.deid_leftovers == 0).all()
    for col in ("sop_instance_uid", "series_uid", "study_uid"):
        assert inst[col].str.startswith("2.25.").all()
    for p, rows in inst.groupby("pseudo_id"):
        ct_series_uids = set(rows[rows.modality == "CT"].series_uid)
        for ref in rows[rows.modality == "SEG"].referenced_series_uid:
            assert ref in ct_series_uids
    assert inst[inst.modality == "CT"].rescale_intercept.eq(-1024).all()


def test_no_planted_identifier_in_any_output_byte_or_log(ingested):
    needles = set(f.PLANTED_TOKENS) | set(IDS)
    for series in ingested["slices"].values():
        needles |= {str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)}
        needles |= {str(ds.SOPInstanceUID) for ds in series}
    raw_slice = next((ingested["cohort"] / "ct" / IDS[0]).glob("*/*.dcm")).read_bytes().lower()
    assert sum(s.lower().encode() in raw_slice for s in needles) >= 15  # the search does find PHI
    files = [p for p in ingested["out"].rglob("*") if p.is_file()]
    assert len(files) == 10  # the 8 data files, patch_spec.json and cohort_origin.json
    blobs = {p.name: p.read_bytes().lower() for p in files}
    for name in ("manifest.parquet", "clinical.parquet", "instances.parquet", "genes.parquet"):
        blobs[name + " (decoded)"] = pd.read_parquet(ingested["out"] / name).to_csv().lower().encode()
    blobs["log"] = ingested["log"].lower().encode()
    leaks = [(n, s) for s in needles for n, b in blobs.items() if s.lower().encode() in b]
    assert leaks == []


def test_shuffled_series_gives_the_same_patch(ingested, tmp_path):
    src = ingested["cohort"] / "ct" / IDS[1]
    first = ingest_patient(src, IngestConfig(), KEY)
    copy = tmp_path / IDS[1]
    shutil.copytree(src, copy)
    files = sorted(copy.glob("*/img*.dcm"))
    names = [p.name for p in files]
    for p in files:
        p.rename(p.with_name("tmp_" + p.name))
    for p, new in zip(sorted(copy.glob("*/tmp_*.dcm")), reversed(names)):
        p.rename(p.with_name("z" + new))
    again = ingest_patient(copy, IngestConfig(), KEY)
    assert first.ok and again.ok
    assert np.array_equal(first.patch, again.patch) and np.array_equal(first.mask, again.mask)
    assert first.records == again.records


def test_ingest_is_deterministic(ingested, tmp_path):
    report = ingest_cohort(ingested["cohort"], tmp_path / "again", IngestConfig(), key=KEY)
    assert report.skipped == ingested["report"].skipped
    for name in ("patches.npy", "masks.npy", "gene_panel.json"):
        assert (tmp_path / "again" / name).read_bytes() == (ingested["out"] / name).read_bytes()
    for name in ("manifest.parquet", "genes.parquet", "instances.parquet", "clinical.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again" / name),
                                      pd.read_parquet(ingested["out"] / name))


def test_patch_contract_on_a_known_box():
    hu = np.full((3, 40, 40), -500.0, dtype=np.float32)
    mask = np.zeros_like(hu, dtype=np.uint8)
    mask[1, 2:8, 30:40] = 1           # 6 x 10 box touching the right edge, largest on slice 1
    mask[0, 20:22, 20:22] = 1          # 4 px < 30% of 60 px: not used
    hu[1][mask[1] > 0] = 2000.0        # above the window: clipped to 1
    patches, pmasks, infos = extract_patches(hu, mask, 0.5, IngestConfig(patch_size=128).spec())
    assert patches.shape == pmasks.shape == (1, 1, 128, 128) and patches.dtype == np.float32
    patch, pmask, info = patches[0], pmasks[0], infos[0]
    assert info["slice_index"] == 1 and info["crop_side_px"] == 20 and info["mm_per_px"] == pytest.approx(20 * 0.5 / 128)
    assert (info["bbox_r0"], info["bbox_c0"], info["bbox_r1"], info["bbox_c1"]) == (2, 30, 8, 40)
    assert patch.max() == pytest.approx(1.0) and patch.min() == pytest.approx(-1.0)  # -1000 padding
    assert patch[0, 64, 120] == pytest.approx(-1.0)  # right of the image: padded air
    assert patch[0, 5, 30] == pytest.approx(-1.0)    # rows above the image: padded air
    assert pmask.sum() > 0 and pmask[0, 64, 64] == 1  # tumour centred
    with pytest.raises(SegmentationError, match="empty"):
        extract_patches(hu, np.zeros_like(mask), 0.5, PatchSpec())


def test_patches_are_cut_where_mask_gt_0_whatever_the_mask_dtype():
    """Bool and unsigned masks are counted with count_nonzero, others compared with 0: same patches."""
    rng = np.random.default_rng(7)
    hu = rng.normal(0, 300, size=(5, 48, 48)).astype(np.float32)
    signed = np.zeros(hu.shape, dtype=np.int8)
    signed[1:4, 10:30, 12:26] = rng.integers(-1, 3, size=(3, 20, 14))  # -1 is not tumour
    tumour = signed > 0
    spec = IngestConfig(patch_size=32).spec()
    want = extract_patches(hu, tumour.astype(np.uint8), 0.7, spec)
    for mask in (tumour, tumour.astype(np.uint8) * 255, tumour.astype(np.uint16), signed, signed.astype(np.float32)):
        got = extract_patches(hu, mask, 0.7, spec)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2], mask.dtype


def test_splits_deterministic_and_all_populated():
    ids = [f"P-{i:016x}" for i in range(5)]
    a = assign_splits(ids, (0.7, 0.15, 0.15), seed=3)
    assert a == assign_splits(list(reversed(ids)), (0.7, 0.15, 0.15), seed=3)
    assert set(a.values()) == {"train", "val", "test"}
    big = [f"P-{i:016x}" for i in range(400)]
    b = assign_splits(big, (0.7, 0.15, 0.15), seed=3)
    assert 0.6 < sum(v == "train" for v in b.values()) / 400 < 0.8
    grown = assign_splits(big + ["P-ffffffffffffffff"], (0.7, 0.15, 0.15), seed=3)
    assert all(grown[p] == b[p] for p in big)  # a growing cohort keeps everyone's split


def test_zero_usable_patients_is_cohort_error_and_leaves_no_folder(ingested, tmp_path):
    cohort = tmp_path / "bad"
    (cohort / "ct").mkdir(parents=True)
    shutil.copytree(ingested["cohort"] / "ct" / IDS[4], cohort / "ct" / IDS[4])  # no SEG
    shutil.copy(ingested["cohort"] / "genes.tsv", cohort)
    shutil.copy(ingested["cohort"] / "clinical.csv", cohort)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous dataset")
    with pytest.raises(CohortError, match="no usable patient.*no_seg"):
        ingest_cohort(cohort, tmp_path / "out", IngestConfig(), key=KEY)
    assert (tmp_path / "out" / "keep.txt").read_text() == "previous dataset"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _overwrite_value(path, tag_vr: bytes, fill: bytes) -> None:
    """Overwrite the value of an explicit-VR element (tag and VR bytes) in a file with ``fill``."""
    data = bytearray(path.read_bytes())
    at = data.index(tag_vr) + len(tag_vr)
    length = int.from_bytes(data[at:at + 2], "little")
    data[at + 2:at + 2 + length] = (fill * length)[:length]
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # pydicom, on the planted value
@pytest.mark.parametrize("element", ["PixelSpacing", "ImagePositionPatient", "RescaleSlope", "Rows"])
def test_a_header_value_that_is_not_a_number_skips_only_its_patient(tmp_path, element):
    tags = {"PixelSpacing": b"\x28\x00\x30\x00DS", "ImagePositionPatient": b"\x20\x00\x32\x00DS",
            "RescaleSlope": b"\x28\x00\x53\x10DS", "Rows": b"\x28\x00\x10\x00US"}
    cohort = tmp_path / "cohort"
    (cohort / "ct").mkdir(parents=True)
    for i, p in enumerate(IDS[:3]):
        f.write_patient(cohort, p, seed=i)
    f.write_tables(cohort, IDS[:3], IDS[:3])
    victim = sorted(p for p in (cohort / "ct" / IDS[2]).rglob("*.dcm") if p.parent.name != "seg")[1]
    _overwrite_value(victim, tags[element], b"x" if element != "Rows" else b"\x00")
    report = ingest_cohort(cohort, tmp_path / "ds", IngestConfig(), key=KEY)
    assert report.ingested == 2 and report.skipped == {"bad_series": [pid(2)]}, report.skipped


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="split_fractions"):
        IngestConfig(split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="unknown key"):
        IngestConfig.from_params({"ingest": {"patch_sise": 64}})
    assert IngestConfig.from_params({"ingest": {"patch_size": 128}}).patch_size == 128


def test_cli_ingest(ingested, tmp_path, monkeypatch):
    from rgops.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  patch_size: 64\n  split_seed: 1\n")
    monkeypatch.setenv("RGOPS_PSEUDONYM_KEY", KEY.decode())
    runner = CliRunner()
    ok = runner.invoke(app, ["ingest", str(ingested["cohort"]), str(tmp_path / "ds"), "--params", str(params),
                             "--patch-size", "128"])
    assert ok.exit_code == 0, ok.output
    assert "ingested 4/8 patients" in ok.output and "no_seg 1" in ok.output
    assert Datasets.load(tmp_path / "ds").size == 128
    bad = runner.invoke(app, ["ingest", str(tmp_path / "nowhere"), str(tmp_path / "ds2"), "--params", str(params)])
    assert bad.exit_code == 1
    assert bad.output.strip().startswith("error:") and "no ct/ folder" in bad.output
