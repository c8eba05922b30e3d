"""What an evaluation returns: the type that :mod:`rgops.evaluation.evaluate` produces and
:mod:`rgops.evaluation.report` draws (its own module, so neither of those imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns: flat metrics plus what the report draws."""

    metrics: dict[str, float]
    info: dict[str, Any]
    details: dict[str, dict[str, Any]]
    target_names: list[str]
    targets: np.ndarray
    strips: dict[str, np.ndarray]
    feature_labels: dict[str, list[str]]
    program_heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation.json`` document the promotion gates read (``metrics`` is flat)."""
        sets: dict[str, Any] = {}
        for name, d in self.details.items():
            entry: dict[str, Any] = {"cv_r2": dict(zip(self.target_names, map(float, d["r2"])))}
            if "recovery" in d:
                entry["recovery"] = d["recovery"]
            sets[name] = entry
        return {"format": "rgops-evaluation/1", "metrics": self.metrics, "info": self.info, "feature_sets": sets,
                "program_heads": self.program_heads}
