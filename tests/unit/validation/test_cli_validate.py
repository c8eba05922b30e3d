"""`rgops validate`: summary, JSON result, Data Docs and exit status."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rgops.cli import app
from tests.unit.validation.test_runner import _datasets

REPO = Path(__file__).resolve().parents[3]


def test_validate_datasets_exit_codes_json_and_docs(tmp_path):
    runner = CliRunner()
    ok = _datasets(tmp_path / "ok")
    res = runner.invoke(app, ["validate", "--datasets", str(ok), "--params", str(REPO / "params.yaml"),
                              "--json-out", str(tmp_path / "ok.json"), "--docs-out", str(tmp_path / "docs")])
    assert res.exit_code == 0, res.output
    assert "validation PASSED (datasets)" in res.output
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True
    assert (tmp_path / "docs" / "index.html").is_file()

    bad = _datasets(tmp_path / "bad")
    patches = np.load(bad / "patches.npy")
    patches[1, 0, 0, 0] = np.inf
    np.save(bad / "patches.npy", patches)
    res = runner.invoke(app, ["validate", "--datasets", str(bad), "--params", str(REPO / "params.yaml"),
                              "--json-out", str(tmp_path / "bad.json")])
    assert res.exit_code == 1
    assert "CRITICAL datasets_patches.n_nonfinite" in res.output and "P-0000000000000001" in res.output
    assert "error: 1 critical expectation(s) failed: datasets_patches.n_nonfinite" in res.output
    data = json.loads((tmp_path / "bad.json").read_text())
    assert data["passed"] is False and data["n_critical_failures"] == 1


def test_validate_needs_exactly_one_target(tmp_path):
    res = CliRunner().invoke(app, ["validate", str(tmp_path), "--datasets", str(tmp_path)])
    assert res.exit_code == 1 and "exactly one" in res.output
