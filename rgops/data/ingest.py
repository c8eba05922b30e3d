"""Ingest: a raw cohort folder -> the de-identified datasets folder (docs/architecture.md).

Per patient (:func:`ingest_patient`, independent, so a flow can fan out): read the CT and SEG
files, de-identify every header (:mod:`rgops.data.deid`) before anything else looks at it, stack
the series, place the SEG's tumour mask, cut the patches of the patch contract
(:mod:`rgops.data.patch`: several slices per patient, each a manifest row). Per cohort (:func:`ingest_cohort`): read and check the gene and clinical tables, link them
by pseudonym, split patients, normalise genes with train-split statistics, and write every file
into a temporary folder that is renamed into place only when complete; the patch contract used is
written beside them as ``patch_spec.json``.

A patient that cannot be used is skipped with a reason, logged (pseudonym only) and counted in
``ingest_report.json``; a cohort with no usable patient is a :class:`~rgops.errors.CohortError`.

Split: each patient gets a score from SHA-256 of ``"<split_seed>:<pseudo_id>"``; the score's
position against the cumulative split fractions picks the split, so a patient keeps its split
when the cohort grows. If that leaves a split with a positive fraction empty (tiny cohorts),
patients are instead assigned by rank of the same score, in proportion to the fractions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from rgops.config import from_dict
from rgops.data import header
from rgops.data.datasets import SPLITS, Datasets, GenePanel, write_genes_parquet
from rgops.data.deid import deidentify
from rgops.data.dicom import (
    CTSeries,
    ct_series,
    read_dicom,
    referenced_series_uids,
    segmentation_mask,
)
from rgops.data.patch import PatchSpec, tumour_areas
from rgops.data.genomics import GeneTable, read_clinical, read_gene_table
from rgops.data.provenance import ORIGIN_FILE, cohort_origin
from rgops.data.study import pick_referenced
from rgops.data.pseudonym import load_key, pseudonymize
from rgops.errors import (
    CohortError,
    ConfigError,
    DeidentificationError,
    DicomDecodeError,
    DicomError,
    SegmentationError,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: Skip reasons, as counted in ingest_report.json.
REASONS = ("no_genes", "no_images", "no_seg", "bad_dicom", "undecodable", "bad_series", "bad_seg",
           "tumour_too_small", "patient_id_mismatch")


@dataclass(frozen=True)
class IngestConfig:
    """The ``ingest:`` section of params.yaml.

    Attributes:
        patch_size: side S of the square patches (64 default, 128 supported).
        hu_window: HU range kept; values outside are clipped, then scaled to [-1, 1].
        crop_factor: crop side = crop_factor x max(bbox height, bbox width) (pixels).
        pad_hu: value outside the image when the crop leaves it (air).
        split_fractions: train, val, test fractions (sum 1).
        split_seed: seed of the patient-level split.
        min_tumour_area_px: a largest tumour cross-section below this (pixels) skips the patient.
        min_area_fraction: slice rule of the patch contract: slices with tumour area >= this x the
            largest cross-section are cut (:class:`rgops.data.patch.PatchSpec`).
        max_slices: at most this many slices per patient.
        parquet_compression: compression of the parquet files (None: uncompressed).

    The patch fields are checked and applied by :meth:`spec` (:mod:`rgops.data.patch`).
    """

    patch_size: int = 64
    hu_window: tuple[float, float] = (-1000.0, 500.0)
    crop_factor: float = 2.0
    pad_hu: float = -1000.0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    min_tumour_area_px: int = 4
    min_area_fraction: float = 0.3
    max_slices: int = 8
    parquet_compression: str | None = "snappy"

    def __post_init__(self) -> None:
        try:
            self.spec()
        except ConfigError as exc:
            raise ConfigError(f"ingest: {exc}") from None
        fr = self.split_fractions
        if min(fr) < 0 or fr[0] <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"ingest.split_fractions: got {list(fr)}, expected three non-negative fractions "
                "(train > 0) that sum to 1"
            )

    def spec(self) -> PatchSpec:
        """The patch contract these settings describe."""
        return PatchSpec(size=self.patch_size, hu_window=(float(self.hu_window[0]), float(self.hu_window[1])),
                         crop_factor=self.crop_factor, pad_hu=self.pad_hu, min_area_fraction=self.min_area_fraction,
                         max_slices=self.max_slices, min_tumour_area_px=self.min_tumour_area_px)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "IngestConfig":
        """Read the ``ingest`` section of a params mapping (absent section -> defaults)."""
        return from_dict(cls, params.get("ingest") or {}, "ingest")


@dataclass
class PatientResult:
    """What :func:`ingest_patient` made of one patient.

    ``patch``/``mask`` are ``(K, 1, S, S)`` (float32 / uint8), one per slice of the contract's slice
    rule, and ``records`` the K manifest rows (without ``split``) when ingested; otherwise ``skip_reason`` (one of :data:`REASONS`) and a
    ``detail`` that names the patient by pseudonym only. ``instances`` holds one de-identified
    header row per CT/SEG instance that could be read.
    """

    pseudo_id: str
    patch: np.ndarray | None = None
    mask: np.ndarray | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    skip_reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.skip_reason is None


@dataclass
class IngestReport:
    """Counts of an ingest run (written to ``ingest_report.json``); pseudonymous ids only.

    ``splits`` counts patients; ``n_patches`` the manifest rows (several slices per patient).
    """

    patients_seen: int
    ingested: int
    skipped: dict[str, list[str]]
    splits: dict[str, int]
    n_genes: int
    missing_gene_values: int
    n_instances: int
    patch_size: int
    seconds: float
    out: str = ""
    n_patches: int = 0

    @property
    def skipped_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.skipped.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "rgops-ingest-report/1",
            "patients_seen": self.patients_seen,
            "ingested": self.ingested,
            "skipped_counts": self.skipped_counts,
            "skipped": self.skipped,
            "splits": self.splits,
            "n_genes": self.n_genes,
            "missing_gene_values": self.missing_gene_values,
            "n_instances": self.n_instances,
            "patch_size": self.patch_size,
            "n_patches": self.n_patches,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------------
# patches


def extract_patches(hu: np.ndarray, mask: np.ndarray, pixel_spacing_mm: float, spec: PatchSpec
                    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Cut the contract's patches of one tumour: ``(K, 1, S, S)`` patches in [-1, 1], masks, infos.

    ``hu`` and ``mask`` are ``(Z, R, C)``; see :meth:`rgops.data.patch.PatchSpec.cut_volume`.
    Ingest and ``/extract`` both call this, so a served patch is cut exactly as training's were.

    Raises:
        SegmentationError: the mask is empty, too small, or its shape differs from ``hu``.
    """
    return spec.cut_volume(hu, mask, pixel_spacing_mm)


# --------------------------------------------------------------------------------------------
# one patient


def _files(folder: Path) -> list[Path]:
    # a DICOMDIR (media index, e.g. a series copied from a CD) is not an instance
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name.upper() != "DICOMDIR")


def _instance_row(pseudo_id: str, ds: Dataset) -> dict[str, Any]:
    """One row of instances.parquet from a header that :func:`deidentify` has cleaned.

    Values are read with :mod:`rgops.data.header` (raw bytes parsed where plain, as pydicom would
    convert them); a value that is not a number becomes a missing cell, never an error.
    ``deid_leftovers`` is 0 by construction (``deidentify`` refuses to return a dataset with
    leftovers); the column lets validation check instance tables from any source.
    """
    def read(reader: Callable[[Dataset, str], Any], keyword: str) -> Any:
        try:
            return reader(ds, keyword)
        except (TypeError, ValueError, OverflowError):
            return None

    def num(keyword: str, i: int | None = None) -> float | None:
        values = read(header.numbers, keyword)
        if i is None:  # one value
            return values[0] if values and len(values) == 1 else None
        return values[i] if values and len(values) > 1 and i < len(values) else None  # one of several

    modality = header.text(ds, "Modality")
    refs = sorted(referenced_series_uids(ds)) if modality == "SEG" else []
    ipp = read(header.numbers, "ImagePositionPatient")
    return {
        "pseudo_id": pseudo_id,
        "modality": modality,
        "sop_class_uid": header.text(ds, "SOPClassUID"),
        "sop_instance_uid": header.text(ds, "SOPInstanceUID"),
        "series_uid": header.text(ds, "SeriesInstanceUID"),
        "study_uid": header.text(ds, "StudyInstanceUID"),
        "frame_of_reference_uid": header.text(ds, "FrameOfReferenceUID"),
        "referenced_series_uid": refs[0] if refs else None,
        "transfer_syntax_uid": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "rows": read(header.integer, "Rows") or 0,  # 0 and empty: the default
        "columns": read(header.integer, "Columns") or 0,
        "n_frames": read(header.integer, "NumberOfFrames") or 1,
        "instance_number": read(header.integer, "InstanceNumber"),  # 0 is a number here
        "bits_stored": read(header.integer, "BitsStored") or 0,
        "pixel_spacing_row_mm": num("PixelSpacing", 0),
        "pixel_spacing_col_mm": num("PixelSpacing", 1),
        "slice_thickness_mm": num("SliceThickness"),
        "image_position_z_mm": ipp[2] if ipp and len(ipp) == 3 else None,
        "rescale_slope": num("RescaleSlope"),
        "rescale_intercept": num("RescaleIntercept"),
        "patient_identity_removed": header.text(ds, "PatientIdentityRemoved"),
        "deid_leftovers": 0,
    }


def _skip(result: PatientResult, reason: str, detail: str) -> PatientResult:
    result.skip_reason = reason
    result.detail = detail
    log.warning("patient %s skipped (%s): %s", result.pseudo_id, reason, detail)
    return result


class _Skip(Exception):
    """A patient is skipped: ``reason`` (a documented skip reason) and a message that may still hold
    source names (redacted once, in :func:`ingest_patient`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def ingest_patient(patient_dir: str | Path, config: IngestConfig, key: bytes) -> PatientResult:
    """De-identify, read and cut the patch of one patient (``COHORT/ct/<PatientID>/``).

    The folder name is the source PatientID; headers must carry the same PatientID. Files are
    named in messages as ``<pseudo_id>/series<j>/file<k>`` (the source file and folder names may
    hold identifiers). Never raises for bad data: the result carries a skip reason instead.

    Returns:
        A :class:`PatientResult`; ``result.ok`` when a patch was made.
    """
    folder = Path(patient_dir)
    source_id = folder.name
    pid = pseudonymize(source_id, key)
    result = PatientResult(pid)
    try:
        series_raw, segs_raw = _read_patient(folder, pid)
        series_de, segs_de = _deidentify_patient(series_raw, segs_raw, key, source_id)
        del series_raw, segs_raw
        result.instances = [_instance_row(pid, ds) for dss, _ in series_de for ds in dss]
        result.instances += [_instance_row(pid, ds) for ds in segs_de]
        (dss, names), seg, seg_idx = _tumour_series(series_de, segs_de, pid)
        series, mask = _series_and_mask(dss, names, seg, f"{pid}/seg/file{seg_idx}")
        spec = config.spec()
        areas = tumour_areas(mask)
        if 0 < int(areas.max()) < spec.min_tumour_area_px:
            raise _Skip("tumour_too_small", f"largest tumour cross-section {int(areas.max())} px < "
                        f"min_tumour_area_px {spec.min_tumour_area_px}")
        try:
            patches, pmasks, infos = extract_patches(series.hu, mask, float(series.pixel_spacing[0]), spec)
        except DicomError as exc:  # SegmentationError: an empty mask
            raise _Skip("bad_seg", str(exc)) from None
    except _Skip as skip:
        return _skip(result, skip.reason, _redact(str(skip), source_id, folder))
    result.patch, result.mask = patches, pmasks
    result.records = [_manifest_record(pid, series, info) for info in infos]
    return result


def _read_patient(folder: Path, pid: str) -> tuple[list[tuple[list[Dataset], list[str]]], list[Dataset]]:
    """Every CT series (datasets and message names) and every SEG of a patient folder, not yet de-identified."""
    series_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and d.name != "seg")
    seg_files = _files(folder / "seg") if (folder / "seg").is_dir() else []
    if not series_dirs:
        raise _Skip("no_images", "no CT series folder")
    if not seg_files:
        raise _Skip("no_seg", "no SEG file in seg/")
    try:
        series_raw: list[tuple[list[Dataset], list[str]]] = []
        for j, sdir in enumerate(series_dirs):
            files = _files(sdir)
            names = [f"{pid}/series{j}/file{k}" for k in range(len(files))]
            series_raw.append(([read_dicom(p, name=n) for p, n in zip(files, names)], names))
        return series_raw, [read_dicom(p, name=f"{pid}/seg/file{k}") for k, p in enumerate(seg_files)]
    except DicomError as exc:
        raise _Skip("bad_dicom", str(exc)) from None


def _deidentify_patient(series_raw: list[tuple[list[Dataset], list[str]]], segs_raw: list[Dataset], key: bytes,
                        source_id: str) -> tuple[list[tuple[list[Dataset], list[str]]], list[Dataset]]:
    """Check every header names the folder's patient, then de-identify them all (in place)."""
    headers = [ds for dss, _ in series_raw for ds in dss] + segs_raw
    ids = {str(ds.get("PatientID", "")).strip() for ds in headers} - {""}
    if ids and ids != {source_id}:
        raise _Skip("patient_id_mismatch", f"{len(ids)} PatientID value(s) in the headers differ from the folder name")
    try:
        series_de = [([deidentify(ds, key, source_id, in_place=True) for ds in dss], names) for dss, names in series_raw]
        return series_de, [deidentify(ds, key, source_id, in_place=True) for ds in segs_raw]
    except DeidentificationError as exc:
        raise _Skip("bad_dicom", str(exc)) from None


def _tumour_series(series_de: list[tuple[list[Dataset], list[str]]], segs_de: list[Dataset], pid: str
                   ) -> tuple[tuple[list[Dataset], list[str]], Dataset, int]:
    """The SEG decides which series is the tumour's; a lone series is checked by the SEG itself (the
    same choice serving makes for an uploaded or PACS study: :func:`rgops.data.study.pick_referenced`).
    Returns ``((datasets, names) of the series, the SEG, its index)``."""
    seg_idx, chosen = pick_referenced([str(dss[0].get("SeriesInstanceUID", "")) for dss, _ in series_de], segs_de)
    if len(segs_de) > 1:
        log.info("patient %s has %d SEG files; using the first that references one of its CT series",
                 pid, len(segs_de))
    if chosen is None:
        raise _Skip("bad_seg", f"the SEG references none of the {len(series_de)} CT series")
    return series_de[chosen], segs_de[seg_idx], seg_idx


def _series_and_mask(dss: list[Dataset], names: list[str], seg: Dataset, seg_name: str) -> tuple[CTSeries, np.ndarray]:
    """The CT volume and the SEG's tumour mask on it."""
    try:
        series = ct_series(dss, names)
    except DicomDecodeError as exc:
        raise _Skip("undecodable", str(exc)) from None
    except DicomError as exc:
        raise _Skip("bad_series", str(exc)) from None
    try:
        return series, segmentation_mask(seg, series, name=seg_name)
    except DicomDecodeError as exc:
        raise _Skip("undecodable", str(exc)) from None
    except DicomError as exc:  # SegmentationError included
        raise _Skip("bad_seg", str(exc)) from None


def _manifest_record(pid: str, series: CTSeries, info: dict[str, Any]) -> dict[str, Any]:
    k = info["slice_index"]
    return {
        "pseudo_id": pid,
        "series_uid": series.series_uid,
        "slice_index": k,
        "slice_rank": info["slice_rank"],
        "slice_z_mm": float(series.z_mm[k]),
        "mm_per_px": info["mm_per_px"],
        "pixel_spacing_mm": float(series.pixel_spacing[0]),
        "pixel_spacing_col_mm": float(series.pixel_spacing[1]),
        "slice_thickness_mm": series.slice_thickness,
        "slice_spacing_mm": float(series.slice_spacing),
        "crop_side_px": info["crop_side_px"],
        "bbox_r0": info["bbox_r0"], "bbox_c0": info["bbox_c0"],
        "bbox_r1": info["bbox_r1"], "bbox_c1": info["bbox_c1"],
        "tumour_area_px": info["tumour_area_px"],
        "manufacturer": series.manufacturer,
        "n_slices": series.n_slices,
    }


def _redact(text: str, source_id: str, folder: Path) -> str:
    """Remove the source PatientID and the cohort's folder names from a message."""
    out = text.replace(str(folder), "<patient>")
    for d in folder.iterdir() if folder.is_dir() else []:
        if d.name != "seg":
            out = out.replace(d.name, "<series>")
    return out.replace(source_id, "<patient>")


# --------------------------------------------------------------------------------------------
# the cohort


def split_score(pseudo_id: str, seed: int) -> float:
    """A patient's split score in [0, 1): SHA-256 of ``"<seed>:<pseudo_id>"``."""
    digest = hashlib.sha256(f"{seed}:{pseudo_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(pseudo_ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Patient-level split, deterministic from the pseudonyms and ``seed`` (see module docstring)."""
    scores = {p: split_score(p, seed) for p in pseudo_ids}
    edges = np.cumsum(fractions)
    out = {p: SPLITS[min(int(np.searchsorted(edges, s, side="right")), len(SPLITS) - 1)] for p, s in scores.items()}
    wanted = [name for name, f in zip(SPLITS, fractions) if f > 0]
    if len(pseudo_ids) >= len(wanted) and not set(wanted) <= set(out.values()):
        ranked = sorted(pseudo_ids, key=lambda p: (scores[p], p))
        n = len(ranked)
        counts = [int(round(f * n)) for f in fractions]
        for i, f in enumerate(fractions):  # every split with a positive fraction gets a patient
            if f > 0 and counts[i] == 0:
                counts[i] = 1
        while sum(counts) > n:
            counts[int(np.argmax(counts))] -= 1
        counts[0] += n - sum(counts)
        out, start = {}, 0
        for name, c in zip(SPLITS, counts):
            for p in ranked[start:start + c]:
                out[p] = name
            start += c
    return out


@dataclass(frozen=True)
class PatientJob:
    """One patient's work, small enough to ship to another process (:func:`run_patient_job`).

    ``folder`` is named by the source PatientID and ``key`` is the pseudonymisation key: both are
    left out of ``repr`` so that an orchestrator that prints or stores its task inputs' repr sees
    only ``index`` and the pseudonym. Orchestrators should name the work by ``index``.
    """

    index: int
    pseudo_id: str
    folder: str = field(repr=False)
    config: IngestConfig = field(repr=False)
    key: bytes = field(repr=False)


def run_patient_job(job: PatientJob) -> PatientResult:
    """Run :func:`ingest_patient` for one :class:`PatientJob` (module-level, so it pickles).

    Raises:
        CohortError: an unexpected failure (e.g. an unreadable folder); its message names the
            patient by index and pseudonym only, and the original exception is not chained,
            because an orchestrator stores failure tracebacks and the folder is the PatientID.
    """
    try:
        return ingest_patient(job.folder, job.config, job.key)
    except Exception as exc:  # noqa: BLE001 - re-raised, redacted
        folder = Path(job.folder)
        detail = str(exc).replace(str(folder), "<patient>").replace(folder.name, "<patient>")
        err = CohortError(f"patient job {job.index} ({job.pseudo_id}) failed with {type(exc).__name__}: {detail}; "
                          "expected a readable ct/<PatientID>/ folder: check its files and permissions")
    raise err


#: ``map_fn(run_patient_job, jobs)`` -> one result per job, in any order (matched by pseudonym).
MapFn = Callable[[Callable[[PatientJob], PatientResult], list[PatientJob]], Iterable[PatientResult]]


@dataclass
class CohortPlan:
    """What :func:`plan_cohort` read: the tables, the per-patient jobs and the skips known up front."""

    cohort: Path
    config: IngestConfig
    key: bytes = field(repr=False)
    table: GeneTable = field(repr=False)
    clinical: pd.DataFrame = field(repr=False)
    gene_pid: dict[str, str] = field(repr=False)  # pseudonym -> source sample id
    seen: list[str]
    skipped: dict[str, list[str]]
    jobs: list[PatientJob] = field(repr=False)
    t0: float = 0.0


def plan_cohort(cohort: str | Path, config: IngestConfig, key: bytes | None = None) -> CohortPlan:
    """Read and check the cohort's tables and list one :class:`PatientJob` per patient to ingest.

    Jobs come in pseudonym order, indexed 0..n-1. Patients with images but no gene column (or
    the reverse) are already counted in ``plan.skipped``.

    Raises:
        CohortError: no ``ct/`` folder or no ``genes.tsv``.
        GeneTableError: the gene table is malformed.
    """
    t0 = time.perf_counter()
    cohort = Path(cohort)
    key = key if key is not None else load_key()
    ct_root = cohort / "ct"
    if not ct_root.is_dir():
        raise CohortError(f"cohort {str(cohort)!r} has no ct/ folder; expected ct/<PatientID>/<series>/*.dcm")
    genes_path, clinical_path = cohort / "genes.tsv", cohort / "clinical.csv"
    if not genes_path.is_file():
        raise CohortError(f"cohort {str(cohort)!r} has no genes.tsv; expected the genes x samples table there")
    table = read_gene_table(genes_path)
    clinical = read_clinical(clinical_path)

    gene_pid = {pseudonymize(s, key): s for s in table.expr.index}
    patient_dirs = {pseudonymize(d.name, key): d for d in sorted(ct_root.iterdir()) if d.is_dir()}
    seen = sorted(set(gene_pid) | set(patient_dirs))
    skipped: dict[str, list[str]] = {}
    for pid in sorted(set(gene_pid) - set(patient_dirs)):
        skipped.setdefault("no_images", []).append(pid)
        log.warning("patient %s skipped (no_images): genes but no ct/ folder", pid)
    todo = [pid for pid in sorted(patient_dirs) if pid in gene_pid]
    for pid in sorted(set(patient_dirs) - set(gene_pid)):
        skipped.setdefault("no_genes", []).append(pid)
        log.warning("patient %s skipped (no_genes): images but no genes.tsv column", pid)
    jobs = [PatientJob(i, pid, str(patient_dirs[pid]), config, key) for i, pid in enumerate(todo)]
    return CohortPlan(cohort, config, key, table, clinical, gene_pid, seen, skipped, jobs, t0)


def _loop(fn: Callable[[PatientJob], PatientResult], jobs: list[PatientJob]) -> Iterable[PatientResult]:
    return (fn(job) for job in jobs)


def ingest_cohort(cohort: str | Path, out: str | Path, config: IngestConfig, key: bytes | None = None,
                  progress: Progress | None = None, map_fn: MapFn | None = None) -> IngestReport:
    """Ingest a cohort folder into a datasets folder (layout: docs/architecture.md).

    :func:`plan_cohort`, then the per-patient jobs through ``map_fn``, then :func:`assemble_cohort`.

    Args:
        cohort: the cohort folder (``ct/``, ``genes.tsv``, ``clinical.csv``).
        out: the datasets folder to write; replaced atomically (rename) when complete.
        config: the ``ingest`` parameters.
        key: pseudonymisation key; default :func:`rgops.data.pseudonym.load_key`.
        progress: called as ``progress(done, total)`` after each patient result arrives.
        map_fn: runs the per-patient work, ``map_fn(run_patient_job, jobs)`` -> results in any
            order (e.g. on a Dask cluster); default an in-process loop. The output does not depend
            on it: results are put back in patient order.

    Returns:
        The :class:`IngestReport` (also written as ``ingest_report.json``).

    Raises:
        CohortError: the cohort folder is not laid out as documented, no patient is usable, or
            ``map_fn`` returned results that do not match the jobs one to one.
        GeneTableError: the gene table is malformed.
    """
    plan = plan_cohort(cohort, config, key)
    results: list[PatientResult] = []
    for i, r in enumerate((map_fn or _loop)(run_patient_job, plan.jobs)):
        results.append(r)
        if progress is not None:
            progress(i + 1, len(plan.jobs))
    return assemble_cohort(plan, results, out)


def assemble_cohort(plan: CohortPlan, results: Iterable[PatientResult], out: str | Path) -> IngestReport:
    """Write the datasets folder from a plan and its patients' results (in any order).

    Counts the skipped patients, splits, normalises genes with train-split statistics and writes
    every file into a temporary folder renamed to ``out`` when complete.

    Raises:
        CohortError: ``results`` do not match ``plan.jobs`` one to one, or no patient is usable.
    """
    out = Path(out)
    ok, skipped, instances = _collect_results(plan, results)
    pids = [r.pseudo_id for r in ok]
    splits = assign_splits(pids, plan.config.split_fractions, plan.config.split_seed)
    manifest = pd.DataFrame([{**rec, "split": splits[r.pseudo_id]} for r in ok for rec in r.records])
    manifest = manifest[["pseudo_id", "split"] + [c for c in manifest.columns if c not in ("pseudo_id", "split")]]
    panel, genes = _normalised_genes(plan, pids, splits, manifest)
    clin = plan.clinical.copy()
    clin.index = pd.Index([pseudonymize(s, plan.key) for s in clin.index], name="pseudo_id")
    clin = clin.sort_index().reset_index()
    clin["split"] = clin["pseudo_id"].map(splits)
    inst = pd.DataFrame(instances)
    report = IngestReport(
        patients_seen=len(plan.seen), ingested=len(ok), skipped={k: sorted(v) for k, v in sorted(skipped.items())},
        splits={s: sum(1 for p in pids if splits[p] == s) for s in SPLITS}, n_genes=len(panel),
        n_patches=len(manifest), missing_gene_values=plan.table.n_missing, n_instances=len(inst),
        patch_size=plan.config.patch_size, seconds=0.0, out=str(out),
    )
    tables = {"manifest.parquet": manifest, "clinical.parquet": clin, "instances.parquet": inst}
    _write_datasets(out, plan, ok, panel, genes, tables, report)
    log.info("ingested %d of %d patients into %s (%s)", report.ingested, report.patients_seen, out,
             ", ".join(f"{k}: {n}" for k, n in report.skipped_counts.items()) or "none skipped")
    return report


def _collect_results(plan: CohortPlan, results: Iterable[PatientResult]
                     ) -> tuple[list[PatientResult], dict[str, list[str]], list[dict[str, Any]]]:
    """``(usable results, skipped reason -> ids, instance rows)`` in the plan's patient order."""
    skipped = {k: list(v) for k, v in plan.skipped.items()}
    got = list(results)
    by_pid = {r.pseudo_id: r for r in got}
    expected = [job.pseudo_id for job in plan.jobs]
    if len(got) != len(expected) or sorted(by_pid) != sorted(expected):
        missing, extra = sorted(set(expected) - set(by_pid)), sorted(set(by_pid) - set(expected))
        raise CohortError(f"cohort {str(plan.cohort)!r}: got {len(got)} patient results for {len(expected)} jobs "
                          f"(missing {missing}, unexpected {extra}); expected one result per planned patient")
    ok: list[PatientResult] = []
    instances: list[dict[str, Any]] = []
    for pid in expected:  # patient order, whatever order the results arrived in
        r = by_pid[pid]
        instances.extend(r.instances)
        if r.ok:
            ok.append(r)
        else:
            skipped.setdefault(r.skip_reason or "unknown", []).append(pid)
    if not ok:
        counts = {k: len(v) for k, v in skipped.items()}
        raise CohortError(
            f"cohort {str(plan.cohort)!r}: no usable patient among {len(plan.seen)} (skipped by reason: {counts}); "
            "see the log lines above for each patient"
        )
    return ok, skipped, instances


def _normalised_genes(plan: CohortPlan, pids: list[str], splits: dict[str, str], manifest: pd.DataFrame
                      ) -> tuple[GenePanel, pd.DataFrame]:
    """The gene panel fitted on training patients and the normalised genes, one row per patch."""
    raw = plan.table.expr.loc[[plan.gene_pid[p] for p in pids]]
    raw.index = pd.Index(pids, name="pseudo_id")
    train = np.array([splits[p] == "train" for p in pids])
    panel = GenePanel.fit(np.log2(raw[train] + 1.0))  # one row per patient, not per slice
    per_patient = pd.DataFrame(panel.normalise(raw, impute=True), index=raw.index, columns=list(panel.genes))
    return panel, per_patient.loc[manifest["pseudo_id"]]  # in manifest order


def _write_datasets(out: Path, plan: CohortPlan, ok: list[PatientResult], panel: GenePanel, genes: pd.DataFrame,
                    tables: dict[str, pd.DataFrame], report: IngestReport) -> None:
    """Write every file into a temporary folder, check the contract, then replace ``out`` with it.
    ``genes`` keeps its ``pseudo_id`` index; ``tables`` (file name -> frame) are written without theirs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        np.save(tmp / "patches.npy", np.concatenate([r.patch for r in ok]).astype(np.float32))
        np.save(tmp / "masks.npy", np.concatenate([r.mask for r in ok]).astype(np.uint8))
        plan.config.spec().write(tmp)
        panel.save(tmp / "gene_panel.json")
        write_genes_parquet(genes, tmp / "genes.parquet", plan.config.parquet_compression)
        for name, frame in tables.items():
            frame.to_parquet(tmp / name, compression=plan.config.parquet_compression, index=False)
        # the contract check, before anything replaces ``out``: every file read back but the gene
        # values, which are the ones just written (their names, row ids and count are read)
        Datasets.load(tmp, genes=genes.to_numpy(dtype=np.float32))
        report.seconds = time.perf_counter() - plan.t0
        (tmp / "ingest_report.json").write_text(json.dumps(report.to_json(), indent=2))
        (tmp / ORIGIN_FILE).write_text(json.dumps(cohort_origin(plan.cohort, len(plan.seen)), indent=2))
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an older one."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    os.chmod(out, 0o755)


__all__ = ["CohortPlan", "IngestConfig", "IngestReport", "MapFn", "PatientJob", "PatientResult", "REASONS",
           "assemble_cohort", "assign_splits", "extract_patches", "ingest_cohort", "ingest_patient", "plan_cohort",
           "run_patient_job", "split_score"]
