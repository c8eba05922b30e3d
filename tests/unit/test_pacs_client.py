"""PACS configuration from the environment and the watcher's state file (no server needed)."""

from __future__ import annotations

import json

import pytest

from rgops.errors import ConfigError, DicomError
from rgops.pacs import PacsConfig, check_uid, study_label
from rgops.pacs_watch import STATE_FORMAT, WatchState


def test_config_from_env(tmp_path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = PacsConfig.from_env({"RGOPS_PACS_URL": "https://pacs.example.org/dicom-web/", "RGOPS_PACS_USER": "rg",
                               "RGOPS_PACS_PASSWORD_FILE": str(secret), "RGOPS_PACS_TIMEOUT_S": "5"})
    assert cfg == PacsConfig("https://pacs.example.org/dicom-web", "rg", "s3cret", 5.0)
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize("env, needle", [
    ({}, "RGOPS_PACS_URL is 'unset'"),
    ({"RGOPS_PACS_URL": "ftp://x"}, "expected the PACS's DICOMweb root URL"),
    ({"RGOPS_PACS_URL": "http://u:p@pacs/dicom-web"}, "carries credentials"),
    ({"RGOPS_PACS_URL": "http://pacs/dicom-web", "RGOPS_PACS_USER": "u"}, "without RGOPS_PACS_PASSWORD"),
    ({"RGOPS_PACS_URL": "http://pacs/dicom-web", "RGOPS_PACS_TIMEOUT_S": "0"}, "expected seconds > 0"),
])
def test_config_refusals(env, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        PacsConfig.from_env(env)


@pytest.mark.parametrize("bad", ["", "abc", "1.2..3", "../studies", "1." * 40, None])
def test_uids_are_checked(bad) -> None:
    with pytest.raises(DicomError, match="expected a DICOM UID"):
        check_uid(bad, "study_uid")
    assert check_uid("1.2.840.10008.1", "study_uid") == "1.2.840.10008.1"


def test_study_labels_are_keyed_digests() -> None:
    a, b = study_label("1.2.3", b"k1"), study_label("1.2.3", b"k2")
    assert a != b and a.startswith("study-") and "1.2.3" not in a and a == study_label("1.2.3", b"k1")


def test_state_round_trips_atomically(tmp_path) -> None:
    path = tmp_path / "s" / "watch.json"
    state = WatchState.load(path)
    assert state.studies == {}
    state.record("study-a", "failed", error="no SEG")
    state.record("study-a", "done", sr="1.2")
    back = WatchState.load(path)
    assert back.studies["study-a"]["status"] == "done" and back.studies["study-a"]["attempts"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["watch.json"]  # no temporary file left
    assert json.loads(path.read_text())["format"] == STATE_FORMAT


def test_a_foreign_state_file_is_refused(tmp_path) -> None:
    path = tmp_path / "watch.json"
    path.write_text('{"something": "else"}')
    with pytest.raises(ConfigError, match="is not a rgops-pacs-watch/1 file.*move it away"):
        WatchState.load(path)


def test_pacs_errors_map_to_http_status() -> None:
    from rgops.errors import PacsError, StudyError, StudyNotFound
    from services.errors import status_of

    assert status_of(StudyNotFound("x")) == 404 and status_of(PacsError("x")) == 502
    assert status_of(StudyError("x")) == 422
