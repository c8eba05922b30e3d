"""`dvc repro` of the data stages for real, twice: the second run must be a no-op.

The pipeline (dvc.yaml, params.yaml, expectations/ and the rgops sources the stages depend on) is
copied into a fresh git + DVC repository with a tiny synth section, so the test never touches the
checkout's own data or lock file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

TINY_SYNTH = {"n_patients": 6, "n_genes": 120, "genes_per_module": 8, "image_size": 96,
              "field_of_view_mm": 180.0, "min_slices": 6, "max_slices": 10}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture()
def pipeline_repo(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "pipeline"
    work.mkdir()
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copytree(REPO / "expectations", work / "expectations")
    shutil.copytree(REPO / "rgops", work / "rgops", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(TINY_SYNTH)
    params["synth"].update(getattr(request, "param", {}))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    _run(["git", "init", "-q"], work, env)
    _run(["dvc", "init", "-q"], work, env)
    return work, env


def test_dvc_repro_twice_second_is_noop(pipeline_repo: tuple[Path, dict[str, str]]) -> None:
    work, env = pipeline_repo
    data_stages = ["synth", "validate_cohort", "ingest", "validate_datasets"]
    first = _run(["dvc", "repro", *data_stages], work, env)
    for stage in data_stages:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert (work / "data" / "datasets" / "patches.npy").is_file()
    assert (work / "reports" / "validation" / "datasets.json").is_file()
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(data_stages) <= set(lock["stages"])

    second = _run(["dvc", "repro", *data_stages], work, env)
    assert "Running stage" not in second.stdout, second.stdout
    status = _run(["dvc", "status", *data_stages], work, env)
    assert "up to date" in status.stdout, status.stdout

    # A change to a param a stage reads re-runs that stage and those after it, not those before.
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["ingest"]["split_seed"] = params["ingest"]["split_seed"] + 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro", *data_stages], work, env)
    assert "Running stage 'synth'" not in third.stdout
    assert "Running stage 'ingest'" in third.stdout, third.stdout


@pytest.mark.parametrize("pipeline_repo", [{"field_of_view_mm": 480.0}], indirect=True)
def test_dvc_repro_stops_on_bad_data(pipeline_repo: tuple[Path, dict[str, str]]) -> None:
    """5 mm pixels are outside the validated range: the pipeline stops before ingest."""
    work, env = pipeline_repo
    proc = subprocess.run(["dvc", "repro", "ingest"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "imaging.pixel_spacing_max_mm" in proc.stdout + proc.stderr
    assert "Running stage 'ingest'" not in proc.stdout
    assert not (work / "data" / "datasets").exists()
