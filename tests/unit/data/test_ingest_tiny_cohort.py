"""Ingest of the synthetic tiny cohort (rgops.data.synth) through the `tiny_datasets` fixture."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pydicom

from rgops.data.datasets import Datasets
from rgops.data.pseudonym import pseudonymize


def test_every_tiny_patient_ingested_and_linked(tiny_cohort, tiny_datasets):
    key = os.environ["RGOPS_PSEUDONYM_KEY"].encode()
    ds = Datasets.load(tiny_datasets)
    report = json.loads((tiny_datasets / "ingest_report.json").read_text())
    clinical = pd.read_csv(tiny_cohort / "clinical.csv", dtype={"patient_id": str})
    expected = sorted(pseudonymize(p, key) for p in clinical.patient_id)
    assert report["ingested"] == len(set(ds.patient_ids)) == len(expected) and report["skipped_counts"] == {}
    assert sorted(set(ds.manifest.pseudo_id)) == expected
    assert report["n_patches"] == len(ds) > len(expected)  # several slices per patient
    assert ds.patches.shape[1:] == (1, 64, 64) and ds.patches.min() >= -1 and ds.patches.max() <= 1
    # each crop is centred on its slice's tumour box (a crescent-shaped slice need not cover the centre)
    for m in ds.masks[:, 0]:
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        assert abs((rows[0] + rows[-1]) / 2 - 31.5) <= 2 and abs((cols[0] + cols[-1]) / 2 - 31.5) <= 2


def test_no_header_identifier_of_the_tiny_cohort_reaches_the_datasets(tiny_cohort, tiny_datasets):
    needles = set()
    for path in sorted((tiny_cohort / "ct").glob("*/*/*.dcm"))[::5]:
        h = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in ("PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName",
                   "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if str(h.get(kw, "")).strip():
                needles.add(str(h.get(kw)).strip())
        needles |= {part for part in str(h.get("PatientName", "")).split("^") if len(part) >= 4}
    assert len(needles) > 10
    blobs = [p.read_bytes() for p in tiny_datasets.iterdir() if p.is_file()]
    blobs += [pd.read_parquet(p).to_csv().encode() for p in tiny_datasets.glob("*.parquet")]
    leaks = sorted(n for n in needles if any(n.encode() in b for b in blobs))
    assert leaks == []
    inst = pd.read_parquet(tiny_datasets / "instances.parquet")
    assert np.all(inst.patient_identity_removed == "YES")
