"""Tables that the expectation suites check, built from a raw cohort or an ingested datasets folder.

Great Expectations checks DataFrames, so everything is flattened first (docs/architecture.md has
the folder layouts):

============== ========================= =========================================================
table          one row per               built by
============== ========================= =========================================================
imaging        CT image instance         :func:`imaging_tables` (headers, no pixel data)
series         CT series                 :func:`imaging_tables` (HU range from the middle slice)
segmentations  SEG instance              :func:`imaging_tables`
genes          gene of genes.tsv         :func:`gene_tables` (raw text, so bad cells are counted)
samples        sample column of genes    :func:`gene_tables`
clinical       clinical.csv row          :func:`clinical_table`
linkage        patient seen anywhere     :func:`linkage_table`
datasets_*     patch / gene of datasets  :func:`datasets_tables`
============== ========================= =========================================================

Privacy: no table holds a source PatientID, a name or a file path (the cohort's folders are
named by source PatientID). Patients appear as ``pseudo_id`` (keyed HMAC, see
:mod:`rgops.data.pseudonym`), UIDs as keyed UIDs, and leftover identifying attributes by their
DICOM keyword only, never their value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgops.data.genomics import CLINICAL_CATEGORICAL, CLINICAL_NUMERIC, ragged_line
from rgops.data.pseudonym import pseudonymize, pseudonymous_uid
from rgops.errors import CohortError

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a"})
_PSEUDO_RE = re.compile(r"^P-[0-9a-f]{16}$")
_KEYED_UID_RE = re.compile(r"^2\.25\.\d+$")

#: Columns of the imaging table (:func:`instance_tables` maps ingest's instances.parquet onto them).
IMAGING_COLUMNS = (
    "pseudo_id", "series_uid", "instance_number", "modality", "pixel_spacing_min_mm",
    "pixel_spacing_max_mm", "slice_thickness_mm", "rows", "columns", "rescale_slope",
    "rescale_intercept", "transfer_syntax", "transfer_syntax_decodable", "identity_removed",
    "leftover_identifiers",
)

Progress = Callable[[int, int], None]


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _patient_pseudo(patient_id: str, identity_removed: bool, key: bytes) -> str:
    # A header that is already de-identified carries the pseudonym itself; hashing it again
    # would break linkage with the genes and clinical tables.
    if identity_removed and _PSEUDO_RE.match(patient_id):
        return patient_id
    return pseudonymize(patient_id, key)


def _uid(uid: str, identity_removed: bool, key: bytes) -> str:
    if not uid:
        return ""
    if identity_removed and _KEYED_UID_RE.match(uid):
        return uid
    return pseudonymous_uid(uid, key)


def transfer_syntax_decodable(transfer_syntax: str) -> bool:
    """Whether an installed pixel-data decoder handles ``transfer_syntax``."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def header_row(ds: Any, key: bytes, fallback_patient_id: str = "") -> dict[str, Any]:
    """One imaging-table row (see :data:`IMAGING_COLUMNS`) from a pydicom header.

    ``leftover_identifiers`` is filled only for a header that claims de-identification
    (PatientIdentityRemoved = YES): it then lists the keywords of identifying attributes still
    present (:func:`rgops.data.deid.find_identifiers`), comma-separated; on a raw header PHI is
    expected and the column is empty.
    """
    from rgops.data.deid import find_identifiers

    removed = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    patient_id = str(ds.get("PatientID", "") or fallback_patient_id)
    spacing = ds.get("PixelSpacing")
    spacing_values = [v for v in (_float(s) for s in (spacing or [])) if v is not None]
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    leftovers = ""
    if removed:
        found = [loc.split(":")[0].split("[")[0] for loc in find_identifiers(ds)]
        leftovers = ",".join(sorted(set(found)))
    return {
        "pseudo_id": _patient_pseudo(patient_id, removed, key),
        "series_uid": _uid(str(ds.get("SeriesInstanceUID", "")), removed, key),
        "instance_number": _int(ds.get("InstanceNumber")),
        "modality": str(ds.get("Modality", "")),
        "pixel_spacing_min_mm": min(spacing_values) if spacing_values else None,
        "pixel_spacing_max_mm": max(spacing_values) if spacing_values else None,
        "slice_thickness_mm": _float(ds.get("SliceThickness")),
        "rows": _int(ds.get("Rows")),
        "columns": _int(ds.get("Columns")),
        "rescale_slope": _float(ds.get("RescaleSlope")),
        "rescale_intercept": _float(ds.get("RescaleIntercept")),
        "transfer_syntax": ts,
        "transfer_syntax_decodable": transfer_syntax_decodable(ts) if ts else False,
        "identity_removed": removed,
        "leftover_identifiers": leftovers,
    }


def _referenced_series(seg: Any, sop_to_series: dict[str, str]) -> str:
    for item in seg.get("ReferencedSeriesSequence", []) or []:
        uid = str(item.get("SeriesInstanceUID", ""))
        if uid:
            return uid
    # Fall back on the source images of the frames (a SEG without ReferencedSeriesSequence).
    for item in seg.get("SourceImageSequence", []) or []:
        uid = sop_to_series.get(str(item.get("ReferencedSOPInstanceUID", "")))
        if uid:
            return uid
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []) or []:
        for deriv in frame.get("DerivationImageSequence", []) or []:
            for src in deriv.get("SourceImageSequence", []) or []:
                uid = sop_to_series.get(str(src.get("ReferencedSOPInstanceUID", "")))
                if uid:
                    return uid
    return ""


def _hu_range(path: Path) -> tuple[float | None, float | None]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        hu = apply_modality_lut(ds.pixel_array, ds)
    except Exception as exc:  # undecodable pixel data is reported by the transfer-syntax expectation
        log.debug("no HU range for one slice: %s", type(exc).__name__)
        return None, None
    return float(np.min(hu)), float(np.max(hu))


def imaging_tables(cohort: str | Path, key: bytes, progress: Progress | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The imaging, series and segmentations tables of a raw cohort's ``ct/`` folder.

    Headers are read with ``stop_before_pixels=True``; only the middle slice of each series is
    decoded, for its HU range.

    Args:
        cohort: the cohort folder.
        key: the pseudonymisation key.
        progress: called as ``progress(done, total)`` after each patient.

    Raises:
        CohortError: the cohort has no ``ct/`` folder.
    """
    ct = Path(cohort) / "ct"
    if not ct.is_dir():
        raise CohortError(f"cohort {str(cohort)!r} has no ct/ folder; expected ct/<PatientID>/<SeriesUID>/*.dcm "
                          "(docs/architecture.md)")
    patients = sorted(p for p in ct.iterdir() if p.is_dir())
    images: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    seg_rows: list[dict[str, Any]] = []
    unreadable = 0
    for done, pdir in enumerate(patients, 1):
        seg_headers, sop_to_series, patient_series, bad = _read_patient_headers(pdir, key, images)
        unreadable += bad
        counts: dict[str, int] = {uid: 0 for uid in patient_series}
        for seg in seg_headers:
            seg_rows.append(_seg_row(seg, pdir.name, sop_to_series, patient_series, key))
            if seg_rows[-1]["references_own_series"]:
                counts[_referenced_series(seg, sop_to_series)] += 1
        for uid, entry in patient_series.items():
            files = [f for _, f in sorted(entry["files"], key=lambda t: t[0])]
            hu_min, hu_max = _hu_range(files[len(files) // 2])
            series_rows.append({
                "pseudo_id": entry["row"]["pseudo_id"], "series_uid": entry["row"]["series_uid"],
                "n_instances": len(files), "hu_min": hu_min, "hu_max": hu_max, "n_seg": counts[uid],
            })
        if progress is not None:
            progress(done, len(patients))
    if unreadable:
        log.warning("%d DICOM file(s) could not be read and are not in the imaging table", unreadable)
    imaging = pd.DataFrame(images, columns=list(IMAGING_COLUMNS))
    series = pd.DataFrame(series_rows, columns=["pseudo_id", "series_uid", "n_instances", "hu_min", "hu_max", "n_seg"])
    segs = pd.DataFrame(seg_rows, columns=["pseudo_id", "modality", "referenced_series_uid",
                                           "references_own_series", "n_frames"])
    return imaging, series, segs


def _read_patient_headers(pdir: Path, key: bytes, images: list[dict[str, Any]]
                          ) -> tuple[list[Any], dict[str, str], dict[str, dict[str, Any]], int]:
    """Read one patient's headers: CT rows go to ``images``; returns ``(SEG headers, SOP -> series UID,
    series UID -> {"row", "files": [(z order, path)]}, number of unreadable files)``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    seg_headers: list[Any] = []
    sop_to_series: dict[str, str] = {}
    patient_series: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for sdir in sorted(d for d in pdir.iterdir() if d.is_dir()):
        for f in sorted(sdir.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                unreadable += 1
                log.warning("skipped an unreadable DICOM file (%s) in one patient folder", type(exc).__name__)
                continue
            if sdir.name == "seg":
                seg_headers.append(ds)
                continue
            row = header_row(ds, key, fallback_patient_id=pdir.name)
            images.append(row)
            raw_series = str(ds.get("SeriesInstanceUID", ""))
            sop_to_series[str(ds.get("SOPInstanceUID", ""))] = raw_series
            entry = patient_series.setdefault(raw_series, {"row": row, "files": []})
            z = ds.get("ImagePositionPatient")
            order = _float(z[2]) if z is not None and len(z) == 3 else _int(ds.get("InstanceNumber"))
            entry["files"].append((order if order is not None else 0.0, f))
    return seg_headers, sop_to_series, patient_series, unreadable


def _seg_row(seg: Any, folder_name: str, sop_to_series: dict[str, str], patient_series: dict[str, Any],
             key: bytes) -> dict[str, Any]:
    """One row of the segmentations table: a SEG header, pseudonymised, and whether it references its
    own patient's series."""
    removed = str(seg.get("PatientIdentityRemoved", "")).upper() == "YES"
    ref = _referenced_series(seg, sop_to_series)
    return {
        "pseudo_id": _patient_pseudo(str(seg.get("PatientID", "") or folder_name), removed, key),
        "modality": str(seg.get("Modality", "")),
        "referenced_series_uid": _uid(ref, removed, key),
        "references_own_series": ref in patient_series,
        "n_frames": _int(seg.get("NumberOfFrames")) or 0,
    }


def gene_tables(path: str | Path, key: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The genes (one row per gene) and samples (one row per sample column) tables of genes.tsv.

    The file is read as text, so duplicate sample ids, empty cells and non-numeric values are
    counted rather than refused. A cell is missing when empty or one of NA/NaN/null/none/n/a; it
    is non-numeric when not missing and not a finite number.

    Columns: genes ``gene_symbol, n_samples, n_missing, missing_fraction, n_non_numeric,
    min_value``; samples ``pseudo_id, n_genes, n_missing, missing_fraction, n_non_numeric,
    min_value``.

    Raises:
        CohortError: the file is missing, empty, its first column is not ``gene_symbol``, or a line
            has another number of fields than the header.
    """
    p = Path(path)
    if not p.is_file():
        raise CohortError(f"gene table {str(p)!r} not found; expected genes.tsv in the cohort folder")
    with open(p, newline="") as fh:
        header = fh.readline()
    ragged = ragged_line(p, header.count("\t") + 1) if header.strip("\r\n") else None
    if ragged:  # a table whose cells cannot be placed: nothing to count
        raise CohortError(ragged)
    raw = pd.read_csv(p, sep="\t", header=None, dtype=str, keep_default_na=False, na_filter=False)
    if raw.shape[0] < 1 or raw.shape[1] < 2 or raw.iat[0, 0].strip() != "gene_symbol":
        first = raw.iat[0, 0] if raw.size else None
        raise CohortError(f"gene table {str(p)!r} starts with {first!r} and has shape {raw.shape}; expected a "
                          "header row 'gene_symbol<TAB><sample id>...' and one row per gene")
    samples = [s.strip() for s in raw.iloc[0, 1:]]
    symbols = [s.strip() or None for s in raw.iloc[1:, 0]]
    cells = raw.iloc[1:, 1:].apply(lambda c: c.str.strip())
    missing = cells.apply(lambda c: c.str.lower().isin(MISSING_TOKENS)).to_numpy()
    values = np.array(cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64), copy=True)
    values[~np.isfinite(values)] = np.nan
    non_numeric = ~missing & np.isnan(values)
    n_genes, n_samples = values.shape
    with np.errstate(all="ignore"):
        gene_min = np.where(np.isnan(values).all(axis=1), np.nan,
                            np.nanmin(np.where(np.isnan(values), np.inf, values), axis=1))
        sample_min = np.where(np.isnan(values).all(axis=0), np.nan,
                              np.nanmin(np.where(np.isnan(values), np.inf, values), axis=0))
    genes = pd.DataFrame({
        "gene_symbol": symbols,
        "n_samples": n_samples,
        "n_missing": missing.sum(axis=1),
        "missing_fraction": missing.sum(axis=1) / max(n_samples, 1),
        "n_non_numeric": non_numeric.sum(axis=1),
        "min_value": gene_min,
    })
    sample_table = pd.DataFrame({
        "pseudo_id": [pseudonymize(s, key) if s else None for s in samples],
        "n_genes": n_genes,
        "n_missing": missing.sum(axis=0),
        "missing_fraction": missing.sum(axis=0) / max(n_genes, 1),
        "n_non_numeric": non_numeric.sum(axis=0),
        "min_value": sample_min,
    })
    return genes, sample_table




def clinical_table(path: str | Path, key: bytes) -> pd.DataFrame:
    """The clinical table of a cohort's clinical.csv (``patient_id`` replaced by ``pseudo_id``).

    Numeric fields that do not parse become missing (the suite expects them not null);
    categorical fields are kept as written.

    Raises:
        CohortError: the file is missing or has no ``patient_id`` column.
    """
    p = Path(path)
    if not p.is_file():
        raise CohortError(f"clinical table {str(p)!r} not found; expected clinical.csv in the cohort folder")
    raw = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False)
    if "patient_id" not in raw.columns:
        raise CohortError(f"clinical table {str(p)!r} has columns {list(raw.columns)}; expected a 'patient_id' column")
    out = pd.DataFrame({"pseudo_id": [pseudonymize(s, key) if s.strip() else None for s in raw["patient_id"]]})
    return _clinical_columns(raw, out)


def _clinical_columns(raw: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    for col in CLINICAL_CATEGORICAL:
        if col in raw.columns:
            out[col] = raw[col].astype(str).str.strip().to_numpy()
    for col in CLINICAL_NUMERIC:
        if col in raw.columns:
            out[col] = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=np.float64)
    return out


def linkage_table(imaging: pd.DataFrame, segmentations: pd.DataFrame, samples: pd.DataFrame,
                  clinical: pd.DataFrame) -> pd.DataFrame:
    """One row per patient seen in any source: which sources hold it, and why ingest would drop it.

    ``linked`` = imaging and a SEG referencing one of the patient's series and a gene sample.
    ``drop_reason`` is the first of ``no_imaging``, ``no_segmentation``, ``no_genes`` that
    applies, empty for a linked patient.
    """
    img = set(imaging["pseudo_id"].dropna())
    seg = set(segmentations.loc[segmentations["references_own_series"].astype(bool), "pseudo_id"].dropna())
    genes = set(samples["pseudo_id"].dropna())
    clin = set(clinical["pseudo_id"].dropna()) if "pseudo_id" in clinical.columns else set()
    ids = sorted(img | set(segmentations["pseudo_id"].dropna()) | genes | clin)
    df = pd.DataFrame({"pseudo_id": ids})
    df["has_imaging"] = df["pseudo_id"].isin(img)
    df["has_segmentation"] = df["pseudo_id"].isin(seg)
    df["has_genes"] = df["pseudo_id"].isin(genes)
    df["has_clinical"] = df["pseudo_id"].isin(clin)
    df["linked"] = df["has_imaging"] & df["has_segmentation"] & df["has_genes"]
    reason = np.select([~df["has_imaging"], ~df["has_segmentation"], ~df["has_genes"]],
                       ["no_imaging", "no_segmentation", "no_genes"], default="")
    df["drop_reason"] = reason
    return df


def cohort_tables(cohort: str | Path, key: bytes, progress: Progress | None = None) -> dict[str, pd.DataFrame]:
    """Every table of a raw cohort, keyed by suite name (see the module table)."""
    root = Path(cohort)
    if not root.is_dir():
        raise CohortError(f"cohort folder {str(root)!r} does not exist; pass the folder written by `rgops synth`")
    imaging, series, segs = imaging_tables(root, key, progress)
    genes, samples = gene_tables(root / "genes.tsv", key)
    clinical = clinical_table(root / "clinical.csv", key)
    return {"imaging": imaging, "series": series, "segmentations": segs, "genes": genes, "samples": samples,
            "clinical": clinical, "linkage": linkage_table(imaging, segs, samples, clinical)}


def datasets_tables(root: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of an ingested datasets folder, keyed by suite name.

    ``datasets_patches``: one row per patch (``pseudo_id, split, channels, side, min_value,
    max_value, n_nonfinite, gene_n_nonfinite, n_splits_of_patient``); min/max over finite values.
    ``datasets_genes``: one row per panel gene (``gene, train_mean, train_sd, n_nonfinite``),
    statistics over finite train-split values, one per training patient (``ddof=0``). ``clinical`` from clinical.parquet,
    ``imaging`` and ``segmentations`` from instances.parquet (:func:`instance_tables`), when those
    files exist.

    Raises:
        DatasetError: the folder is missing files or its arrays do not line up.
    """
    from rgops.data.datasets import Datasets

    root = Path(root)
    ds = Datasets.load(root, mmap=True)
    n = len(ds)
    flat = np.asarray(ds.patches, dtype=np.float32).reshape(n, -1)
    finite = np.isfinite(flat)
    with np.errstate(all="ignore"):
        pmin = np.where(finite.any(axis=1), np.where(finite, flat, np.inf).min(axis=1, initial=np.inf), np.nan)
        pmax = np.where(finite.any(axis=1), np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf), np.nan)
    manifest = ds.manifest.reset_index(drop=True)
    n_splits = manifest.groupby("pseudo_id")["split"].nunique()
    patches = pd.DataFrame({
        "pseudo_id": manifest["pseudo_id"].to_numpy(),
        "split": manifest["split"].to_numpy(),
        "channels": int(ds.patches.shape[1]),
        "side": int(ds.patches.shape[-1]),
        "min_value": pmin.astype(np.float64),
        "max_value": pmax.astype(np.float64),
        "n_nonfinite": (~finite).sum(axis=1),
        "gene_n_nonfinite": (~np.isfinite(ds.genes)).sum(axis=1),
        "n_splits_of_patient": manifest["pseudo_id"].map(n_splits).to_numpy(),
    })
    # One row per training patient: the panel is fitted per patient (a patient has several slices, and
    # weighing patients by their slice count moves the mean off 0 on a small cohort).
    train_rows = ds.indices("train")
    first = ~manifest["pseudo_id"].iloc[train_rows].duplicated().to_numpy()
    train = ds.genes[train_rows[first]].astype(np.float64)
    train = np.where(np.isfinite(train), train, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():  # an all-NaN gene gives NaN statistics: the suite flags it
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(train, axis=0) if len(train) else np.full(len(ds.panel), np.nan)
            sd = np.nanstd(train, axis=0) if len(train) else np.full(len(ds.panel), np.nan)
    genes = pd.DataFrame({"gene": list(ds.panel.genes), "train_mean": mean, "train_sd": sd,
                          "n_nonfinite": (~np.isfinite(ds.genes)).sum(axis=0)})
    tables: dict[str, pd.DataFrame] = {"datasets_patches": patches, "datasets_genes": genes}
    if (root / "clinical.parquet").is_file():
        clin = pd.read_parquet(root / "clinical.parquet")
        clin = clin.reset_index() if "pseudo_id" not in clin.columns else clin
        out = pd.DataFrame({"pseudo_id": clin["pseudo_id"].astype(str).to_numpy()})
        tables["clinical"] = _clinical_columns(clin, out)
    if (root / "instances.parquet").is_file():
        tables.update(instance_tables(pd.read_parquet(root / "instances.parquet")))
    return tables


def instance_tables(inst: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The imaging and segmentations tables from ingest's ``instances.parquet``.

    That table (one row per de-identified CT/SEG instance, written by
    :mod:`rgops.data.ingest`) counts leftover identifying attributes in ``deid_leftovers``; here
    ``leftover_identifiers`` becomes ``"<n> identifying attribute(s)"`` when the count is not 0.
    """
    def col(name: str, default: Any = None) -> pd.Series:
        return inst[name] if name in inst.columns else pd.Series([default] * len(inst), index=inst.index)

    is_seg = (col("sop_class_uid", "").astype(str) == SEG_SOP_CLASS) | (col("modality", "").astype(str) == "SEG")
    images, segs = inst[~is_seg], inst[is_seg]
    row_mm = pd.to_numeric(col("pixel_spacing_row_mm")[~is_seg], errors="coerce")
    col_mm = pd.to_numeric(col("pixel_spacing_col_mm")[~is_seg], errors="coerce")
    ts = col("transfer_syntax_uid", "")[~is_seg].astype(str)
    decodable = {t: transfer_syntax_decodable(t) if t else False for t in set(ts)}
    leftovers = pd.to_numeric(col("deid_leftovers", 0)[~is_seg], errors="coerce").fillna(0).astype(int)
    imaging = pd.DataFrame({
        "pseudo_id": images["pseudo_id"].astype(str).to_numpy() if "pseudo_id" in inst.columns else None,
        "series_uid": col("series_uid", "")[~is_seg].to_numpy(),
        "instance_number": None,
        "modality": col("modality", "")[~is_seg].astype(str).to_numpy(),
        "pixel_spacing_min_mm": np.fmin(row_mm, col_mm).to_numpy(),
        "pixel_spacing_max_mm": np.fmax(row_mm, col_mm).to_numpy(),
        "slice_thickness_mm": pd.to_numeric(col("slice_thickness_mm")[~is_seg], errors="coerce").to_numpy(),
        "rows": col("rows")[~is_seg].to_numpy(),
        "columns": col("columns")[~is_seg].to_numpy(),
        "rescale_slope": pd.to_numeric(col("rescale_slope")[~is_seg], errors="coerce").to_numpy(),
        "rescale_intercept": pd.to_numeric(col("rescale_intercept")[~is_seg], errors="coerce").to_numpy(),
        "transfer_syntax": ts.to_numpy(),
        "transfer_syntax_decodable": ts.map(decodable).astype(bool).to_numpy(),
        "identity_removed": (col("patient_identity_removed", "")[~is_seg].astype(str) == "YES").to_numpy(),
        "leftover_identifiers": np.where(leftovers.to_numpy() > 0,
                                         [f"{n} identifying attribute(s)" for n in leftovers], ""),
    }, columns=list(IMAGING_COLUMNS))
    own = set(zip(images.get("pseudo_id", pd.Series(dtype=str)), images.get("series_uid", pd.Series(dtype=str))))
    seg_table = pd.DataFrame({
        "pseudo_id": segs["pseudo_id"].astype(str).to_numpy() if "pseudo_id" in inst.columns else None,
        "modality": col("modality", "")[is_seg].astype(str).to_numpy(),
        "referenced_series_uid": col("referenced_series_uid", "")[is_seg].to_numpy(),
        "references_own_series": [(p, r) in own for p, r in zip(segs.get("pseudo_id", []),
                                                                 segs.get("referenced_series_uid", []))],
        "n_frames": pd.to_numeric(col("n_frames", 0)[is_seg], errors="coerce").to_numpy(),
    })
    return {"imaging": imaging, "segmentations": seg_table}
