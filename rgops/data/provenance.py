"""Where a datasets folder (and so a model) came from: a synthetic cohort or site data.

Ingest reads the cohort's ``cohort.json`` (``rgops synth`` writes one naming its generator; a
hospital's cohort usually has none) and writes ``cohort_origin.json`` beside the datasets; the model
card copies it as ``trained_on``, which ``/metadata`` and every ``/extract`` answer carry, and
program scores of a model trained on synthetic data come with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ORIGIN_FILE = "cohort_origin.json"
SYNTHETIC_WARNING = ("the model was trained on a synthetic cohort ({generator}); its program map is fitted on "
                     "synthetic data and program scores on real CT are a research illustration, not a measurement")


def cohort_origin(cohort: str | Path, n_patients: int) -> dict[str, Any]:
    """``{"origin": "synthetic" | "site", "generator", "n_patients"}`` of a cohort folder."""
    meta_path = Path(cohort) / "cohort.json"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as exc:
            log.warning("cohort.json is unreadable (%s); recording the cohort's origin as site data", exc)
    generator = str(meta.get("generator") or "")
    return {"format": "rgops-cohort-origin/1", "origin": "synthetic" if generator else "site",
            "generator": generator or None, "n_patients": int(n_patients)}


def trained_on(datasets: Any, digest: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The model card's ``trained_on``: origin, generator, size, data digest and patch spec.

    ``datasets`` is a :class:`~rgops.data.datasets.Datasets` (its folder's ``cohort_origin.json``
    is read) or None (models built without datasets: origin ``unknown``).
    """
    origin: dict[str, Any] = {"origin": "unknown", "generator": None, "n_patients": None}
    root = getattr(datasets, "root", None)
    if root is not None and (Path(root) / ORIGIN_FILE).is_file():
        origin.update(json.loads((Path(root) / ORIGIN_FILE).read_text()))
    origin.pop("format", None)
    n_patients = None
    if datasets is not None and "pseudo_id" in getattr(datasets, "manifest", {}):
        n_patients = int(datasets.manifest["pseudo_id"].nunique())
    return {**origin, "n_patients_ingested": n_patients, "n_patches": len(datasets) if datasets is not None else None,
            "data_digest": digest, "patch_spec": spec}


def program_score_warning(card: dict[str, Any] | None) -> str | None:
    """The warning program scores carry when the model's card says it was trained on synthetic data."""
    origin = ((card or {}).get("trained_on") or {})
    if origin.get("origin") == "synthetic":
        return SYNTHETIC_WARNING.format(generator=origin.get("generator") or "rgops synth")
    return None
