"""The ingested datasets folder: loading, checking and the gene panel.

See docs/architecture.md for the layout. ``Datasets.load`` checks that every array is present and
aligned, so a model never trains on half a dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgops.errors import DatasetError, GeneMismatchError, GeneTableError

SPLITS = ("train", "val", "test")
DATASET_FILES = ("patches.npy", "masks.npy", "genes.parquet", "gene_panel.json", "manifest.parquet")
#: Hashed into the data version when present (written by ingest since patch contract v2).
OPTIONAL_FILES = ("patch_spec.json",)


@dataclass(frozen=True)
class GenePanel:
    """The ordered gene list of a model and the statistics that normalise a profile for it.

    ``mean`` and ``std`` are statistics of ``log2(x + 1)`` over the training split.
    """

    genes: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    transform: str = "log2p1-zscore"
    n_train: int = 0

    def __post_init__(self) -> None:
        if len(self.genes) != len(self.mean) or len(self.genes) != len(self.std):
            raise DatasetError(
                f"gene panel has {len(self.genes)} genes but {len(self.mean)} means and "
                f"{len(self.std)} standard deviations; re-run `rgops ingest`"
            )
        if len(set(self.genes)) != len(self.genes):
            raise DatasetError("gene panel lists a gene twice; re-run `rgops ingest`")

    def __len__(self) -> int:
        return len(self.genes)

    @classmethod
    def fit(cls, log_expr: pd.DataFrame) -> "GenePanel":
        """Fit the statistics on a samples x genes table that is already ``log2(x + 1)``."""
        mean = log_expr.mean(axis=0, skipna=True).to_numpy(dtype=np.float64)
        std = log_expr.std(axis=0, ddof=0, skipna=True).to_numpy(dtype=np.float64)
        mean = np.nan_to_num(mean, nan=0.0)
        std = np.where(~np.isfinite(std) | (std < 1e-6), 1.0, std)
        return cls(tuple(str(g) for g in log_expr.columns), mean, std, n_train=len(log_expr))

    def normalise(self, raw: pd.DataFrame | pd.Series | Mapping[str, float], impute: bool = False) -> np.ndarray:
        """Raw (non-log) expression -> z-scored float32 array ``(n, G)`` in panel order.

        Args:
            raw: one profile (mapping or Series, gene -> value) or a samples x genes DataFrame.
            impute: fill genes absent from ``raw`` (and missing values) with the training mean
                instead of refusing.

        Raises:
            GeneMismatchError: genes of the panel are absent from ``raw`` and ``impute`` is false.
            GeneTableError: values are not numbers, are negative or not finite.
        """
        if isinstance(raw, Mapping) and not isinstance(raw, pd.Series):
            raw = pd.Series(dict(raw), dtype="object")
        frame = raw.to_frame().T if isinstance(raw, pd.Series) else raw
        missing = [g for g in self.genes if g not in frame.columns]
        if missing and not impute:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise GeneMismatchError(
                f"profile lacks {len(missing)} of the model's {len(self.genes)} genes ({shown}); "
                "send every gene of the panel (GET /metadata lists them) or ask for imputation "
                "with training means"
            )
        frame = frame.reindex(columns=list(self.genes))
        try:
            # one conversion of the whole table: per column, pd.to_numeric cost 90% of a /generate call
            flat = pd.to_numeric(pd.Series(frame.to_numpy(dtype=object).ravel()), errors="raise")
            values = flat.to_numpy(dtype=np.float64).reshape(frame.shape)
        except (ValueError, TypeError) as exc:
            raise GeneTableError(f"gene profile holds a value that is not a number ({exc}); "
                                 "send numeric expression values") from None
        finite = values[~np.isnan(values)]
        if np.isinf(finite).any():
            raise GeneTableError("gene profile holds an infinite value; send finite expression values")
        if (finite < 0).any():
            bad = [self.genes[j] for j in np.unique(np.argwhere(values < 0)[:, 1])][:10]
            raise GeneTableError(
                f"gene profile holds negative expression for {', '.join(bad)}; rgops expects raw "
                "non-negative expression (it applies log2(x+1) itself)"
            )
        nan = np.isnan(values)
        if nan.any() and not impute:
            bad = [self.genes[j] for j in np.unique(np.argwhere(nan)[:, 1])][:10]
            raise GeneTableError(
                f"gene profile has missing (NaN) values for {', '.join(bad)}; send values for "
                "every gene or ask for imputation with training means"
            )
        logged = np.log2(values + 1.0)
        logged = np.where(nan, self.mean[None, :], logged)
        return ((logged - self.mean[None, :]) / self.std[None, :]).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"genes": list(self.genes), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "transform": self.transform, "n_train": self.n_train}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GenePanel":
        try:
            return cls(tuple(data["genes"]), np.asarray(data["mean"], dtype=np.float64),
                       np.asarray(data["std"], dtype=np.float64), data.get("transform", "log2p1-zscore"),
                       int(data.get("n_train", 0)))
        except KeyError as exc:
            raise DatasetError(f"gene panel lacks the key {exc}; re-run `rgops ingest`") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def read(cls, path: str | Path) -> "GenePanel":
        return cls.from_json(json.loads(Path(path).read_text()))


#: How genes.parquet is written, by both paths of :func:`write_genes_parquet`: expression values are
#: continuous (a dictionary page never pays off) and nothing filters on them (column statistics are
#: never read); without both, writing 2,000 columns takes about 30% less time.
GENES_PARQUET_OPTIONS: dict[str, Any] = {"use_dictionary": False, "write_statistics": False}


def write_genes_parquet(frame: pd.DataFrame, path: str | Path, compression: str | None = "snappy") -> None:
    """Write a patches x genes float table as ``frame.to_parquet(path, compression=compression,
    **GENES_PARQUET_OPTIONS)`` would, byte for byte, faster.

    pandas converts a frame to arrow column by column (about 0.14 s for 2,000 genes, most of a small
    cohort's table write); this builds the arrow columns from one numpy array and writes the pandas
    metadata that pandas would have written, taken from a one-column slice of ``frame``. Anything
    other than one float dtype under unique string column names goes through pandas unchanged.
    """
    names = [str(c) for c in frame.columns]
    homogeneous = (frame.shape[1] > 0 and len(set(frame.dtypes)) == 1 and frame.dtypes.iloc[0].kind == "f"
                   and all(isinstance(c, str) for c in frame.columns) and len(set(names)) == len(names)
                   and not isinstance(frame.index, pd.MultiIndex) and frame.index.name is not None
                   and frame.index.name not in names)
    if not homogeneous:
        frame.to_parquet(path, compression=compression, **GENES_PARQUET_OPTIONS)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    probe = pa.Table.from_pandas(frame.iloc[:0, :1])  # one float column and the index, as pandas writes them
    meta = json.loads(probe.schema.metadata[b"pandas"])
    column, index_field = meta["columns"][0], probe.schema.field(1)
    meta["columns"] = [dict(column, name=n, field_name=n) for n in names] + meta["columns"][1:]
    values = np.asfortranarray(frame.to_numpy())  # contiguous columns: no copy per pa.array
    arrays = [pa.array(values[:, j], from_pandas=True) for j in range(values.shape[1])]  # NaN -> null, as pandas
    arrays.append(pa.array(frame.index.to_numpy(dtype=object), type=index_field.type))
    schema = pa.schema([probe.schema.field(0).with_name(n) for n in names] + [index_field],
                       metadata={b"pandas": json.dumps(meta).encode("utf8")})
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path, compression=compression,
                   **GENES_PARQUET_OPTIONS)


def _genes_index_column(pf: Any) -> str | None:
    """The one named index column pandas restores a genes.parquet frame from, or None."""
    meta = pf.schema_arrow.pandas_metadata or {}
    index = meta.get("index_columns") or []
    if len(index) == 1 and isinstance(index[0], str) and index[0] in pf.schema_arrow.names:
        return index[0]
    return None


def read_genes_parquet(path: str | Path) -> tuple[list[str], list[Any], np.ndarray]:
    """``(gene names, row index values, float32 (rows, genes))`` of a genes.parquet file.

    Read with pyarrow's ``ParquetFile`` (``read_table`` adds a dataset layer that costs half again
    for 2,000 columns) and stacked into one array: a pandas frame of 2,000 float columns costs a
    quarter more and is thrown away. A table whose index pandas would not restore from one named
    column (no pandas metadata, a range index, several index columns) is read through pandas.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    table = pf.read()
    index = _genes_index_column(pf)
    if index is not None:
        names = [n for n in table.column_names if n != index]
        values = np.empty((table.num_rows, len(names)), dtype=np.float32)
        try:
            for j, name in enumerate(names):
                values[:, j] = table.column(name).to_numpy(zero_copy_only=False)
        except (TypeError, ValueError) as exc:  # a column that is not numbers
            raise DatasetError(f"genes.parquet column {name!r} does not hold numbers ({exc}); "
                               "re-run `rgops ingest`") from None
        return names, table.column(index).to_pylist(), values
    frame = table.to_pandas()
    try:
        return [str(c) for c in frame.columns], list(frame.index), frame.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"genes.parquet holds values that are not numbers ({exc}); re-run `rgops ingest`") from None


def read_genes_layout(path: str | Path) -> tuple[list[str], list[Any]]:
    """``(gene names, row index values)`` of a genes.parquet file, without reading its values: the
    file's footer and its index column (what :func:`read_genes_parquet` would return beside the array).
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    index = _genes_index_column(pf)
    if index is None:  # pandas decides what the index and the columns are
        frame = pf.read().to_pandas()
        return [str(c) for c in frame.columns], list(frame.index)
    names = [n for n in pf.schema_arrow.names if n != index]
    return names, pf.read(columns=[index]).column(index).to_pylist()


@dataclass
class Datasets:
    """An ingested datasets folder, loaded and checked.

    Attributes:
        patches: float32 ``(N, 1, S, S)`` in [-1, 1].
        masks: uint8 ``(N, 1, S, S)`` tumour masks on the same crops.
        genes: float32 ``(N, G)`` normalised expression, row-aligned with ``patches``.
        manifest: one row per patch (``pseudo_id``, ``split``, provenance).
        panel: the gene panel and its training statistics.
        root: the folder it was loaded from (None when built from arrays).
        spec: the patch contract (``patch_spec.json``); the default contract when built from arrays.
    """

    patches: np.ndarray
    masks: np.ndarray
    genes: np.ndarray
    manifest: pd.DataFrame
    panel: GenePanel
    root: Path | None = None
    spec: Any = None  #: the :class:`rgops.data.patch.PatchSpec` the patches were cut with

    def __post_init__(self) -> None:
        n = len(self.patches)
        if self.patches.ndim != 4 or self.patches.shape[1] != 1 or self.patches.shape[2] != self.patches.shape[3]:
            raise DatasetError(f"patches have shape {self.patches.shape}, expected (N, 1, S, S)")
        if self.masks.shape != self.patches.shape:
            raise DatasetError(f"masks have shape {self.masks.shape}, expected {self.patches.shape} like patches")
        if self.genes.shape != (n, len(self.panel)):
            raise DatasetError(
                f"gene matrix has shape {self.genes.shape}, expected ({n}, {len(self.panel)}) "
                "(one row per patch, one column per panel gene)"
            )
        if len(self.manifest) != n:
            raise DatasetError(f"manifest has {len(self.manifest)} rows for {n} patches")
        for col in ("pseudo_id", "split"):
            if col not in self.manifest.columns:
                raise DatasetError(f"manifest lacks the column {col!r}; re-run `rgops ingest`")
        bad = sorted(set(self.manifest["split"]) - set(SPLITS))
        if bad:
            raise DatasetError(f"manifest has unknown split names {bad}; expected {list(SPLITS)}")
        if self.spec is None:
            from rgops.data.patch import PatchSpec

            self.spec = PatchSpec(size=self.size)
        if self.spec.size != self.size:
            raise DatasetError(f"patch_spec.json says S={self.spec.size} but patches are {self.size} px; re-run `rgops ingest`")

    @property
    def mm_per_px(self) -> np.ndarray:
        """``(N,)`` physical size of one patch pixel (the contract's scale input); 1.0 where unrecorded."""
        if "mm_per_px" in self.manifest.columns:
            return self.manifest["mm_per_px"].to_numpy(dtype=np.float32)
        return np.ones(len(self), dtype=np.float32)

    @property
    def patient_ids(self) -> np.ndarray:
        """``(N,)`` pseudonymous patient id of every patch row (a patient has several slices)."""
        return self.manifest["pseudo_id"].to_numpy()

    @property
    def size(self) -> int:
        """Patch side S."""
        return int(self.patches.shape[-1])

    def __len__(self) -> int:
        return len(self.patches)

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    @classmethod
    def load(cls, root: str | Path, mmap: bool = False, genes: np.ndarray | None = None) -> "Datasets":
        """Load and check a datasets folder written by ``rgops ingest``.

        Args:
            root: the folder.
            mmap: memory-map patches.npy and masks.npy instead of reading them.
            genes: the float32 gene matrix the folder was just written from (ingest's contract check
                before it replaces the old folder): genes.parquet's gene names, row ids and row count
                are read and checked, its values are not read back but taken from here.

        Raises:
            DatasetError: a file is missing or the arrays do not line up.
        """
        root = Path(root)
        missing = [f for f in DATASET_FILES if not (root / f).is_file()]
        if missing:
            raise DatasetError(
                f"datasets folder {str(root)!r} lacks {', '.join(missing)}; run `rgops ingest COHORT {root}` first"
            )
        mode = "r" if mmap else None
        patches = np.load(root / "patches.npy", mmap_mode=mode)
        masks = np.load(root / "masks.npy", mmap_mode=mode)
        if genes is None:
            gene_names, gene_rows, genes = read_genes_parquet(root / "genes.parquet")
        else:
            gene_names, gene_rows = read_genes_layout(root / "genes.parquet")
            if genes.shape != (len(gene_rows), len(gene_names)) or genes.dtype != np.float32:
                raise DatasetError(f"genes.parquet holds {len(gene_rows)} rows x {len(gene_names)} genes, but the "
                                   f"matrix written was {genes.dtype} {genes.shape}; re-run `rgops ingest`")
        manifest = pd.read_parquet(root / "manifest.parquet")
        panel = GenePanel.read(root / "gene_panel.json")
        if gene_names != list(panel.genes):
            raise DatasetError("genes.parquet columns differ from gene_panel.json genes; re-run `rgops ingest`")
        if "pseudo_id" in manifest.columns and gene_rows != list(manifest["pseudo_id"]):
            raise DatasetError("genes.parquet rows are not in manifest order; re-run `rgops ingest`")
        if patches.dtype != np.float32:
            raise DatasetError(f"patches.npy has dtype {patches.dtype}, expected float32")
        from rgops.data.patch import SPEC_FILE, PatchSpec

        spec = PatchSpec.read(root) if (root / SPEC_FILE).is_file() else None
        return cls(patches, masks, genes, manifest, panel, root, spec)

    def digest(self) -> str:
        """SHA-256 over the dataset files (:func:`rgops.lineage.datasets_digest`), or over the arrays when
        built in memory: the data version."""
        if self.root is not None:
            from rgops.lineage import datasets_digest

            names = DATASET_FILES + tuple(f for f in OPTIONAL_FILES if (self.root / f).is_file())
            return datasets_digest(self.root, names)
        h = hashlib.sha256()
        for arr in (self.patches, self.masks, self.genes):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.panel.to_json()).encode())
        return h.hexdigest()
