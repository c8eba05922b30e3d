"""What the real NSCLC Radiogenomics collection looks like, summarised from the IDC index.

The synthetic cohort (``rgops.data.synth``) draws scanner manufacturers, slice counts, slice
thicknesses, convolution kernels, ages, sexes and patient-id prefixes from the real collection
(Bakr et al., Sci Data 2018; 211 patients), as listed in the NCI Imaging Data Commons index shipped
by the ``idc-index-data`` package. The index is a ~75 MB parquet file, so the summary is computed
once by :func:`summarize_collection` and committed as ``nsclc_radiogenomics_reference.json``; the
generator reads only that JSON (:func:`load_reference`).

The IDC index has no SliceThickness or ConvolutionKernel column, so those two distributions are
parsed from the CT series descriptions that state them (e.g. ``"1.25MM CHEST BONE"``,
``"Thorax  1.0  B45f"``); the JSON records how many series each one rests on.

Everything per patient uses that patient's *primary* CT series: the original (not analysis-result)
CT series with the most instances, which is the diagnostic chest CT rather than a scout or a
reformat.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from rgops.errors import ConfigError

log = logging.getLogger(__name__)

COLLECTION_ID = "nsclc_radiogenomics"
REFERENCE_JSON = Path(__file__).with_name("nsclc_radiogenomics_reference.json")

_THICKNESS = re.compile(r"(\d+(?:\.\d+)?)\s*mm", re.IGNORECASE)
_SIEMENS_KERNEL = re.compile(r"\b(B\d\d[fs])\b")
_COLUMNS = [
    "collection_id", "PatientID", "Modality", "analysis_result_id", "SeriesDescription",
    "instanceCount", "Manufacturer", "ManufacturerModelName", "PatientAge", "PatientSex",
    "StudyDate", "PixelRepresentation",
]


def index_path() -> Path | None:
    """The IDC index parquet of the installed ``idc-index-data`` package, or None without it."""
    try:
        import idc_index_data
    except ImportError:
        return None
    path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    return Path(path) if path is not None and Path(path).is_file() else None


def _shares(counter: Counter[Any], ndigits: int = 4) -> dict[str, float]:
    total = sum(counter.values())
    return {str(k): round(v / total, ndigits) for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def _thickness_mm(description: str) -> float | None:
    match = _THICKNESS.search(description or "")
    if match is None:
        return None
    value = float(match.group(1))
    if value >= 100:  # "625MM" in some GE descriptions means 0.625 mm
        value /= 1000.0
    return value if 0.5 <= value <= 10.0 else None


def _collection_series(index: str | Path | None, collection_id: str) -> tuple[Path, Any, Any, Any]:
    """``(index path, every series of the collection, the original (non-derived) ones, their CT series)``."""
    import pyarrow.parquet as pq

    path = Path(index) if index is not None else index_path()
    if path is None or not path.is_file():
        raise ConfigError(
            f"IDC index not found (got {str(path) if path else None!r}); install `idc-index-data` "
            "or pass the path of idc_index.parquet"
        )
    df = pq.read_table(path, columns=_COLUMNS, filters=[("collection_id", "==", collection_id)]).to_pandas()
    original = df[df["analysis_result_id"].isna()]
    ct = original[original["Modality"] == "CT"]
    if ct.empty:
        raise ConfigError(f"IDC index {str(path)!r} has no CT series for collection {collection_id!r}; "
                          "check the collection id (e.g. 'nsclc_radiogenomics')")
    return path, df, original, ct


def summarize_collection(index: str | Path | None = None, collection_id: str = COLLECTION_ID) -> dict[str, Any]:
    """Summarise a collection of the IDC index into the statistics the generator samples from.

    Args:
        index: the IDC index parquet; default: the one of the installed ``idc-index-data``.
        collection_id: the IDC collection id.

    Returns:
        A JSON-ready mapping: patient count, manufacturer shares (per patient, primary CT series),
        models per manufacturer, slice-count quantiles, slice-thickness and Siemens-kernel shares
        (from series descriptions), age and sex statistics, patient-id prefix shares, study-date
        range, SEG and pixel-representation counts.

    Raises:
        ConfigError: no index is available, or it holds no CT series of ``collection_id``.
    """
    import numpy as np

    path, df, original, ct = _collection_series(index, collection_id)
    primary = ct.sort_values(["instanceCount", "SeriesDescription"], kind="stable").groupby("PatientID").tail(1)
    counts = primary["instanceCount"].astype(int).to_numpy()
    ages = [int(a[:3]) for a in primary["PatientAge"].dropna() if a[:3].isdigit() and int(a[:3]) > 0]
    sexes = Counter(s for s in primary["PatientSex"].dropna() if s in ("M", "F"))
    manufacturers = Counter(m for m in primary["Manufacturer"].dropna() if m)
    models: dict[str, Counter[str]] = {}
    for m, model in primary[["Manufacturer", "ManufacturerModelName"]].dropna().itertuples(index=False):
        if model:
            models.setdefault(m, Counter())[model] += 1
    thickness = Counter(t for t in map(_thickness_mm, ct["SeriesDescription"].fillna("")) if t is not None)
    kernels = Counter(k for d in ct["SeriesDescription"].fillna("") for k in _SIEMENS_KERNEL.findall(d))
    seg = original[original["Modality"] == "SEG"]
    dates = primary["StudyDate"].dropna().astype(str)
    quantiles = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    return {
        "collection_id": collection_id,
        "source": f"idc-index-data ({path.name})",
        "n_patients": int(df["PatientID"].nunique()),
        "n_ct_series": len(ct),
        "n_patients_with_seg": int(seg["PatientID"].nunique()),
        "patient_id_prefixes": _shares(Counter(p.split("-")[0] for p in primary["PatientID"])),
        "manufacturers": _shares(manufacturers),
        "n_patients_without_manufacturer": int(primary["Manufacturer"].isna().sum()),
        "models": {m: _shares(c) for m, c in sorted(models.items())},
        "slices_per_series": {
            "quantiles": quantiles,
            "values": [int(v) for v in np.quantile(counts, quantiles, method="nearest")],
            "mean": round(float(counts.mean()), 2),
        },
        "slice_thickness_mm": {"shares": _shares(thickness), "n_series": int(sum(thickness.values())),
                               "from": "SeriesDescription"},
        "siemens_kernels": {"shares": _shares(kernels), "n_series": int(sum(kernels.values())),
                            "from": "SeriesDescription"},
        "age": {"mean": round(float(np.mean(ages)), 2), "std": round(float(np.std(ages)), 2),
                "min": int(min(ages)), "max": int(max(ages)), "n": len(ages)},
        "sex": _shares(sexes),
        "study_dates": {"min": str(dates.min()), "max": str(dates.max())},
        "pixel_representation": _shares(Counter(int(v) for v in ct["PixelRepresentation"].dropna())),
    }


def write_reference(path: str | Path = REFERENCE_JSON, index: str | Path | None = None) -> dict[str, Any]:
    """Recompute the committed reference JSON from the IDC index and write it to ``path``."""
    summary = summarize_collection(index)
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    log.info("wrote the %s reference summary to %s", summary["collection_id"], path)
    return summary


@lru_cache(maxsize=4)
def _read(path: str) -> str:
    return Path(path).read_text()


def load_reference(path: str | Path = REFERENCE_JSON) -> dict[str, Any]:
    """The committed summary of the real collection (no IDC index needed).

    Raises:
        ConfigError: the JSON is missing or unreadable.
    """
    try:
        return json.loads(_read(str(path)))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"reference summary {str(path)!r} is unreadable ({exc}); regenerate it with "
            "`python -c 'from rgops.data.idc_reference import write_reference; write_reference()'`"
        ) from None
