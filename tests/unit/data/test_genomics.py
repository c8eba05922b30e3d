"""Gene-expression and clinical tables: malformed input is a typed error."""

from __future__ import annotations

import numpy as np
import pytest

from rgops.data.genomics import read_clinical, read_gene_table
from rgops.errors import CohortError, GeneTableError


def write(tmp_path, text, name="genes.tsv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_values_and_counts_missing(tmp_path):
    p = write(tmp_path, "gene_symbol\tA-1\tB-2\nEGFR\t3\t\nKRAS\t0\t7.5\n")
    t = read_gene_table(p)
    assert t.genes == ["EGFR", "KRAS"]
    assert list(t.expr.index) == ["A-1", "B-2"]
    assert t.n_missing == 1 and np.isnan(t.expr.loc["B-2", "EGFR"])
    assert t.log2p1().loc["A-1", "EGFR"] == pytest.approx(2.0)


@pytest.mark.parametrize("text, match", [
    ("gene_symbol\tA\tB\n\t1\t2\nKRAS\t1\t2\n", "without a gene symbol"),
    ("gene_symbol\tA\tB\nNA\t1\t2\n", "without a gene symbol"),
    ("gene_symbol\tA\tB\nEGFR\t1\t2\nEGFR\t3\t4\n", "EGFR.*more than once"),
    ("gene_symbol\tA\tA\nEGFR\t1\t2\n", "columns 2 and 3 carry the same sample id"),
    ("gene_symbol\tA\tB\nEGFR\t1\thigh\n", "EGFR.*'high'.*not a number"),
    ("gene_symbol\tA\tB\nEGFR\t1\t-2\n", "EGFR.*negative"),
    ("symbol\tA\nEGFR\t1\n", "expected a first column 'gene_symbol'"),
    ("gene_symbol\tA\tB\nEGFR\t1\tNAN\n", "EGFR.*'NAN'.*not a number"),  # not one of the missing markers
    ("gene_symbol\tA\tB\nEGFR\t1\nKRAS\t1\t2\n", "line 2 has 2 .*field.*header 3"),  # a cell and its tab dropped
    ("gene_symbol\tA\tB\nEGFR\t1\t2\t3\nKRAS\t1\t2\n", "line 2 has 4 .*field.*header 3"),  # one field too many
    ("gene_symbol\tA\tB\nEGFR\t1\tinf\n", "EGFR.*infinite"),
])
def test_malformed_tables_refused(tmp_path, text, match):
    with pytest.raises(GeneTableError, match=match):
        read_gene_table(write(tmp_path, text))


def test_sample_ids_not_in_messages(tmp_path):
    with pytest.raises(GeneTableError) as info:
        read_gene_table(write(tmp_path, "gene_symbol\tR01-SECRET\tR01-SECRET\nEGFR\t1\t2\n"))
    assert "R01-SECRET" not in str(info.value)


def test_clinical_age_capped_and_duplicates_refused(tmp_path):
    p = write(tmp_path, "patient_id,age,sex\nA,95,F\nB,62,M\n", "clinical.csv")
    df = read_clinical(p)
    assert df.loc["A", "age"] == 90 and df.loc["B", "age"] == 62
    with pytest.raises(CohortError, match="repeats a patient_id"):
        read_clinical(write(tmp_path, "patient_id,age\nA,1\nA,2\n", "clinical.csv"))


def test_clinical_columns_outside_the_schema_are_dropped_and_counted(tmp_path, caplog):
    text = ("patient_id,age,sex,notes,referring_physician\n"
            "A,61,F,Jane Doe called twice,Dr Smith\nB,62,M,,Dr Jones\n")
    with caplog.at_level("WARNING", logger="rgops.data.genomics"):
        df = read_clinical(write(tmp_path, text, "clinical.csv"))
    assert list(df.columns) == ["age", "sex"] and df.index.name == "patient_id"
    assert "dropped 2 column(s) outside the documented schema" in caplog.text
    assert "Jane" not in caplog.text and "notes" not in caplog.text and "Smith" not in caplog.text


@pytest.mark.parametrize("cells, missing", [
    (["3", "7.5", "0", "12"], 0),  # all numbers: pandas' numeric reader
    ([" 3", "7.5 ", "NA", "12"], 1),  # padded numbers and a marker
    (["3", "7.5", " NA ", "12"], 1),  # a padded marker: the text path strips it
    (["3", "\"7.5\"", "", "null"], 2),  # quoted number, empty and null markers
])
def test_every_way_of_writing_a_value_reads_the_same(tmp_path, cells, missing):
    p = write(tmp_path, "gene_symbol\tA\tB\n" + f"EGFR\t{cells[0]}\t{cells[1]}\nKRAS\t{cells[2]}\t{cells[3]}\n")
    t = read_gene_table(p)
    want = np.array([[3.0, np.nan if missing > 1 else 0.0], [7.5, 12.0 if missing < 2 else np.nan]])
    if missing == 1:
        want[0, 1] = np.nan
    np.testing.assert_array_equal(t.expr.to_numpy(), want)
    assert t.n_missing == missing and list(t.expr.columns) == ["EGFR", "KRAS"] and list(t.expr.index) == ["A", "B"]
