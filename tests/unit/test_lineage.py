"""rgops.lineage: the data version (DVC hash from a .dvc file or dvc.lock, content hash otherwise), the
ingest cache key and the one SHA-256 loop."""

from __future__ import annotations

import subprocess

from rgops.lineage import cohort_fingerprint, content_sha256, data_version, dvc_hash, sha256_file, sha256_files


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
    assert dvc_hash(data) == "def.dir" and dvc_hash(tmp_path / "elsewhere") == "untracked"


def test_fingerprint_changes_with_bytes_names_and_ingest_params(tmp_path):
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "a.dcm").write_bytes(b"one")
    (tmp_path / "genes.tsv").write_text("gene_symbol\tP1\n")
    params = {"ingest": {"patch_size": 64}}
    base = cohort_fingerprint(tmp_path, params)
    assert base == cohort_fingerprint(tmp_path, {"ingest": {"patch_size": 64}})
    assert base != cohort_fingerprint(tmp_path, {"ingest": {"patch_size": 128}})
    (tmp_path / "ct" / "a.dcm").write_bytes(b"two")
    changed = cohort_fingerprint(tmp_path, params)
    assert changed != base
    (tmp_path / "ct" / "a.dcm").rename(tmp_path / "ct" / "b.dcm")
    assert cohort_fingerprint(tmp_path, params) != changed


def test_one_loop_names_and_bytes(tmp_path):
    import hashlib

    (tmp_path / "a").write_bytes(b"x" * (3 << 20))  # more than one read chunk
    assert sha256_file(tmp_path / "a") == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    (tmp_path / "b").write_bytes(b"")
    assert sha256_files(tmp_path, ["a", "b"]) != sha256_files(tmp_path, ["b", "a"])
    assert content_sha256(tmp_path) == sha256_files(tmp_path, ["a", "b"])
