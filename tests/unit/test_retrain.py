"""rgops.retrain pieces that need no training: cache key, refusal joining, owner tags, gate tables."""

from __future__ import annotations

import os

from rgops.errors import PromotionRefused
from rgops.promotion import GateReport, GateResult
from rgops.retrain import gates_markdown, owner_tags, refusal_error


def test_refusals_are_joined_and_absent_when_all_passed():
    ok = GateReport("cae", (GateResult("floor", "cae.cv_r2.mean", 0.3, 0.0, True, "fine"),))
    bad = GateReport("gan", (GateResult("floor", "gan.frechet", 150.0, 100.0, False, "gate floor[gan.frechet]: x"),))
    reports = {"cae": {**ok.to_json(), "refusal": None}, "gan": {**bad.to_json(), "refusal": "rgops-gan version 2 ..."}}
    err = refusal_error(reports)
    assert isinstance(err, PromotionRefused) and str(err) == "rgops-gan version 2 ..."
    assert refusal_error({"cae": reports["cae"]}) is None
    md = gates_markdown(reports)
    assert "rgops-cae (champion: none) — PASSED" in md and "| floor | gan.frechet | 150 | 100 | FAIL |" in md


def test_owner_tags_name_this_process():
    tags = owner_tags()
    assert tags["rgops.pid"] == str(os.getpid()) and tags["rgops.host"]
