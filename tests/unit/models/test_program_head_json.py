"""ProgramHead: the JSON form evaluation writes, tracking logs and serving reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rgops.errors import ShapeError
from rgops.models.program_head import ProgramHead

LOGGED = {"names": ["hypoxia", "emt"], "coef": [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]], "intercept": [0.5, -1.0]}


def test_json_round_trip_is_the_logged_form() -> None:
    head = ProgramHead.from_json(json.loads(json.dumps(LOGGED)))
    assert head.to_json() == LOGGED and head.latent_dim == 4
    z = np.array([[1.0, 1.0, 1.0, 2.0]])
    np.testing.assert_allclose(head(z), [[1.0 - 1.0 + 1.0 + 0.5, 2.0 - 1.0]])


def test_refuses_what_does_not_fit() -> None:
    with pytest.raises(ShapeError, match="2 names"):
        ProgramHead.from_json({**LOGGED, "intercept": [0.5]})
    with pytest.raises(ShapeError, match="lacks 'coef'"):
        ProgramHead.from_json({"names": ["a"], "intercept": [0.0]})
    with pytest.raises(ShapeError, match=r"latents \(B, 4\)"):
        ProgramHead.from_json(LOGGED)(np.zeros((1, 3)))
