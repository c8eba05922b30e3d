"""Lineage: what version is this data, this code, this file. The one place that answers it.

Which digest is used where:

- :func:`sha256_file` — one file. The files of a logged model (``data/model.pth``, ``config.json``,
  ``gene_panel.json``, ``metadata.json``, ``state_dict.pt``: run tags ``rgops.weights_sha256`` and
  ``rgops.files_sha256``, checked before unpickling) and the program head
  (``program_head/<sha256>.json``), in :mod:`rgops.tracking`.
- :func:`sha256_files` — the one loop over several files (relative name, NUL, bytes, in the given
  order). Everything below is built on it:

  - :func:`datasets_digest` — the datasets folder (``Datasets.digest()``): *the data version of a
    model*. Run tags ``rgops.dataset_digest``, version tags ``rgops.data_digest`` and
    ``rgops.validation.data_digest``, the model card's ``training_data.digest``; the promotion gates
    compare it (:mod:`rgops.promotion`).
  - :func:`cohort_fingerprint` — a raw cohort folder plus the ``ingest`` params: the ingest cache key
    (``.rgops-ingest.json`` beside the datasets, :mod:`rgops.retrain`).
  - :func:`content_sha256` — any folder DVC does not track: the fallback data version of a
    validation report (:func:`data_version`).

- :func:`dvc_hash` — DVC's own hash (``md5`` of ``<path>.dvc`` or of the stage output in
  ``dvc.lock``), read as YAML without running DVC: run tag ``rgops.dvc_hash``, model card
  ``training_data.dvc_hash``, validation reports.
- :func:`git_commit` — the code version (``-dirty`` when tracked files changed): run and version tag
  ``rgops.git_commit``, model card ``git_commit``. :func:`data_version` records the revision of the
  repository holding the *data* (``git_rev``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

UNTRACKED = "untracked"
_CHUNK = 1 << 20


def _update(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of one file's bytes (hex)."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def sha256_files(root: str | Path, names: Iterable[str], seed: bytes = b"") -> str:
    """SHA-256 over ``seed``, then each file's relative name, a NUL and its bytes, in the given order."""
    root = Path(root)
    h = hashlib.sha256(seed)
    for name in names:
        h.update(name.encode() + b"\0")
        _update(h, root / name)
    return h.hexdigest()


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def content_sha256(folder: str | Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``folder`` (sorted)."""
    return sha256_files(folder, _all_files(Path(folder)))


def datasets_digest(root: str | Path, names: Iterable[str]) -> str:
    """The data version of a datasets folder: SHA-256 over its named dataset files."""
    return sha256_files(root, names)


def cohort_fingerprint(cohort: str | Path, params: Mapping[str, Any]) -> str:
    """SHA-256 over every cohort file (path and bytes) and the ``ingest`` params: the ingest cache key."""
    seed = json.dumps(params.get("ingest") or {}, sort_keys=True).encode()
    return sha256_files(cohort, _all_files(Path(cohort)), seed=seed)


def _git(args: list[str], cwd: str | Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the rgops code (or of ``cwd``), with ``-dirty`` when tracked files changed;
    ``unknown`` outside git (an installed wheel)."""
    cwd = cwd if cwd is not None else Path(__file__).resolve().parent
    head = _git(["rev-parse", "HEAD"], cwd)
    if head is None:
        return "unknown"
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return head + ("-dirty" if dirty else "")


def _outs_hash(outs: Any, matches: Any) -> str | None:
    for out in outs or []:
        if isinstance(out, dict) and matches(str(out.get("path", "")).rstrip("/")):
            found = out.get("md5") or out.get("hash")
            if found:
                return str(found)
    return None


def _dvc_lookup(path: str | Path) -> tuple[str | None, str | None]:
    """``(hash, source)`` from ``<path>.dvc`` or the nearest ``dvc.lock`` above ``path``; ``(None, None)``."""
    target = Path(path).resolve()
    dvc_file = target.with_name(target.name + ".dvc")
    if dvc_file.is_file():
        meta = yaml.safe_load(dvc_file.read_text()) or {}
        found = _outs_hash(meta.get("outs"), lambda p: p == target.name)
        if found:
            return found, dvc_file.name
    for folder in target.parents:
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except yaml.YAMLError:
            log.warning("%s is not valid YAML; %s counts as not tracked by DVC", lock, target.name)
            return None, None
        for stage in stages.values():
            found = _outs_hash(stage.get("outs"), lambda p, f=folder: (f / p).resolve() == target)
            if found:
                return found, "dvc.lock"
        return None, None
    return None, None


def dvc_hash(path: str | Path) -> str:
    """The DVC hash of a folder: from ``<path>.dvc`` or ``dvc.lock`` (a stage output); ``untracked``."""
    return _dvc_lookup(path)[0] or UNTRACKED


def data_version(path: str | Path) -> dict[str, Any]:
    """Git revision of the repository holding ``path`` and the DVC hash of ``path``.

    Returns:
        ``{"path", "git_rev", "dvc_hash", "hash_source"}`` where ``hash_source`` is the
        ``.dvc`` file or ``dvc.lock`` the hash came from, or ``"content-sha256 (not tracked by
        DVC)"`` when DVC does not track the folder; ``git_rev`` is None outside a git checkout.
    """
    target = Path(path).resolve()
    git_rev = _git(["rev-parse", "HEAD"], target if target.is_dir() else target.parent)
    found, source = _dvc_lookup(target)
    if found is None:
        found = content_sha256(target) if target.is_dir() else None
        source = "content-sha256 (not tracked by DVC)"
        log.info("%s is not tracked by DVC; its data version is a content SHA-256", target.name)
    return {"path": str(path), "git_rev": git_rev, "dvc_hash": found, "hash_source": source}
