"""rgops.retrain pieces that need no training: refusal joining, owner tags, gate tables, the approval
decision (the cache key is tested in test_lineage.py)."""

from __future__ import annotations

import os

import pytest

from rgops.errors import PromotionRefused
from rgops.promotion import GateReport, GateResult
from rgops.retrain import Candidate, approval_decision, gates_markdown, owner_tags, refusal_error, settle


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


def _reports():
    ok = GateReport("cae", (GateResult("floor", "cae.probe_r2.primary.lo", 0.3, 0.0, True, "fine"),))
    bad = GateReport("gan", (GateResult("floor", "gan.cond_consistency", -0.05, 0.1, False, "gate floor"),))
    return {"cae": {**ok.to_json(), "refusal": None}, "gan": {**bad.to_json(), "refusal": "rgops-gan version 3 ..."}}


CANDS = {"cae": Candidate("cae", "rgops-cae", "3", {}), "gan": Candidate("gan", "rgops-gan", "3", {})}


def test_auto_approves_what_passed_and_never_asks():
    def ask(cand, gates):
        raise AssertionError("auto mode asked a reviewer")

    recorded = []
    out = settle(CANDS, _reports(), "auto", ask, lambda c, *d: recorded.append((c.kind, *d)))
    assert out == {"promoted": {"cae": "3"}, "pending": {}, "rejected": {}}
    assert recorded == [("cae", True, "rgops-gates", "automatic: every gate passed")]


def test_manual_asks_with_the_gate_table_and_records_the_answer():
    asked = []

    def ask(cand, gates):
        asked.append((cand.kind, gates))
        return False, "dr-ada", "samples too blurry"

    recorded = []
    out = settle(CANDS, _reports(), "manual", ask, lambda c, *d: recorded.append((c.kind, *d)))
    assert out == {"promoted": {}, "pending": {}, "rejected": {"cae": "3"}}
    assert [k for k, _ in asked] == ["cae"] and "| floor | cae.probe_r2.primary.lo | 0.3 | 0 | pass |" in asked[0][1]
    assert recorded == [("cae", False, "dr-ada", "samples too blurry")]


def test_unanswered_manual_approval_stays_pending_and_refused_never_decided():
    reports = _reports()
    assert approval_decision(CANDS["gan"], reports["gan"], "auto", lambda c, g: None) is None
    out = settle(CANDS, reports, "manual", lambda c, g: None, lambda c, *d: pytest.fail("recorded a decision"))
    assert out == {"promoted": {}, "pending": {"cae": "3"}, "rejected": {}}
    with pytest.raises(Exception, match="approval mode 'sometimes'"):
        approval_decision(CANDS["cae"], reports["cae"], "sometimes", lambda c, g: None)
