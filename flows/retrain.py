"""The ``retrain`` Prefect flow: validate -> ingest -> train CAE and GAN -> evaluate -> register ->
gate -> approve -> promote.

Thin by design: each task wraps one function of :mod:`rgops.retrain`; only the tasks that talk to
the MLflow server retry, and only on :class:`~rgops.errors.TrackingError`. Results show up as
Prefect artifacts: the validation summaries, the gate table (challenger vs champion) and sample
images from the evaluation report.

Approval ``manual`` pauses the flow run for each model that passed its gates; the Prefect UI shows a
form (:class:`ApprovalInput`: approve, reviewer, comment). ``rgops promote --approve VERSION`` does
the same from a terminal when the pause timed out.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.ingest import run_ingest_fanout
from rgops import retrain as R
from rgops.config import load_params
from rgops.errors import TrackingError
from rgops.promotion import PromoteConfig
from rgops.tracking import resolve_tracking_uri


class ApprovalInput(RunInput):
    """The form a reviewer fills in the Prefect UI to approve or reject a challenger."""

    approve: bool
    reviewer: str
    comment: str = ""


def _tracking_failed(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only an unreachable or refusing tracking server is worth retrying."""
    try:
        state.result()
    except TrackingError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is not I/O: do not retry
        return False
    return False


IO_RETRIES = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=_tracking_failed)

reap_task = task(R.reap_orphan_runs, name="reap-orphan-runs", **IO_RETRIES)
validate_task = task(R.validate_step, name="validate", task_run_name="validate-{path}")
ingest_task = task(R.ingest_step, name="ingest")
cohort_size_task = task(R.cohort_size_step, name="check-cohort-size")
train_task = task(R.train_step, name="train", task_run_name="train-{kind}")
evaluate_task = task(R.evaluate_step, name="evaluate")
champion_task = task(R.champion_step, name="evaluate-champion", **IO_RETRIES)
register_task = task(R.register_step, name="register", **IO_RETRIES)
gate_task = task(R.gate_step, name="gate", **IO_RETRIES)
promote_task = task(R.promote_step, name="promote", **IO_RETRIES)


def _sample_images_markdown(report_dir: Path, limit: int = 3) -> str | None:
    """The evaluation report's figures, inlined as data URIs (the UI has no access to our disk)."""
    pngs = sorted(report_dir.rglob("*.png"))[:limit] if report_dir.is_dir() else []
    parts = [f"### {p.stem}\n\n![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})"
             for p in pngs if p.stat().st_size < 400_000]
    return "\n\n".join(parts) or None


def _ask_reviewer(timeout_s: int) -> R.AskFn:
    """Pause the flow run for a reviewer's answer (the Prefect UI form); None when it times out."""
    def ask(cand: R.Candidate, gates: str) -> tuple[bool, str, str] | None:
        get_run_logger().info("waiting for approval of %s version %s (Prefect UI, or `rgops promote --approve "
                              "%s --name %s`)", cand.name, cand.version, cand.version, cand.name)
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(
                    description=f"Approve {cand.name} version {cand.version} as @champion?\n\n{gates}",
                    approve=False, reviewer=""),
                timeout=timeout_s, poll_interval=2, key=f"approve-{cand.name}-{cand.version}")
        except Exception as exc:  # noqa: BLE001 - FlowPauseTimeout and friends: leave it pending
            get_run_logger().warning("no answer for %s version %s (%s)", cand.name, cand.version, type(exc).__name__)
            return None
        return answer.approve, answer.reviewer, answer.comment
    return ask


def _ingest(cohort: str, work: Path, params: dict[str, Any], workers: int, dask_address: str | None) -> Any:
    if dask_address or workers > 1:
        return run_ingest_fanout(cohort, str(work / "datasets"), params, workers=workers, dask_address=dask_address)
    return ingest_task(cohort, work / "datasets", params)


@flow(name="retrain")
def retrain(cohort: str, workdir: str = "retrain-output", params_path: str = "params.yaml", preset: str = "tiny",
            approval: Optional[Literal["auto", "manual"]] = None, tracking_uri: Optional[str] = None,
            experiment: str = "rgops", approval_timeout_s: int = 3600, device: Optional[str] = None,
            ingest_workers: int = 2, dask_address: Optional[str] = None) -> dict[str, Any]:
    """Retrain both models on ``cohort`` and promote what passes the gates (and the reviewer).

    Args:
        cohort: the cohort folder (its data version is its content: ingest is skipped when unchanged).
        workdir: where datasets, validation and evaluation reports go.
        params_path: params.yaml, checked whole before anything runs.
        preset: training preset (``tiny``, ``demo``, ``full``).
        approval: ``auto`` or ``manual``; None reads ``promote.approval``.
        tracking_uri: MLflow URI (default: ``RGOPS_TRACKING_URI``/``MLFLOW_TRACKING_URI``/local SQLite).
        experiment: MLflow experiment of the training runs.
        approval_timeout_s: how long a manual approval waits before the version stays @challenger.
        device: training device (``auto`` default).
        ingest_workers: ingest tasks (4 per process, each a run of patients) on a local Dask cluster
            of this many processes (:mod:`flows.ingest`); 0 or 1 ingests in-process. ``dask_address``:
            a scheduler to use instead.

    Returns:
        ``{"candidates", "promoted", "pending", "rejected"}`` (each kind -> version) and ``"metrics"``.

    Raises:
        PromotionRefused: a gate failed for at least one model (others are still promoted).
    """
    uri = tracking_uri or resolve_tracking_uri()
    params = load_params(params_path)  # the whole file, numbers included, before any work
    mode = approval or PromoteConfig.from_params(params).approval
    work, reports_dir = Path(workdir), Path(workdir) / "reports"
    reap_task(uri, experiment)

    vc = validate_task(cohort, params, reports_dir)
    ing = _ingest(cohort, work, params, ingest_workers, dask_address)
    vd = validate_task(ing.path, params, reports_dir, datasets=True)
    cohort_size_task(ing.path, params)  # too small for the probe protocol: refused before any training
    create_markdown_artifact(f"## Cohort\n\n{vc.markdown}\n\n## Datasets (data {vd.data_digest[:12]}, "
                             f"ingest {'cached' if ing.cached else 'run'})\n\n{vd.markdown}",
                             key="validation-summary", description="Data validation before training")

    tags = {"rgops.validation": "passed", "rgops.validation.data_digest": vd.data_digest or ""}
    models = {kind: train_task(kind, ing.path, params, preset, tracking_uri=uri, experiment=experiment,
                               tags=tags, device=device) for kind in ("cae", "gan")}
    metrics = evaluate_task(ing.path, models["cae"].model_uri, models["gan"].model_uri, params,
                            cohort=cohort, tracking_uri=uri, out_dir=work / "evaluation")
    champion = champion_task(ing.path, models["cae"].model_uri, params, cohort=cohort, tracking_uri=uri)
    # Registration comes only now that both models trained and were evaluated.
    candidates = register_task(models, metrics, vd, tracking_uri=uri)
    reports = {kind: gate_task(c, champion, params, tracking_uri=uri) for kind, c in candidates.items()}
    create_markdown_artifact(R.gates_markdown(reports), key="promotion-gates",
                             description="Challenger metrics against the champion on the same held-out split")
    samples = _sample_images_markdown(work / "evaluation" / "report")
    if samples:
        create_markdown_artifact(samples, key="evaluation-samples", description="Figures of the evaluation report")

    promote = functools.partial(promote_task, tracking_uri=uri)
    settled = R.settle(candidates, reports, mode, _ask_reviewer(approval_timeout_s), promote)
    refused = R.refusal_error(reports)
    if refused is not None:
        raise refused
    return {"candidates": {k: c.version for k, c in candidates.items()}, **settled, "metrics": metrics}


if __name__ == "__main__":  # pragma: no cover - `python flows/retrain.py COHORT` for a quick local run
    import sys

    print(retrain(sys.argv[1]))
