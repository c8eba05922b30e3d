"""Data version: DVC hash from a .dvc file or dvc.lock, content hash otherwise."""

from __future__ import annotations

import subprocess

from rgops.validation.version import content_sha256, data_version


def test_hash_from_dvc_file_then_lock_then_content(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    data = tmp_path / "data" / "cohort"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("a")
    v = data_version(data)
    assert v["hash_source"].startswith("content-sha256") and v["dvc_hash"] == content_sha256(data)
    assert v["git_rev"] is None  # no commit yet

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  synth:\n    cmd: x\n    outs:\n"
                                       "    - path: data/cohort\n      md5: abc.dir\n")
    assert data_version(data)["dvc_hash"] == "abc.dir" and data_version(data)["hash_source"] == "dvc.lock"

    (tmp_path / "data" / "cohort.dvc").write_text("outs:\n- md5: def.dir\n  path: cohort\n")
    assert data_version(data)["dvc_hash"] == "def.dir"

    before = content_sha256(data)
    (data / "a.txt").write_text("b")
    assert content_sha256(data) != before
