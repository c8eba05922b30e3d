"""The program head: a linear map from a CAE's latent to gene-program scores.

It is fitted at evaluation time (:func:`rgops.evaluation.evaluate.fit_program_head`) on training
patients, logged beside the model in its MLflow run (:func:`rgops.tracking.log_program_head`, as the
JSON of :meth:`ProgramHead.to_json`), digest-checked on load, and applied by serving to every latent
it returns. The JSON form ``{"names": [...], "coef": [[...]], "intercept": [...]}`` is the contract
between those three places.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgops.errors import ShapeError


@dataclass(frozen=True)
class ProgramHead:
    """``scores = latent @ coef.T + intercept``: ``(B, latent_dim) -> (B, P)``.

    Attributes:
        names: the ``P`` program names, in the order of the score columns.
        coef: ``(P, latent_dim)`` float64 coefficients on the raw (unstandardised) latent.
        intercept: ``(P,)`` float64.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray

    def __post_init__(self) -> None:
        if self.coef.ndim != 2 or self.coef.shape[0] != len(self.names) or self.intercept.shape != (len(self.names),):
            raise ShapeError(f"program head has {len(self.names)} names, coef {self.coef.shape} and "
                             f"intercept {self.intercept.shape}; expected (P, latent_dim) and (P,)")

    @property
    def latent_dim(self) -> int:
        return int(self.coef.shape[1])

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        """``(B, latent_dim) -> (B, P)`` program scores."""
        if latent.ndim != 2 or latent.shape[1] != self.coef.shape[1]:
            raise ShapeError(f"program head expects latents (B, {self.coef.shape[1]}), got {latent.shape}")
        return latent @ self.coef.T + self.intercept

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProgramHead":
        """From the logged JSON form (``names``, ``coef``, ``intercept``).

        Raises:
            ShapeError: a key is missing or the arrays do not fit the names.
        """
        try:
            names, coef, intercept = data["names"], data["coef"], data["intercept"]
        except KeyError as exc:
            raise ShapeError(f"program head JSON lacks {exc}; expected keys names, coef, intercept") from None
        return cls(tuple(str(n) for n in names), np.asarray(coef, dtype=np.float64),
                   np.asarray(intercept, dtype=np.float64))

    def to_json(self) -> dict[str, Any]:
        """The JSON form :meth:`from_json` reads (lists of floats)."""
        return {"names": list(self.names), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
