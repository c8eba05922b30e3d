"""`rgops synth` on the command line: help, bad options, a small run, refusing a non-empty folder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rgops.cli import app

SMALL = "synth:\n  n_patients: 1\n  image_size: 64\n  genes_per_module: 12\n  n_genes: 240\n" \
        "  min_slices: 4\n  max_slices: 8\n  slice_thickness_mm: [5.0]\n"


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    for option in ("--patients", "--seed", "--genes", "--image-size", "--truth-out", "--params", "--force"):
        assert option in result.output


def test_bad_option_exits_1_with_one_line_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--patients", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: synth.n_patients: got 0, expected >= 1"
    assert not (tmp_path / "c").exists()


def test_small_run_then_refuses_the_non_empty_folder_unless_forced(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(SMALL)
    out, truth = tmp_path / "cohort", tmp_path / "elsewhere" / "truth"
    args = ["synth", str(out), "--patients", "2", "--seed", "5", "--params", str(params), "--truth-out", str(truth)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 patients" in result.stdout
    meta = json.loads((out / "cohort.json").read_text())
    assert (meta["n_patients"], meta["seed"], meta["config"]["image_size"]) == (2, 5, 64)
    assert (truth / "ground_truth.json").is_file()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "not empty" in again.stderr and "--force" in again.stderr
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
