"""params.yaml is checked whole at load, numbers included (rgops.config.check_params)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rgops.cli import app
from rgops.config import check_params, load_params
from rgops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, edit) -> Path:
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(edit(text))
    return path


def test_project_params_pass_the_whole_check():
    params = load_params(REPO / "params.yaml")
    assert set(params) == {"synth", "ingest", "validate", "train", "evaluate", "promote", "serve"}


@pytest.mark.parametrize("old, new, key", [
    ("    gan.frechet: 100.0            #", "    gan.frechet: 1.0e9            #", "promote.floors.gan.frechet"),
    ("  n_boot: 1000", "  n_boot: 1.0e3", "evaluate.n_boot"),
    ("        lr: 0.002", "        lr: 2.0e-3x", "train.cae.presets.tiny.lr"),
    ("  max_request_mb: 1024", "  max_request_mb: many", "serve.max_request_mb"),
    ("  split_seed: 0", "  split_seed: 0.5", "ingest.split_seed"),
])
def test_a_bad_number_in_any_section_is_refused_at_load_naming_the_key(tmp_path, old, new, key):
    path = _params(tmp_path, lambda t: t.replace(old, new, 1))
    assert new in path.read_text()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(path)
    assert load_params(path, check=False)  # the YAML itself reads


def test_exponent_without_sign_says_why():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["promote"]["floors"]["gan.frechet"] = yaml.safe_load("1.0e9")
    assert params["promote"]["floors"]["gan.frechet"] == "1.0e9"  # PyYAML: a string
    with pytest.raises(ConfigError, match=r"promote\.floors\.gan\.frechet: expected a number, got '1\.0e9' "
                                          r"\(text, not a number.*write 1\.0e\+9"):
        check_params(params)


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trian'\]"):
        check_params({"trian": {}})


def test_retrain_refuses_a_bad_params_file_before_anything_runs(tmp_path, tiny_cohort):
    path = _params(tmp_path, lambda t: t.replace("    gan.frechet: 100.0", "    gan.frechet: 1.0e9", 1))
    work, db = tmp_path / "work", tmp_path / "mlflow.db"
    res = CliRunner().invoke(app, ["retrain", str(tiny_cohort), "--params", str(path), "--workdir", str(work),
                                   "--tracking-uri", f"sqlite:///{db}", "--ingest-workers", "0"])
    assert res.exit_code == 1, res.output
    assert "promote.floors.gan.frechet" in res.output and "1.0e9" in res.output
    assert not work.exists() and not db.exists()  # nothing ingested, trained or registered
