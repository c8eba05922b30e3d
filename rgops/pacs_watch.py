"""Watching a PACS for new CT + SEG studies and extracting each exactly once.

Each poll lists the PACS's studies (QIDO-RS, paged). A study that holds CT and SEG and whose
instance count did not change since the previous poll (it has finished arriving; the count is kept
in the state file, so one poll per scheduled run works too) is retrieved,
extracted and, by default, answered with an SR stored back into it (:func:`rgops.pacs.extract_study`).

Exactly once across restarts: the state file records every study handled (by a keyed digest of its
UID, never the UID itself), written atomically (temporary file, fsync, rename) after each study;
and before extracting, the study's series are checked for an SR rgops already stored, which covers
a crash between storing the SR and saving the state. A study that fails with a typed error
(no usable SEG, undecodable pixels) is recorded as failed and retried at most ``max_attempts``
times; an unreachable PACS stops the poll without counting an attempt.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from rgops.errors import ConfigError, PacsError, RgopsError
from rgops.pacs import Pacs, extract_study, has_rgops_sr, study_label

log = logging.getLogger(__name__)

STATE_FORMAT = "rgops-pacs-watch/1"


@dataclass
class WatchState:
    """What the watcher has seen: study digest -> ``{"status", "attempts", "at", "error"?, "sr"?, "n_instances"?}``;
    status ``arriving`` (waiting for the count to settle), ``done`` or ``failed``."""

    path: Path
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "WatchState":
        """Read the state file (a missing file is an empty state).

        Raises:
            ConfigError: a state file that is not this format (say which file and what to do).
        """
        p = Path(path)
        if not p.exists():
            return cls(p)
        try:
            data = json.loads(p.read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(p, dict(data["studies"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"watch state {str(p)!r} is not a {STATE_FORMAT} file ({exc}); move it away to "
                              "start over (studies already answered keep their SR and are not redone)") from None

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": STATE_FORMAT, "studies": self.studies}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def arriving(self, label: str, n_instances: int) -> None:
        """Note a study's instance count; it is extracted once a later poll sees the same count."""
        entry = self.studies.get(label, {"attempts": 0})
        entry.update(status="arriving", n_instances=int(n_instances),
                     at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.studies[label] = entry
        self.save()

    def record(self, label: str, status: str, **extra: Any) -> None:
        entry = self.studies.get(label, {"attempts": 0})
        entry.update(status=status, attempts=int(entry.get("attempts", 0)) + 1,
                     at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra)
        self.studies[label] = entry
        self.save()


@dataclass
class PollReport:
    """Counts of one poll (what Prefect and the CLI show)."""

    seen: int = 0
    done: int = 0
    failed: int = 0
    waiting: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


Extract = Callable[[list[Dataset]], Mapping[str, Any]]


class Watcher:
    """Polls a PACS and extracts each new CT + SEG study once (see the module docstring).

    Args:
        pacs: the DICOMweb connection.
        extract: CT series + SEG datasets -> an ``/extract`` answer (it de-identifies).
        state_path: the state file (JSON, atomic writes).
        store: store the SR back into each study.
        max_attempts: tries of a study that fails with a typed error before it is left as failed.
        settle: wait until a study's instance count is unchanged between two polls.
    """

    def __init__(self, pacs: Pacs, extract: Extract, state_path: str | Path, store: bool = True,
                 max_attempts: int = 3, settle: bool = True, page_size: int = 100) -> None:
        self.pacs, self.extract, self.store = pacs, extract, store
        self.state = WatchState.load(state_path)
        self.max_attempts, self.settle, self.page_size = max_attempts, settle, page_size

    def studies(self) -> Iterator[dict[str, Any]]:
        """Every study on the PACS, page by page."""
        offset = 0
        while True:
            page = self.pacs.studies(offset=offset, limit=self.page_size)
            yield from page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def why_not(self, study: Mapping[str, Any]) -> str | None:
        """Why ``study`` is not extracted in this poll (None: extract it now)."""
        label = study_label(study["uid"])
        entry = self.state.studies.get(label) or {}
        status, n = entry.get("status"), int(study["n_instances"])
        if status == "done":
            return "done"
        if status == "failed":
            return "failed" if int(entry.get("attempts", 0)) >= self.max_attempts else None
        if not {"CT", "SEG"} <= set(study["modalities"]):
            return "skipped"  # not recorded: its SEG may still come
        if self.settle and (status != "arriving" or entry.get("n_instances") != n):
            self.state.arriving(label, n)  # persisted, so one poll per scheduled run still settles
            return "waiting"
        return None

    def process(self, study: Mapping[str, Any]) -> str:
        """Extract one study (and store its SR); record the outcome. Returns ``done`` or ``failed``.

        Raises:
            PacsError: the PACS failed (nothing recorded: the next poll retries).
        """
        label = study_label(study["uid"])
        if has_rgops_sr(self.pacs.series(study["uid"])):
            log.info("%s already holds an rgops SR; recorded as done without extracting again", label)
            self.state.record(label, "done", note="SR found on the PACS")
            return "done"
        try:
            out = extract_study(self.pacs, study["uid"], self.extract, store=self.store)
        except PacsError:
            raise
        except RgopsError as exc:
            log.warning("%s failed: %s", label, exc)
            self.state.record(label, "failed", error=str(exc)[:500])
            return "failed"
        self.state.record(label, "done", sr=(out.get("stored") or {}).get("sop_instance_uid"),
                          model=f"{out['model']['name']}/{out['model']['version']}")
        return "done"

    def poll(self) -> PollReport:
        """One pass over the PACS's studies."""
        report = PollReport()
        try:
            for study in self.studies():
                report.seen += 1
                reason = self.why_not(study)
                if reason is None:
                    reason = self.process(study)
                    setattr(report, reason, getattr(report, reason) + 1)
                elif reason in ("waiting", "skipped"):
                    setattr(report, reason, getattr(report, reason) + 1)
        except PacsError as exc:
            log.warning("poll stopped: %s", exc)
            report.errors.append(str(exc))
        log.info("poll: %s", report.to_json())
        return report

    def run(self, interval_s: float, max_polls: int | None = None,
            stop: Callable[[], bool] | None = None, sleep: Callable[[float], Any] | None = None) -> int:
        """Poll every ``interval_s`` seconds until ``stop()`` or ``max_polls``; returns the polls made."""
        import time

        polls = 0
        while (max_polls is None or polls < max_polls) and not (stop and stop()):
            self.poll()
            polls += 1
            if max_polls is None or polls < max_polls:
                (sleep or time.sleep)(interval_s)
        return polls


def registry_extractor(alias: str = "champion", tracking_uri: str | None = None, device: str = "cpu") -> Extract:
    """An ``extract`` function over the CAE the registry alias points at (``models:/rgops-cae@alias``),
    reloaded when the alias moves (checked before each study).

    Raises:
        RegistryError: no CAE version carries the alias.
        TrackingError: the registry is unreachable.
    """
    from rgops import serving

    resolve, load = serving.registry_source(tracking_uri, device=device)
    slot = serving.ModelSlot(serving.CAE_MODEL, alias, resolve, load)
    slot.refresh()

    def extract(datasets: list[Dataset]) -> Mapping[str, Any]:
        try:
            slot.refresh()
        except RgopsError as exc:  # keep the loaded version, as the service does
            log.warning("%s@%s not reloaded: %s", slot.name, alias, exc)
        return serving.extract_dicom(slot.current, datasets)

    return extract
