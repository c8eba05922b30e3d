"""The MLflow model registry: versions, aliases, promotion gates and the approval record.

One registered model per kind (``rgops-cae``, ``rgops-gan``). A version is registered only after
training and evaluation succeeded (:func:`register_candidate` in ``rgops.retrain``), and it is
registered *fully* — lineage, metrics, params, weights digest and model card are written in the
same ``create_model_version`` call — before any alias points at it. Aliases, never the deprecated
stages: a new version gets ``@challenger``; ``@champion`` is what services load. An alias move is a
single registry write, so a reader of ``models:/rgops-cae@champion`` sees the old or the new
version, never a half-registered one.

Promotion is decided by gates read from the ``promote:`` section of ``params.yaml``
(:class:`PromoteConfig`): absolute floors per metric, "not worse than the current champion by more
than a tolerance" on the same held-out split, and "data validation passed for the data version this
model was trained on". A refused promotion raises :class:`~rgops.errors.PromotionRefused` naming
the gate and both numbers.

Decisions are recorded on the model version as tags ``decision``, ``approved_by``, ``approved_at``
and ``comment``. Every alias move (promotion, rollback) and every decision is appended to the
registered model's history, kept as registered-model tags ``rgops.history.<n>`` (JSON, zero-padded
``n``); nothing is ever deleted, and :meth:`Registry.rollback` only moves ``@champion`` back.

Tag names on a model version::

    rgops.kind, rgops.run_id, rgops.data_digest, rgops.git_commit, rgops.dvc.<path>,
    rgops.weights_sha256, rgops.program_head_sha256 (CAE, when evaluated before registering),
    rgops.validation, rgops.validation.data_digest,
    metric.<name>, param.<name>,
    rgops.gates (passed | failed), rgops.gates.report (JSON), rgops.gates.champion_version,
    decision (pending | approved | rejected | refused), approved_by, approved_at, comment,
    rolled_back_by, rolled_back_at, rolled_back_reason
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from rgops.config import from_dict, section
from rgops.errors import ConfigError, PromotionRefused, RegistryError, TrackingError

log = logging.getLogger(__name__)

KINDS = ("cae", "gan")
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_PREFIX = "rgops.history."
DECISIONS = ("pending", "approved", "rejected", "refused")


def model_name(kind: str) -> str:
    """The registered-model name of a model kind: ``cae`` -> ``rgops-cae``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}")
    return f"rgops-{kind}"


def kind_of(name: str) -> str:
    """The model kind of a registered-model name: ``rgops-gan`` -> ``gan``."""
    kind = name.removeprefix("rgops-")
    if not name.startswith("rgops-") or kind not in KINDS:
        raise RegistryError(
            f"unknown registered model {name!r}; expected one of {[model_name(k) for k in KINDS]}"
        )
    return kind


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor_name(name: str | None = None) -> str:
    """Who acts: ``name``, else ``$RGOPS_ACTOR``, else ``$USER``, else ``unknown``."""
    if name:
        return name
    return os.environ.get("RGOPS_ACTOR") or os.environ.get("USER") or "unknown"


# --- gates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromoteConfig:
    """The ``promote:`` section of ``params.yaml``.

    Attributes:
        approval: ``auto`` promotes when every gate passes; ``manual`` waits for a person.
        require_validation: refuse a model whose data version did not pass data validation.
        floors: metric name -> absolute floor (a minimum for higher-is-better metrics, a maximum
            for lower-is-better ones). Metric names carry their kind as prefix (``cae.``, ``gan.``).
        tolerance: metric name -> how much worse than the champion (absolute, same held-out split)
            the challenger may be.
        higher_is_better: metrics where larger is better.
        lower_is_better: metrics where smaller is better. Every gated metric must be in one list.
    """

    approval: Literal["auto", "manual"] = "auto"
    require_validation: bool = True
    floors: dict[str, float] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    higher_is_better: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = sorted(set(self.higher_is_better) & set(self.lower_is_better))
        if both:
            raise ConfigError(f"promote: metrics {both} are both higher_is_better and lower_is_better")
        known = set(self.higher_is_better) | set(self.lower_is_better)
        for where, table in (("floors", self.floors), ("tolerance", self.tolerance)):
            for metric, value in table.items():
                if metric not in known:
                    raise ConfigError(
                        f"promote.{where}.{metric}: the metric is in neither higher_is_better nor "
                        "lower_is_better; add it to one of them"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"promote.{where}.{metric}: expected a finite number, got {value!r}")
                if where == "tolerance" and value < 0:
                    raise ConfigError(f"promote.tolerance.{metric}: got {value}, expected >= 0")
                if metric.split(".", 1)[0] not in KINDS:
                    raise ConfigError(
                        f"promote.{where}.{metric}: metric names start with the model kind "
                        f"({', '.join(k + '.' for k in KINDS)})"
                    )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "PromoteConfig":
        """Read the ``promote`` section of a params mapping."""
        return from_dict(cls, section(dict(params), "promote"), "promote")

    def higher(self, metric: str) -> bool:
        return metric in self.higher_is_better


@dataclass(frozen=True)
class GateResult:
    """One gate: its name, the metric, the challenger's and the reference number, the verdict."""

    gate: str
    metric: str
    challenger: float | None
    reference: float | None
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateReport:
    """Every gate evaluated for one challenger of one kind."""

    kind: str
    results: tuple[GateResult, ...]
    champion_version: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def summary(self) -> str:
        """One line per failed gate (or ``all N gates passed``)."""
        if self.passed:
            return f"all {len(self.results)} gates passed"
        return "; ".join(r.detail for r in self.failed)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "champion_version": self.champion_version,
                "passed": self.passed, "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GateReport":
        return cls(data["kind"], tuple(GateResult(**r) for r in data["results"]), data.get("champion_version"))

    def to_markdown(self) -> str:
        """A table of gates for a Prefect artifact or a report."""
        def fmt(v: float | None) -> str:
            return "—" if v is None else f"{v:.4g}"
        lines = [f"### Promotion gates, {model_name(self.kind)} "
                 f"(champion: {self.champion_version or 'none'}) — {'PASSED' if self.passed else 'REFUSED'}",
                 "", "| gate | metric | challenger | reference | result |", "| --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.gate} | {r.metric} | {fmt(r.challenger)} | {fmt(r.reference)} | "
                         f"{'pass' if r.passed else 'FAIL'} |")
        return "\n".join(lines)


def evaluate_gates(
    kind: str,
    challenger: Mapping[str, float],
    config: PromoteConfig,
    *,
    champion: Mapping[str, float] | None = None,
    champion_version: str | None = None,
    validation: str | None = None,
    validated_digest: str | None = None,
    data_digest: str | None = None,
    champion_data_digest: str | None = None,
) -> GateReport:
    """Evaluate the promotion gates of one challenger.

    Args:
        kind: ``cae`` or ``gan``; only metrics named ``<kind>.*`` are gated.
        challenger: the challenger's held-out metrics.
        config: floors, tolerances and directions.
        champion: the current champion's metrics on the same held-out split, or None when there
            is no champion yet (then only floors and validation apply).
        champion_version: the champion's version number, recorded in the report.
        validation: the validation outcome recorded for the training data (``passed``/``failed``).
        validated_digest: the data digest that validation ran on.
        data_digest: the data digest the challenger was trained and evaluated on.
        champion_data_digest: the data digest the champion metrics were measured on; when it
            differs from ``data_digest`` the comparison gates fail (the numbers are not comparable).
    """
    results: list[GateResult] = []
    if config.require_validation:
        ok = validation == "passed" and data_digest is not None and validated_digest == data_digest
        if validation != "passed":
            detail = (f"gate data_validation: data validation is {validation or 'not recorded'!s} for "
                      f"data {str(data_digest)[:12]}, expected 'passed'; run `rgops validate` on it first")
        elif validated_digest != data_digest:
            detail = (f"gate data_validation: validation ran on data {str(validated_digest)[:12]} but the "
                      f"model was trained on {str(data_digest)[:12]}; validate the data it was trained on")
        else:
            detail = f"data validation passed for data {str(data_digest)[:12]}"
        results.append(GateResult("data_validation", "rgops.validation", None, None, ok, detail))

    prefix = f"{kind}."
    for metric, floor in sorted(config.floors.items()):
        if not metric.startswith(prefix):
            continue
        value = challenger.get(metric)
        if value is None or not math.isfinite(float(value)):
            results.append(GateResult("floor", metric, None, float(floor), False,
                                      f"gate floor[{metric}]: challenger has no finite value "
                                      f"(got {value!r}), floor is {floor:.4g}"))
            continue
        value = float(value)
        ok = value >= floor if config.higher(metric) else value <= floor
        rel = ">=" if config.higher(metric) else "<="
        results.append(GateResult(
            "floor", metric, value, float(floor), ok,
            f"gate floor[{metric}]: challenger {value:.4g}, required {rel} {floor:.4g}"))

    if champion is not None:
        comparable = champion_data_digest is None or data_digest is None or champion_data_digest == data_digest
        for metric, tol in sorted(config.tolerance.items()):
            if not metric.startswith(prefix):
                continue
            value = challenger.get(metric)
            ref = champion.get(metric)
            if ref is None:
                results.append(GateResult("vs_champion", metric, value, None, True,
                                          f"champion {champion_version} has no {metric}; not compared"))
                continue
            ref = float(ref)
            if not comparable:
                results.append(GateResult(
                    "vs_champion", metric, value, ref, False,
                    f"gate vs_champion[{metric}]: champion {champion_version} was measured on data "
                    f"{str(champion_data_digest)[:12]}, challenger on {str(data_digest)[:12]}; "
                    "re-evaluate the champion on the same held-out split"))
                continue
            if value is None or not math.isfinite(float(value)):
                results.append(GateResult("vs_champion", metric, None, ref, False,
                                          f"gate vs_champion[{metric}]: challenger has no finite value "
                                          f"(got {value!r}), champion {champion_version} has {ref:.4g}"))
                continue
            value = float(value)
            if config.higher(metric):
                ok, bound, rel = value >= ref - tol, ref - tol, ">="
            else:
                ok, bound, rel = value <= ref + tol, ref + tol, "<="
            results.append(GateResult(
                "vs_champion", metric, value, ref, ok,
                f"gate vs_champion[{metric}]: challenger {value:.4g}, champion {champion_version} "
                f"{ref:.4g}, required {rel} {bound:.4g} (tolerance {tol:.4g})"))
    return GateReport(kind, tuple(results), champion_version)


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """A promotion decision by a person or by the automatic gates."""

    approved: bool
    reviewer: str
    comment: str = ""
    at: str = field(default_factory=_now)

    @property
    def word(self) -> str:
        return "approved" if self.approved else "rejected"


@dataclass(frozen=True)
class VersionInfo:
    """What ``rgops models`` shows for one model version."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    created: str
    tags: dict[str, str]
    description: str

    @property
    def metrics(self) -> dict[str, float]:
        out = {}
        for k, v in self.tags.items():
            if k.startswith("metric."):
                with contextlib.suppress(ValueError):
                    out[k.removeprefix("metric.")] = float(v)
        return out

    @property
    def decision(self) -> str:
        return self.tags.get("decision", "")


@dataclass(frozen=True)
class HistoryEntry:
    """One append-only record of a decision or an alias move on a registered model."""

    n: int
    at: str
    by: str
    action: str  # registered | promoted | approved | rejected | refused | rolled_back
    version: str
    alias: str | None = None
    previous: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Registry:
    """The MLflow model registry as rgops uses it.

    Args:
        tracking_uri: MLflow tracking/registry URI; defaults to ``rgops.tracking.resolve_tracking_uri()``.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        if tracking_uri is None:
            from rgops.tracking import resolve_tracking_uri

            tracking_uri = resolve_tracking_uri()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- error translation ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        from rgops.tracking import is_unreachable

        try:
            yield
        except (RegistryError, TrackingError):
            raise
        except MlflowException as exc:
            if is_unreachable(exc):
                raise TrackingError(
                    f"{what}: the MLflow tracking server at {self.tracking_uri} is unreachable "
                    f"({str(exc).splitlines()[0][:200]}); start it or set MLFLOW_TRACKING_URI, then retry"
                ) from exc
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise RegistryError(f"{what}: {exc.message}") from exc
            raise TrackingError(f"{what}: MLflow refused the request: {exc.message}") from exc
        except OSError as exc:  # requests' ConnectionError derives from OSError
            raise TrackingError(
                f"{what}: the MLflow tracking server at {self.tracking_uri} is unreachable ({exc}); "
                "start it or set MLFLOW_TRACKING_URI, then retry"
            ) from exc

    # -- reading ----------------------------------------------------------------------------------

    def _info(self, mv: Any, aliases: Mapping[str, str]) -> VersionInfo:
        version = str(mv.version)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
        return VersionInfo(mv.name, version, tuple(sorted(a for a, v in aliases.items() if str(v) == version)),
                           mv.run_id, mv.source, created, dict(mv.tags or {}), mv.description or "")

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of a registered model ({} when the model does not exist yet)."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"reading aliases of {name!r}"):
            try:
                rm = self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise
            return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def version(self, name: str, version: str | int) -> VersionInfo:
        """One model version, with its aliases."""
        aliases = self.aliases(name)
        with self._errors(f"reading {name} version {version}"):
            mv = self.client.get_model_version(name, str(version))
        return self._info(mv, aliases)

    def by_alias(self, name: str, alias: str) -> VersionInfo | None:
        """The version an alias points at, or None when the alias is not set."""
        v = self.aliases(name).get(alias)
        return None if v is None else self.version(name, v)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, newest first ([] when it does not exist)."""
        aliases = self.aliases(name)
        if not aliases and not self._exists(name):
            return []
        with self._errors(f"listing versions of {name!r}"):
            mvs = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(mv, aliases) for mv in mvs), key=lambda i: int(i.version), reverse=True)

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        with self._errors(f"reading registered model {name!r}"):
            try:
                self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return False
                raise
        return True

    def history(self, name: str) -> list[HistoryEntry]:
        """The append-only history of decisions and alias moves, oldest first."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"reading history of {name!r}"):
            try:
                rm = self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return []
                raise
        entries = [HistoryEntry(**json.loads(v)) for k, v in (rm.tags or {}).items() if k.startswith(HISTORY_PREFIX)]
        return sorted(entries, key=lambda e: e.n)

    def _append_history(self, name: str, action: str, version: str, by: str, *, alias: str | None = None,
                        previous: str | None = None, reason: str = "") -> HistoryEntry:
        existing = self.history(name)
        n = (existing[-1].n + 1) if existing else 1
        entry = HistoryEntry(n, _now(), by, action, str(version), alias, previous, reason)
        with self._errors(f"recording history of {name!r}"):
            self.client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{n:06d}", json.dumps(entry.to_json()))
        return entry

    # -- writing ----------------------------------------------------------------------------------

    def register(
        self,
        kind: str,
        model_uri: str,
        run_id: str,
        *,
        metrics: Mapping[str, float],
        data_version: Mapping[str, str],
        tags: Mapping[str, str] | None = None,
        description: str = "",
        actor: str | None = None,
    ) -> VersionInfo:
        """Register a trained, evaluated model as a new version and point ``@challenger`` at it.

        Everything the version carries is written in the one ``create_model_version`` call; only
        then does the alias move. If anything after the version's creation fails, the version is
        deleted again (no half-registered version is left behind) and the alias is not moved.

        Args:
            kind: ``cae`` or ``gan``.
            model_uri: the logged model (``models:/m-...`` or ``runs:/<run>/<path>``).
            run_id: the training run; its ``rgops.*`` tags and its params are copied to the version.
            metrics: held-out evaluation metrics (stored as ``metric.<name>`` tags).
            data_version: ``data_digest`` and optionally ``git_commit`` and ``dvc.<path>`` hashes.
            tags: further version tags (e.g. ``rgops.validation``).
            description: the model card (markdown), shown in the MLflow UI.
            actor: who registers (history); defaults to ``$RGOPS_ACTOR`` or ``$USER``.

        Raises:
            RegistryError: the run lacks its weights digest or the data version lacks its digest.
            TrackingError: the tracking server is unreachable.
        """
        name = model_name(kind)
        if "data_digest" not in data_version:
            raise RegistryError(f"data_version for {name} lacks 'data_digest' (got keys {sorted(data_version)}); "
                                "pass the digest of the datasets the model was trained on")
        with self._errors(f"reading training run {run_id}"):
            run = self.client.get_run(run_id)
        all_tags: dict[str, str] = {k: v for k, v in run.data.tags.items() if k.startswith("rgops.")}
        all_tags.update({f"param.{k}": str(v)[:5000] for k, v in run.data.params.items()})
        all_tags.update({f"metric.{k}": repr(float(v)) for k, v in metrics.items()})
        all_tags.update({f"rgops.{k}": str(v) for k, v in data_version.items()})
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        all_tags.update({"rgops.kind": kind, "rgops.run_id": run_id, "decision": "pending"})
        if not all_tags.get("rgops.weights_sha256"):
            raise RegistryError(
                f"run {run_id} has no 'rgops.weights_sha256' tag; log the model with "
                "rgops.tracking.log_model so its weights digest is recorded before registering it"
            )
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        source = model_uri
        if model_id is not None:
            # The SQL registry store resolves a models:/m-... source through the *global* tracking
            # URI (an MLflow TODO); resolve it with this client so a non-default store works.
            with self._errors(f"reading logged model {model_id}"):
                source = self.client.get_logged_model(model_id).artifact_location
        from mlflow.exceptions import MlflowException

        with self._errors(f"creating registered model {name!r}"):
            try:
                self.client.create_registered_model(
                    name, description=f"rgops {kind} model; @champion is what services load")
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
        mv = None
        try:
            with self._errors(f"registering {model_uri} as a version of {name!r}"):
                mv = self.client.create_model_version(
                    name, source=source, run_id=run_id, tags=all_tags, description=description or None,
                    model_id=model_id, await_creation_for=60)
                if getattr(mv, "status", "READY") != "READY":
                    raise RegistryError(f"{name} version {mv.version} is {mv.status}, expected READY")
            self._append_history(name, "registered", str(mv.version), actor_name(actor),
                                 reason=f"run {run_id}, data {data_version['data_digest'][:12]}")
            with self._errors(f"setting @{CHALLENGER} on {name} version {mv.version}"):
                self.client.set_registered_model_alias(name, CHALLENGER, str(mv.version))
        except BaseException:
            if mv is not None:
                with contextlib.suppress(Exception):
                    self.client.delete_model_version(name, str(mv.version))
                    log.warning("registration of %s version %s failed part-way; the version was deleted",
                                name, mv.version)
            raise
        log.info("registered %s version %s from run %s (@%s)", name, mv.version, run_id, CHALLENGER)
        return self.version(name, mv.version)

    def record_gates(self, name: str, version: str | int, report: GateReport) -> None:
        """Store a gate report on a version (``rgops.gates``, ``rgops.gates.report``)."""
        version = str(version)
        with self._errors(f"recording gates on {name} version {version}"):
            self.client.set_model_version_tag(name, version, "rgops.gates", "passed" if report.passed else "failed")
            self.client.set_model_version_tag(name, version, "rgops.gates.report", json.dumps(report.to_json()))
            self.client.set_model_version_tag(name, version, "rgops.gates.champion_version",
                                              report.champion_version or "none")

    def refuse(self, name: str, version: str | int, report: GateReport, actor: str | None = None) -> PromotionRefused:
        """Record a refused promotion on the version and in the history; return the error to raise."""
        version = str(version)
        self.record_gates(name, version, report)
        reason = report.summary()
        with self._errors(f"recording refusal on {name} version {version}"):
            self.client.set_model_version_tag(name, version, "decision", "refused")
            self.client.set_model_version_tag(name, version, "comment", reason[:5000])
        self._append_history(name, "refused", version, actor_name(actor), reason=reason)
        return PromotionRefused(f"{name} version {version} not promoted: {reason}")

    def decide(self, name: str, version: str | int, decision: Decision) -> str | None:
        """Record a decision on a version and, when approved, move ``@champion`` to it.

        The version must carry a passing gate report evaluated against the current champion
        (``rgops.gates.champion_version``); otherwise the decision is refused before anything is
        written.

        Returns:
            The previous champion version (None when there was none) on approval, else None.

        Raises:
            PromotionRefused: the gates failed or were evaluated against another champion.
            RegistryError: the version does not exist.
        """
        version = str(version)
        info = self.version(name, version)
        current = self.aliases(name).get(CHAMPION)
        if decision.approved:
            gates = info.tags.get("rgops.gates")
            if gates != "passed":
                report = info.tags.get("rgops.gates.report")
                why = GateReport.from_json(json.loads(report)).summary() if report else "no gate report recorded"
                raise PromotionRefused(f"{name} version {version} cannot be approved: gates {gates or 'not run'} "
                                       f"({why}); re-run `rgops retrain` or evaluate the gates first")
            against = info.tags.get("rgops.gates.champion_version", "none")
            if against != (current or "none"):
                raise PromotionRefused(
                    f"{name} version {version} was gated against champion {against}, but the champion is now "
                    f"{current or 'none'}; re-run the gates against the current champion")
            if current == version:
                raise PromotionRefused(f"{name} version {version} is already @{CHAMPION}")
        # The decision is written on the version first; the alias then moves in one write, so a
        # reader of @champion never sees a version without its approval record.
        with self._errors(f"recording the decision on {name} version {version}"):
            self.client.set_model_version_tag(name, version, "decision", decision.word)
            self.client.set_model_version_tag(name, version, "approved_by", decision.reviewer)
            self.client.set_model_version_tag(name, version, "approved_at", decision.at)
            self.client.set_model_version_tag(name, version, "comment", decision.comment[:5000])
        if not decision.approved:
            self._append_history(name, "rejected", version, decision.reviewer, reason=decision.comment)
            log.info("%s version %s rejected by %s", name, version, decision.reviewer)
            return None
        with self._errors(f"moving @{CHAMPION} of {name} to version {version}"):
            self.client.set_registered_model_alias(name, CHAMPION, version)
        self._append_history(name, "promoted", version, decision.reviewer, alias=CHAMPION,
                             previous=current, reason=decision.comment)
        log.info("%s @%s: %s -> %s (by %s)", name, CHAMPION, current, version, decision.reviewer)
        return current

    def rollback(self, name: str, actor: str | None = None, reason: str = "") -> tuple[str, str]:
        """Move ``@champion`` back to the previous approved champion; delete nothing.

        The version rolled back from keeps its record and gains ``rolled_back_*`` tags, so it is
        not chosen by a later rollback.

        Returns:
            ``(from_version, to_version)``.

        Raises:
            RegistryError: there is no champion, or no earlier approved champion to go back to.
        """
        kind_of(name)
        by = actor_name(actor)
        current = self.aliases(name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no @{CHAMPION}; nothing to roll back")
        champions = [e.version for e in self.history(name)
                     if e.alias == CHAMPION and e.action in ("promoted", "rolled_back")]
        target = None
        for v in reversed(champions):
            if v == current:
                continue
            tags = self.version(name, v).tags
            if tags.get("decision") == "approved" and "rolled_back_at" not in tags:
                target = v
                break
        if target is None:
            raise RegistryError(
                f"{name} @{CHAMPION} is version {current} and no earlier approved champion exists "
                f"(champion history: {champions or 'empty'}); promote another version instead")
        at = _now()
        with self._errors(f"marking {name} version {current} rolled back"):
            self.client.set_model_version_tag(name, current, "rolled_back_by", by)
            self.client.set_model_version_tag(name, current, "rolled_back_at", at)
            self.client.set_model_version_tag(name, current, "rolled_back_reason", reason[:5000])
        with self._errors(f"moving @{CHAMPION} of {name} back to version {target}"):
            self.client.set_registered_model_alias(name, CHAMPION, target)
        self._append_history(name, "rolled_back", target, by, alias=CHAMPION, previous=current, reason=reason)
        log.info("%s @%s rolled back: %s -> %s (by %s)", name, CHAMPION, current, target, by)
        return current, target

    def champion_record(self, name: str) -> tuple[VersionInfo | None, dict[str, float], str | None]:
        """The champion version, its recorded metrics and the data digest they were measured on."""
        info = self.by_alias(name, CHAMPION)
        if info is None:
            return None, {}, None
        return info, info.metrics, info.tags.get("rgops.data_digest")

    def register_all(self, items: list[dict[str, Any]]) -> list[VersionInfo]:
        """Register several models as one unit: all of them, or none.

        Each item holds the keyword arguments of :meth:`register`. When one fails, the versions
        registered by this call are deleted again and ``@challenger`` is restored on each model.
        """
        done: list[VersionInfo] = []
        before = {model_name(i["kind"]): self.aliases(model_name(i["kind"])).get(CHALLENGER) for i in items}
        try:
            for item in items:
                done.append(self.register(**item))
        except BaseException:
            for info in done:
                with contextlib.suppress(Exception):
                    self.client.delete_model_version(info.name, info.version)
                    if before.get(info.name):
                        self.client.set_registered_model_alias(info.name, CHALLENGER, before[info.name])
                    log.warning("registered %s version %s withdrawn: a sibling model failed to register",
                                info.name, info.version)
            raise
        return done

    def load_model(self, model_uri: str) -> Any:
        """Load a logged or registered model (``models:/rgops-cae@champion``) from this registry,
        digests checked before unpickling; returns a :class:`rgops.tracking.LoadedModel`."""
        import mlflow

        from rgops.tracking import load_logged_model

        mlflow.set_tracking_uri(self.tracking_uri)  # load_logged_model resolves through the global URI
        with self._errors(f"loading {model_uri}"):
            return load_logged_model(model_uri)

    def reap_orphan_runs(self, experiment: str, host: str) -> list[str]:
        """Mark RUNNING runs of ``experiment`` owned by a dead process on ``host`` as FAILED.

        A run's owner is recorded in its ``rgops.host``/``rgops.pid`` tags; a run with a live owner,
        or owned by another host, is left alone. Returns the ids of the runs marked FAILED.
        """
        with self._errors(f"looking for orphaned runs in experiment {experiment!r}"):
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                return []
            runs = self.client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        reaped = []
        for run in runs:
            tags = run.data.tags
            if tags.get("rgops.host") != host or not tags.get("rgops.pid", "").isdigit():
                continue
            try:
                os.kill(int(tags["rgops.pid"]), 0)
                continue  # the owner still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # a live process of another user
            with self._errors(f"marking orphaned run {run.info.run_id} FAILED"):
                self.client.set_tag(run.info.run_id, "rgops.failure",
                                    f"owner process {tags['rgops.pid']} on {host} died; marked FAILED at {_now()}")
                self.client.set_terminated(run.info.run_id, status="FAILED")
            log.warning("run %s was left RUNNING by dead process %s; marked FAILED", run.info.run_id, tags["rgops.pid"])
            reaped.append(run.info.run_id)
        return reaped
