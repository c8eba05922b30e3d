"""tests/privacy.py, the search for planted identifiers, finds them inside parquet and fails loudly on a
file it cannot decode."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.privacy import UndecodableFile, leaks_in_tree


def test_finds_an_identifier_inside_compressed_parquet(tmp_path):
    pd.DataFrame({"name": ["Doe^Jane-Roe-XYZ"] * 200}).to_parquet(tmp_path / "t.parquet", compression="gzip",
                                                            write_statistics=False)
    assert b"Doe^Jane-Roe-XYZ" not in (tmp_path / "t.parquet").read_bytes()  # compressed away
    assert leaks_in_tree(tmp_path, {"Doe^Jane-Roe-XYZ"}) == {"t.parquet": ["Doe^Jane-Roe-XYZ"]}


def test_an_undecodable_parquet_fails_the_search(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really a table")
    with pytest.raises(UndecodableFile, match="broken.parquet cannot be decoded as parquet"):
        leaks_in_tree(tmp_path, {"Doe^Jane"})
