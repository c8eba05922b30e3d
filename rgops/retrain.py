"""The retraining pipeline as plain functions: validate -> ingest -> train -> evaluate -> register ->
gate -> decide -> promote.

``flows/retrain.py`` wraps each function here in one Prefect task; the CLI and DVC can call them
directly. What is not Prefect-specific lives here: the gates, the approval decision, and the order
that keeps the registry clean — **a model is registered only after both models trained and were
evaluated**, so a run that dies during training leaves no registered version and moves no alias.

Runs that a killed process left ``RUNNING`` in MLflow are marked ``FAILED`` when the next retrain
starts (:func:`reap_orphan_runs`): a SIGKILL gives a process no chance to run a ``finally`` block,
so the only reliable place is the next start. Each training run is tagged with the host and pid that
own it; a run is reaped only when that process is gone from this host.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rgops.errors import PromotionRefused
from rgops.lineage import cohort_fingerprint
from rgops.training.run import TrainedModel, owner_tags, train_and_log

if TYPE_CHECKING:
    from rgops.data.ingest import MapFn

log = logging.getLogger(__name__)

Kind = Literal["cae", "gan"]
ProgressFn = Callable[[int, int], None]
INGEST_STAMP = ".rgops-ingest.json"


# --- validate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationOutcome:
    """What a validation step found, small enough to pass between tasks."""

    target: str
    passed: bool
    summary: str
    markdown: str
    data_digest: str | None = None


def validate_step(path: str | Path, params: Mapping[str, Any], out_dir: str | Path | None = None, *,
                  datasets: bool = False) -> ValidationOutcome:
    """Validate the raw cohort (or, with ``datasets``, an ingested datasets folder) and fail the way
    every caller fails: :func:`rgops.validation.validate_path` then :func:`rgops.validation.require_passed`.
    The report goes to ``out_dir/validation-<cohort|datasets>.json``; a datasets outcome carries the
    data digest it validated (what the gates compare with the digest the model was trained on).

    Raises:
        DataValidationError: critical expectations failed (the message names them).
    """
    from rgops.data.datasets import Datasets
    from rgops.validation import ValidateConfig, require_passed, validate_path

    target = "datasets" if datasets else "cohort"
    json_out = Path(out_dir) / f"validation-{target}.json" if out_dir is not None else None
    report = validate_path(path, ValidateConfig.from_params(dict(params)), datasets=datasets, json_out=json_out)
    require_passed(report)
    digest = Datasets.load(path).digest() if datasets else None
    return ValidationOutcome(target, True, report.summary(), report.to_markdown(), digest)


# --- ingest (cached) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOutcome:
    path: str
    data_digest: str
    cached: bool
    fingerprint: str
    report: dict[str, Any] = field(default_factory=dict)


def cached_ingest(cohort: str | Path, out: str | Path, params: Mapping[str, Any], fingerprint: str | None = None
                  ) -> IngestOutcome | None:
    """The :class:`IngestOutcome` of ``out`` when it already holds the ingest of ``cohort`` with these
    ``ingest`` params (and its datasets digest still matches), else None.

    The cache key (:func:`cohort_fingerprint`, or ``fingerprint`` when the caller computed it) is
    stored beside the datasets as ``.rgops-ingest.json``.
    """
    from rgops.data.datasets import Datasets
    from rgops.errors import DatasetError

    out = Path(out)
    fp = fingerprint or cohort_fingerprint(cohort, params)
    stamp = out / INGEST_STAMP
    if not stamp.is_file():
        return None
    try:
        recorded = json.loads(stamp.read_text())
        digest = Datasets.load(out).digest()
    except (ValueError, DatasetError, OSError):
        return None
    if recorded.get("fingerprint") != fp or recorded.get("data_digest") != digest:
        return None
    log.info("ingest cached: %s already holds cohort %s (data %s)", out, fp[:12], digest[:12])
    return IngestOutcome(str(out), digest, True, fp, recorded.get("report", {}))


def ingest_step(cohort: str | Path, out: str | Path, params: Mapping[str, Any], progress: ProgressFn | None = None,
                map_fn: MapFn | None = None) -> IngestOutcome:
    """Ingest ``cohort`` into ``out`` unless ``out`` already holds the ingest of the same bytes and params.

    The cache key (:func:`cohort_fingerprint`) is stored beside the datasets as ``.rgops-ingest.json``
    and checked together with the datasets digest (:func:`cached_ingest`), so an edited datasets folder
    is re-ingested. ``map_fn`` runs the per-patient work elsewhere (see
    :func:`rgops.data.ingest.ingest_cohort`); the datasets do not depend on it.
    """
    from rgops.data.datasets import Datasets
    from rgops.data.ingest import IngestConfig, ingest_cohort

    out = Path(out)
    fp = cohort_fingerprint(cohort, params)
    cached = cached_ingest(cohort, out, params, fp)
    if cached is not None:
        return cached
    report = ingest_cohort(cohort, out, IngestConfig.from_params(dict(params)), progress=progress, map_fn=map_fn)
    digest = Datasets.load(out).digest()
    stamp = {"fingerprint": fp, "data_digest": digest, "report": report.to_json()}
    (out / INGEST_STAMP).write_text(json.dumps(stamp))
    return IngestOutcome(str(out), digest, False, fp, report.to_json())


# --- train ---------------------------------------------------------------------------------------


def cohort_size_step(datasets: str | Path, params: Mapping[str, Any]) -> None:
    """Refuse a cohort too small for the probe protocol before any training (the message names the minimum).

    Raises:
        EvaluationError: fewer training or held-out patients than ``evaluate.min_*_patients``.
    """
    from rgops.data.datasets import Datasets
    from rgops.evaluation.evaluate import EvaluateConfig
    from rgops.evaluation.protocol import check_cohort

    cfg = EvaluateConfig.from_params(dict(params))
    check_cohort(Datasets.load(datasets, mmap=True).manifest, cfg.splits, cfg.min_train_patients,
                 cfg.min_held_out_patients)


def train_step(kind: Kind, datasets: str | Path, params: Mapping[str, Any], preset: str, *,
               tracking_uri: str | None = None, experiment: str = "rgops", tags: Mapping[str, str] | None = None,
               device: str | None = None, progress: ProgressFn | None = None) -> TrainedModel:
    """Train and log one model: :func:`rgops.training.run.train_and_log` (the one training step)."""
    done = train_and_log(kind, datasets, params, preset, device=device, experiment=experiment,
                         tracking_uri=tracking_uri, tags=tags, progress=progress)
    assert done is not None  # the flow runs in one process: rank 0
    return done[0]


# --- evaluate ------------------------------------------------------------------------------------


def evaluate_step(datasets: str | Path, cae_uri: str, gan_uri: str, params: Mapping[str, Any], *,
                  cohort: str | Path | None = None, tracking_uri: str | None = None,
                  out_dir: str | Path | None = None) -> dict[str, float]:
    """Held-out metrics of a CAE and a GAN through the one evaluate-and-log path
    (:func:`rgops.evaluation.evaluate.evaluate_and_log`): every metric is logged to both models'
    runs and the CAE's program head to its run, so :func:`register_step` registers the version
    with its ``rgops.program_head_sha256`` tag and serving returns program scores.

    The models are loaded through the registry client (digests checked before unpickling). With a
    synthetic ``cohort``, its ground truth (``COHORT-truth/``) supplies the targets.
    """
    import tempfile

    from rgops.data.datasets import Datasets
    from rgops.evaluation.evaluate import EvaluateConfig, evaluate_and_log
    from rgops.registry import Registry

    ds = Datasets.load(datasets)
    reg = Registry(tracking_uri)
    models = {"cae": reg.load_model(cae_uri), "gan": reg.load_model(gan_uri)}
    cfg = EvaluateConfig.from_params(dict(params))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        result = evaluate_and_log(ds, models, _truth(cohort), cfg, out / "evaluation.json", out / "report",
                                  uris={"cae": cae_uri, "gan": gan_uri})
    return {k: float(v) for k, v in result.metrics.items()}


def _truth(cohort: str | Path | None) -> Any:
    from rgops.data.pseudonym import load_key
    from rgops.evaluation.evaluate import GroundTruth, truth_dir_for

    if cohort is None or not (truth_dir_for(cohort) / "ground_truth.json").is_file():
        return None
    return GroundTruth.load(truth_dir_for(cohort), load_key())


@dataclass(frozen=True)
class ChampionRecord:
    """The current champions and their metrics measured on the challenger's held-out split."""

    versions: dict[str, str]
    metrics: dict[str, float]
    data_digest: str | None


def champion_step(datasets: str | Path, challenger_cae_uri: str, params: Mapping[str, Any], *,
                  cohort: str | Path | None = None, tracking_uri: str | None = None) -> ChampionRecord:
    """Re-evaluate the current champions on the same held-out split as the challengers.

    The champion GAN's image metrics are measured in the *challenger* CAE's feature space, the
    space the challenger GAN is measured in, so the two Frechet distances are comparable.
    Returns an empty record when there is no champion yet.
    """
    from rgops.data.datasets import Datasets
    from rgops.evaluation.evaluate import EvaluateConfig, evaluate
    from rgops.registry import CHAMPION, Registry, model_name

    reg = Registry(tracking_uri)
    versions = {k: v for k in ("cae", "gan") if (v := reg.aliases(model_name(k)).get(CHAMPION))}
    if not versions:
        return ChampionRecord({}, {}, None)
    ds = Datasets.load(datasets)
    encoders: dict[str, Any] = {"cae": reg.load_model(challenger_cae_uri).module}
    if "cae" in versions:
        encoders["champ"] = reg.load_model(f"models:/{model_name('cae')}@{CHAMPION}").module
    gan = reg.load_model(f"models:/{model_name('gan')}@{CHAMPION}").module if "gan" in versions else None
    result = evaluate(ds, encoders=encoders, gan=gan, truth=_truth(cohort),
                      cfg=EvaluateConfig.from_params(dict(params)))
    metrics = {}
    for k, v in result.metrics.items():
        if k.startswith("champ."):
            metrics["cae." + k.removeprefix("champ.")] = float(v)
        elif k.startswith("gan.") and "gan" in versions:
            metrics[k] = float(v)
    return ChampionRecord(versions, metrics, ds.digest())


# --- register, gate, decide ----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A registered challenger: its registry name and version and the metrics it was gated on."""

    kind: str
    name: str
    version: str
    metrics: dict[str, float]


def register_step(models: Mapping[str, TrainedModel], metrics: Mapping[str, float], validation: ValidationOutcome,
                  *, tracking_uri: str | None = None, extra_data_version: Mapping[str, str] | None = None
                  ) -> dict[str, Candidate]:
    """Register every trained model (all or none) once training and evaluation succeeded.

    Each version carries its kind's metrics, the data version, the validation outcome for that data
    and the training run's tags (weights digest, git commit). If registering one of them fails, the
    versions registered in this call are deleted again and ``@challenger`` is restored.
    """
    from rgops.registry import Registry

    reg = Registry(tracking_uri)
    items = []
    for kind, trained in sorted(models.items()):
        own = {k: v for k, v in metrics.items() if k.startswith(f"{kind}.")}
        items.append(dict(kind=kind, model_uri=trained.model_uri, run_id=trained.run_id, metrics=own,
                          data_version={"data_digest": trained.data_digest, **dict(extra_data_version or {})},
                          tags={"rgops.validation": "passed" if validation.passed else "failed",
                                "rgops.validation.data_digest": validation.data_digest or ""}))
    infos = reg.register_all(items)
    return {i.tags["rgops.kind"]: Candidate(i.tags["rgops.kind"], i.name, i.version, i.metrics) for i in infos}


def gate_step(candidate: Candidate, champion: ChampionRecord, params: Mapping[str, Any], *,
              tracking_uri: str | None = None) -> dict[str, Any]:
    """Evaluate and record the promotion gates of one candidate; return the report as JSON.

    A failed gate is recorded on the version (``decision=refused``) and in the history; the report's
    ``refusal`` then holds the :class:`~rgops.errors.PromotionRefused` message naming the gate and
    both numbers (``None`` when every gate passed). The caller decides when to raise it, so one
    model's refusal does not stop the other's promotion.
    """
    from rgops.promotion import PromoteConfig, evaluate_gates
    from rgops.registry import Registry

    reg = Registry(tracking_uri)
    info = reg.version(candidate.name, candidate.version)
    champ_version = champion.versions.get(candidate.kind)
    report = evaluate_gates(
        candidate.kind, candidate.metrics, PromoteConfig.from_params(dict(params)),
        champion={k: v for k, v in champion.metrics.items() if k.startswith(candidate.kind + ".")}
        if champ_version else None,
        champion_version=champ_version, validation=info.tags.get("rgops.validation"),
        validated_digest=info.tags.get("rgops.validation.data_digest"),
        data_digest=info.tags.get("rgops.data_digest"),
        champion_data_digest=champion.data_digest if champ_version else None)
    refusal = None
    if report.passed:
        reg.record_gates(candidate.name, candidate.version, report)
    else:
        refusal = str(reg.refuse(candidate.name, candidate.version, report))
    return {**report.to_json(), "refusal": refusal}


def gates_markdown(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The gate reports (as JSON) as one markdown document: the metric table vs the champion."""
    from rgops.promotion import GateReport

    return "\n\n".join(GateReport.from_json(r).to_markdown() for _, r in sorted(reports.items()))


def refusal_error(reports: Mapping[str, Mapping[str, Any]]) -> PromotionRefused | None:
    """One :class:`PromotionRefused` joining every refusal among gate reports, or None."""
    msgs = [r["refusal"] for _, r in sorted(reports.items()) if r.get("refusal")]
    return PromotionRefused("; ".join(msgs)) if msgs else None


def promote_step(candidate: Candidate, approved: bool, reviewer: str, comment: str = "", *,
                 tracking_uri: str | None = None) -> str | None:
    """Record the decision on the candidate and, when approved, move ``@champion`` to it.

    Returns the previous champion version (None when none, or when rejected).
    """
    from rgops.registry import Decision, Registry

    return Registry(tracking_uri).decide(candidate.name, candidate.version, Decision(approved, reviewer, comment))


#: Asks a reviewer about a candidate, shown the gate table (markdown): ``(approve, reviewer, comment)``,
#: or None when no answer came in time.
AskFn = Callable[[Candidate, str], "tuple[bool, str, str] | None"]
#: Records an approval decision: ``promote(candidate, approved, reviewer, comment)``.
PromoteFn = Callable[[Candidate, bool, str, str], Any]
AUTO_REVIEWER = "rgops-gates"


def approval_decision(candidate: Candidate, report: Mapping[str, Any], mode: str, ask: AskFn
                      ) -> tuple[bool, str, str] | None:
    """The approval decision for one candidate whose gates ran: ``(approve, reviewer, comment)``, or
    None when there is none to record (refused by a gate, or a manual approval left unanswered).

    ``auto`` approves what passed every gate; ``manual`` asks a person (``ask``) with the gate table.
    """
    if report.get("refusal"):
        return None
    if mode == "auto":
        return True, AUTO_REVIEWER, "automatic: every gate passed"
    if mode != "manual":
        from rgops.errors import ConfigError

        raise ConfigError(f"approval mode {mode!r}; expected auto or manual")
    answer = ask(candidate, gates_markdown({candidate.kind: report}))
    if answer is None:
        log.warning("no decision on %s version %s; it stays @challenger, decision pending",
                    candidate.name, candidate.version)
    return answer


def settle(candidates: Mapping[str, Candidate], reports: Mapping[str, Mapping[str, Any]], mode: str,
           ask: AskFn, promote: PromoteFn) -> dict[str, dict[str, str]]:
    """Decide on every candidate and record the decisions (:func:`approval_decision`, then ``promote``).

    Returns:
        ``{"promoted": {kind: version}, "rejected": {...}, "pending": {...}}``; a candidate refused by
        its gates is in none of them (its refusal is in its report, see :func:`refusal_error`).
    """
    out: dict[str, dict[str, str]] = {"promoted": {}, "pending": {}, "rejected": {}}
    for kind, cand in sorted(candidates.items()):
        if reports[kind].get("refusal"):
            continue
        decision = approval_decision(cand, reports[kind], mode, ask)
        if decision is None:
            out["pending"][kind] = cand.version
            continue
        promote(cand, *decision)
        out["promoted" if decision[0] else "rejected"][kind] = cand.version
    return out


def reap_orphan_runs(tracking_uri: str | None = None, experiment: str = "rgops") -> list[str]:
    """Mark runs whose owning process on this host is gone as FAILED; return their ids."""
    from rgops import tracking

    return tracking.reap_orphan_runs(tracking.make_client(tracking_uri), experiment, socket.gethostname())


__all__ = ["Candidate", "ChampionRecord", "IngestOutcome", "PromotionRefused", "TrainedModel", "ValidationOutcome",
           "cached_ingest", "champion_step", "cohort_fingerprint", "evaluate_step", "gate_step", "gates_markdown",
           "ingest_step", "cohort_size_step", "owner_tags", "promote_step", "reap_orphan_runs", "refusal_error", "register_step",
           "train_step", "validate_step", "approval_decision", "settle"]
