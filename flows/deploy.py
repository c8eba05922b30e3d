"""Scheduled retraining: a deployment of the ``retrain`` flow with a cron schedule.

``python -m flows.deploy COHORT --cron "0 3 * * 1"`` registers the deployment with the Prefect server
named by ``PREFECT_API_URL`` and serves it: this process is the worker that runs each scheduled run
(``flow.serve``). Parameters fix the data (cohort folder), the training preset and the approval
mode; a manual approval pauses each scheduled run until a reviewer answers in the Prefect UI.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.retrain import retrain

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: the weekly retrain


def build_deployment(cohort: str, *, name: str = "weekly-retrain", cron: str = DEFAULT_CRON,
                     preset: str = "demo", approval: str = "manual", workdir: str = "retrain-output",
                     params_path: str = "params.yaml", tracking_uri: str | None = None) -> Any:
    """The ``retrain`` deployment (a Prefect ``RunnerDeployment``) with its cron schedule and parameters."""
    params: dict[str, Any] = {"cohort": cohort, "preset": preset, "approval": approval, "workdir": workdir,
                              "params_path": params_path}
    if tracking_uri:
        params["tracking_uri"] = tracking_uri
    return retrain.to_deployment(name=name, cron=cron, parameters=params, tags=["rgops", "retrain"],
                                 description=f"Retrain on {cohort} ({preset}, approval {approval}) at '{cron}'")


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohort")
    ap.add_argument("--name", default="weekly-retrain")
    ap.add_argument("--cron", default=DEFAULT_CRON)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--approval", choices=["auto", "manual"], default="manual")
    ap.add_argument("--workdir", default="retrain-output")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tracking-uri", default=None)
    a = ap.parse_args(argv)
    serve(build_deployment(a.cohort, name=a.name, cron=a.cron, preset=a.preset, approval=a.approval,
                           workdir=a.workdir, params_path=a.params, tracking_uri=a.tracking_uri))


if __name__ == "__main__":  # pragma: no cover
    main()
