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
validate_cohort_task = task(R.validate_cohort_step, name="validate-cohort")
ingest_task = task(R.ingest_step, name="ingest")
validate_datasets_task = task(R.validate_datasets_step, name="validate-datasets")
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


@flow(name="retrain")
def retrain(
    cohort: str,
    workdir: str = "retrain-output",
    params_path: str = "params.yaml",
    preset: str = "tiny",
    approval: Optional[Literal["auto", "manual"]] = None,
    tracking_uri: Optional[str] = None,
    experiment: str = "rgops",
    approval_timeout_s: int = 3600,
    device: Optional[str] = None,
    ingest_workers: int = 2,
    dask_address: Optional[str] = None,
) -> dict[str, Any]:
    """Retrain both models on ``cohort`` and promote what passes the gates (and the reviewer).

    Args:
        cohort: the cohort folder (its data version is its content: ingest is skipped when unchanged).
        workdir: where datasets, validation and evaluation reports go.
        params_path: params.yaml; ``promote.approval`` is the default approval mode.
        preset: training preset (``tiny``, ``demo``, ``full``).
        approval: ``auto`` or ``manual``; None reads ``promote.approval``.
        tracking_uri: MLflow URI (default: ``RGOPS_TRACKING_URI``/``MLFLOW_TRACKING_URI``/local SQLite).
        experiment: MLflow experiment of the training runs.
        approval_timeout_s: how long a manual approval waits before the version stays @challenger.
        device: training device (``auto`` default).
        ingest_workers: ingest fans out one task per patient over a local Dask cluster of this many
            processes (:mod:`flows.ingest`); 0 or 1 ingests in-process, without Dask.
        dask_address: a Dask scheduler (``tcp://host:8786``) to fan ingest out to instead of a local
            cluster; it takes precedence over ``ingest_workers``.

    Returns:
        ``{"candidates": {kind: version}, "promoted": {kind: version}, "pending": {...}, "rejected": {...},
        "metrics": {evaluation metrics}}``.

    Raises:
        PromotionRefused: a gate failed for at least one model (others are still promoted).
    """
    logger = get_run_logger()
    from rgops.tracking import resolve_tracking_uri

    uri = tracking_uri or resolve_tracking_uri()
    params = load_params(params_path)
    mode = approval or params.get("promote", {}).get("approval", "auto")
    work = Path(workdir)
    reports_dir = work / "reports"
    reaped = reap_task(uri, experiment)
    if reaped:
        logger.warning("marked %d run(s) left RUNNING by dead processes as FAILED: %s", len(reaped), reaped)

    vc = validate_cohort_task(cohort, params, reports_dir)
    if dask_address or ingest_workers > 1:
        ing = run_ingest_fanout(cohort, str(work / "datasets"), params, workers=ingest_workers,
                                dask_address=dask_address)
    else:
        ing = ingest_task(cohort, work / "datasets", params)
    vd = validate_datasets_task(ing.path, params, reports_dir)
    cohort_size_task(ing.path, params)  # too small for the probe protocol: refused before any training
    create_markdown_artifact(f"## Cohort\n\n{vc.markdown}\n\n## Datasets (data {vd.data_digest[:12]}, "
                             f"ingest {'cached' if ing.cached else 'run'})\n\n{vd.markdown}",
                             key="validation-summary", description="Data validation before training")

    tags = {"rgops.validation": "passed", "rgops.validation.data_digest": vd.data_digest or ""}
    models = {kind: train_task(kind, ing.path, params, preset, tracking_uri=uri, experiment=experiment,
                               tags=tags, device=device) for kind in ("cae", "gan")}
    eval_dir = work / "evaluation"
    metrics = evaluate_task(ing.path, models["cae"].model_uri, models["gan"].model_uri, params,
                            cohort=cohort, tracking_uri=uri, out_dir=eval_dir)
    champion = champion_task(ing.path, models["cae"].model_uri, params, cohort=cohort, tracking_uri=uri)
    # Registration comes only now that both models trained and were evaluated.
    candidates = register_task(models, metrics, vd, tracking_uri=uri)
    reports = {kind: gate_task(c, champion, params, tracking_uri=uri) for kind, c in candidates.items()}
    create_markdown_artifact(R.gates_markdown(reports), key="promotion-gates",
                             description="Challenger metrics against the champion on the same held-out split")
    samples = _sample_images_markdown(eval_dir / "report")
    if samples:
        create_markdown_artifact(samples, key="evaluation-samples", description="Figures of the evaluation report")

    out: dict[str, Any] = {"candidates": {k: c.version for k, c in candidates.items()},
                           "promoted": {}, "pending": {}, "rejected": {}, "metrics": metrics}
    for kind, cand in sorted(candidates.items()):
        if reports[kind]["refusal"]:
            continue
        if mode == "auto":
            promote_task(cand, True, "rgops-gates", "automatic: every gate passed", tracking_uri=uri)
            out["promoted"][kind] = cand.version
            continue
        logger.info("waiting for approval of %s version %s (Prefect UI, or `rgops promote --approve %s "
                    "--name %s`)", cand.name, cand.version, cand.version, cand.name)
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(
                    description=f"Approve {cand.name} version {cand.version} as @champion?\n\n"
                                + R.gates_markdown({kind: reports[kind]}),
                    approve=False, reviewer=""),
                timeout=approval_timeout_s, poll_interval=2, key=f"approve-{cand.name}-{cand.version}")
        except Exception as exc:  # noqa: BLE001 - FlowPauseTimeout and friends: leave it pending
            logger.warning("no decision on %s version %s (%s); it stays @challenger, decision pending",
                           cand.name, cand.version, type(exc).__name__)
            out["pending"][kind] = cand.version
            continue
        promote_task(cand, answer.approve, answer.reviewer, answer.comment, tracking_uri=uri)
        out["promoted" if answer.approve else "rejected"][kind] = cand.version

    refused = R.refusal_error(reports)
    if refused is not None:
        raise refused
    return out


if __name__ == "__main__":  # pragma: no cover - `python flows/retrain.py COHORT` for a quick local run
    import sys

    print(retrain(sys.argv[1]))
