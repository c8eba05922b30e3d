"""GenePanel.normalise: one vectorised conversion, the same output as converting column by column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rgops.data.datasets import Datasets, GenePanel
from rgops.errors import GeneMismatchError, GeneTableError

GENES = tuple(f"G{j}" for j in range(50))


def _panel() -> GenePanel:
    rng = np.random.default_rng(0)
    return GenePanel(GENES, rng.uniform(1, 3, len(GENES)), rng.uniform(0.5, 1.5, len(GENES)), n_train=10)


def _per_column(panel: GenePanel, frame: pd.DataFrame) -> np.ndarray:
    """The former implementation's conversion (pd.to_numeric column by column), as the reference."""
    values = frame.reindex(columns=list(panel.genes)).apply(pd.to_numeric, errors="raise").to_numpy(np.float64)
    logged = np.where(np.isnan(values), panel.mean[None, :], np.log2(values + 1.0))
    return ((logged - panel.mean[None, :]) / panel.std[None, :]).astype(np.float32)


CASES = {
    "floats": {g: 1.5 * j for j, g in enumerate(GENES)},
    "ints": {g: j for j, g in enumerate(GENES)},
    "numeric strings": {g: f"{j}.25" for j, g in enumerate(GENES)},
    "mixed with None and NaN": {g: (None if j % 7 == 0 else float("nan") if j % 11 == 0 else str(j) if j % 2 else j)
                                for j, g in enumerate(GENES)},
    "extra genes": {**{g: 2.0 for g in GENES}, "NOT_IN_PANEL": 5.0},
}


@pytest.mark.parametrize("name", list(CASES))
def test_vectorised_matches_per_column(name: str) -> None:
    panel = _panel()
    raw = CASES[name]
    series = pd.Series(raw, dtype="object")
    got = panel.normalise(series, impute=True)
    want = _per_column(panel, series.to_frame().T)
    assert got.dtype == np.float32 and got.shape == (1, len(GENES))
    np.testing.assert_array_equal(got, want)


def test_frame_of_many_samples_and_missing_genes() -> None:
    panel = _panel()
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.uniform(0, 100, (7, len(GENES) - 3)), columns=list(GENES[3:]))
    got = panel.normalise(frame, impute=True)
    np.testing.assert_array_equal(got, _per_column(panel, frame))
    np.testing.assert_array_equal(got[:, :3], 0.0)  # imputed with the training mean: z = 0
    with pytest.raises(GeneMismatchError, match="lacks 3 of the model's 50 genes"):
        panel.normalise(frame)


@pytest.mark.parametrize("value, why", [("abc", "not a number"), (-1.0, "negative"), (float("inf"), "infinite")])
def test_bad_values_refused(value: object, why: str) -> None:
    raw = {g: 1.0 for g in GENES}
    raw["G7"] = value  # type: ignore[assignment]
    with pytest.raises(GeneTableError, match=why):
        _panel().normalise(raw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compression", ["snappy", None])
def test_gene_table_writer_writes_what_pandas_writes(tmp_path, dtype, compression) -> None:
    from rgops.data.datasets import GENES_PARQUET_OPTIONS, write_genes_parquet

    rng = np.random.default_rng(3)
    genes = [f"G{j}" for j in range(37)] + ["NaN", "pseudo id", "ÄBC"]  # odd but legal names
    frame = pd.DataFrame(rng.normal(size=(9, len(genes))).astype(dtype), columns=genes,
                         index=pd.Index([f"P-{i:016x}" for i in (0, 0, 1, 2, 2, 2, 3, 4, 5)], name="pseudo_id"))
    frame.iloc[2, 5] = np.nan
    frame.to_parquet(tmp_path / "pandas.parquet", compression=compression, **GENES_PARQUET_OPTIONS)
    write_genes_parquet(frame, tmp_path / "fast.parquet", compression)
    assert (tmp_path / "fast.parquet").read_bytes() == (tmp_path / "pandas.parquet").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "fast.parquet"), frame)


def test_gene_table_writer_leaves_other_frames_to_pandas(tmp_path) -> None:
    from rgops.data.datasets import write_genes_parquet

    mixed = pd.DataFrame({"a": [1.0, 2.0], "b": [1, 2]}, index=pd.Index(["x", "y"], name="pseudo_id"))
    unnamed = pd.DataFrame({"a": [1.0, 2.0]})
    for i, frame in enumerate((mixed, unnamed)):
        write_genes_parquet(frame, tmp_path / f"{i}.parquet")
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{i}.parquet"), frame)


def test_genes_parquet_reader_reads_what_pandas_reads(tmp_path) -> None:
    from rgops.data.datasets import read_genes_parquet
    from rgops.errors import DatasetError

    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(6, 5)).astype(np.float32), columns=[f"G{j}" for j in range(5)],
                         index=pd.Index(["P-a", "P-a", "P-b", "P-c", "P-c", "P-d"], name="pseudo_id"))
    frame.iloc[1, 2] = np.nan
    cases = {"named index": frame, "range index": frame.reset_index(drop=True),
             "float64": frame.astype(np.float64)}
    for label, df in cases.items():
        df.to_parquet(tmp_path / "g.parquet")
        names, rows, values = read_genes_parquet(tmp_path / "g.parquet")
        back = pd.read_parquet(tmp_path / "g.parquet")
        assert names == list(back.columns) and rows == list(back.index), label
        np.testing.assert_array_equal(values, back.to_numpy(np.float32))
        assert values.dtype == np.float32
    frame.assign(G1=["x"] * 6).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="G1"):
        read_genes_parquet(tmp_path / "bad.parquet")


def test_genes_layout_is_what_the_reader_returns_beside_the_values(tmp_path) -> None:
    from rgops.data.datasets import read_genes_layout, read_genes_parquet

    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(4, 3)).astype(np.float32), columns=["G0", "G1", "G2"],
                         index=pd.Index(["P-b", "P-a", "P-a", "P-c"], name="pseudo_id"))
    for label, df in {"named index": frame, "range index": frame.reset_index(drop=True)}.items():
        df.to_parquet(tmp_path / "g.parquet")
        names, rows, _ = read_genes_parquet(tmp_path / "g.parquet")
        assert read_genes_layout(tmp_path / "g.parquet") == (names, rows), label


def test_load_with_the_written_gene_matrix_checks_its_shape_against_the_file(tiny_datasets) -> None:
    from rgops.errors import DatasetError

    full = Datasets.load(tiny_datasets)
    given = Datasets.load(tiny_datasets, genes=full.genes.copy())
    np.testing.assert_array_equal(given.genes, full.genes)
    assert given.manifest.equals(full.manifest) and given.panel.genes == full.panel.genes
    for wrong in (full.genes[:-1], full.genes[:, :-1], full.genes.astype(np.float64)):
        with pytest.raises(DatasetError, match="genes.parquet holds .* rows x .* genes, but the matrix written"):
            Datasets.load(tiny_datasets, genes=wrong)
