"""The data version of a folder: git revision and DVC hash, for validation reports and lineage.

DVC records the hash of a tracked folder in ``<folder>.dvc`` (``dvc add``) or, for a pipeline
output, in ``dvc.lock``; both are read here as YAML, without running DVC. A folder that DVC does
not track gets a SHA-256 over its files instead, marked as such.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _outs_hash(outs: Any, rel: str) -> str | None:
    for out in outs or []:
        if isinstance(out, dict) and str(out.get("path", "")).rstrip("/") == rel:
            return out.get("md5") or out.get("hash") or None
    return None


def content_sha256(folder: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``folder`` (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def data_version(path: str | Path) -> dict[str, Any]:
    """Git revision of the repository holding ``path`` and the DVC hash of ``path``.

    Returns:
        ``{"path", "git_rev", "dvc_hash", "hash_source"}`` where ``hash_source`` is the
        ``.dvc`` file or ``dvc.lock`` the hash came from, or ``"content-sha256 (not tracked by
        DVC)"`` when DVC does not track the folder; ``git_rev`` is None outside a git checkout.
    """
    target = Path(path).resolve()
    top = _git(["rev-parse", "--show-toplevel"], target if target.is_dir() else target.parent)
    git_rev = _git(["rev-parse", "HEAD"], Path(top)) if top else None
    dvc_hash, source = None, None
    dvc_file = target.with_name(target.name + ".dvc")
    if dvc_file.is_file():
        meta = yaml.safe_load(dvc_file.read_text()) or {}
        dvc_hash, source = _outs_hash(meta.get("outs"), target.name), str(dvc_file.name)
    if dvc_hash is None and top:
        lock = Path(top) / "dvc.lock"
        if lock.is_file():
            rel = target.relative_to(Path(top)).as_posix() if target.is_relative_to(Path(top)) else None
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if rel else {}
            for stage in stages.values():
                dvc_hash = _outs_hash(stage.get("outs"), rel)
                if dvc_hash:
                    source = "dvc.lock"
                    break
    if dvc_hash is None:
        dvc_hash = content_sha256(target) if target.is_dir() else None
        source = "content-sha256 (not tracked by DVC)"
        log.info("%s is not tracked by DVC; its data version is a content SHA-256", target.name)
    return {"path": str(path), "git_rev": git_rev, "dvc_hash": dvc_hash, "hash_source": source}
