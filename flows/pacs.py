"""Prefect flow: watch the hospital PACS and answer each new CT + SEG study once.

Each poll lists the PACS's studies (QIDO-RS); every study due is one task run ("extract
study-<digest>"), so progress and failures show in Prefect: a study that fails with a typed error
(no usable SEG, undecodable pixels) ends its task run Failed with the reason, and the flow goes on.
The idempotence lives in :class:`rgops.pacs_watch.Watcher` (state file + the SR on the PACS), so a
scheduled deployment running one poll per run, the ``rgops pacs watch`` command and a restart of
either never extract a study twice. The PACS comes from the environment (``RGOPS_PACS_URL``,
``RGOPS_PACS_USER``, ``RGOPS_PACS_PASSWORD[_FILE]``), never from parameters.

Run: ``python -m flows.pacs --state .rgops/pacs-watch.json --polls 1``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from rgops.errors import PacsError, RgopsError
from rgops.pacs import Pacs, PacsConfig, study_label
from rgops.pacs_watch import Watcher, registry_extractor

ARTIFACT_KEY = "pacs-watch"


class StudyFailed(RgopsError, RuntimeError):
    """A study the watcher could not answer (the message is the recorded reason)."""


def _pacs_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a study's task only when the PACS failed (I/O), never for a study's own problem."""
    try:
        state.result()
    except PacsError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is the study's: no retry
        return False
    return False


@task(task_run_name="extract {label}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=_pacs_failure)
def extract_study_task(watcher: Watcher, study: dict[str, Any], label: str) -> str:
    """Extract one study and store its SR (rgops.pacs_watch.Watcher.process)."""
    if watcher.process(study) == "failed":
        raise StudyFailed(f"{label}: {watcher.state.studies[label].get('error', 'failed')}")
    return "done"


@flow(name="pacs-watch")
def pacs_watch_flow(state: str = ".rgops/pacs-watch.json", polls: int = 1, interval_s: float = 30.0,
                    alias: str = "champion", store: bool = True, tracking_uri: str | None = None) -> dict[str, int]:
    """Poll the PACS ``polls`` times; extract every settled, new CT + SEG study once.

    Returns:
        Counts: ``seen``, ``done``, ``failed``, ``waiting``, ``skipped`` (this run).
    """
    logger = get_run_logger()
    watcher = Watcher(Pacs(PacsConfig.from_env()), registry_extractor(alias, tracking_uri), state, store=store)
    counts = {"seen": 0, "done": 0, "failed": 0, "waiting": 0, "skipped": 0}
    for i in range(polls):
        for study in watcher.studies():  # an unreachable PACS fails the flow run, with the reason
            counts["seen"] += 1
            reason = watcher.why_not(study)
            if reason is None:
                run = extract_study_task(watcher, study, study_label(study["uid"]), return_state=True)
                counts["done" if run.is_completed() else "failed"] += 1
            elif reason in ("waiting", "skipped"):
                counts[reason] += 1
        logger.info("poll %d of %d: %s", i + 1, polls, counts)
        if i + 1 < polls:
            time.sleep(interval_s)
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=f"# PACS watch\n\n| studies | n |\n|---|---|\n{rows}\n",
                             description="studies seen and answered by this run")
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", default=".rgops/pacs-watch.json")
    parser.add_argument("--polls", type=int, default=1)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--no-store", action="store_true")
    a = parser.parse_args()
    print(pacs_watch_flow(a.state, a.polls, a.interval, a.alias, not a.no_store))  # noqa: T201 - CLI output
