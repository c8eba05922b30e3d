"""The MLflow model registry: versions, aliases, promotion gates and the approval record.

One registered model per kind (``rgops-cae``, ``rgops-gan``). A version is registered only after
training and evaluation succeeded (:func:`register_candidate` in ``rgops.retrain``), and it is
registered *fully* — lineage, metrics, params, weights digest and model card are written in the
same ``create_model_version`` call — before any alias points at it. Aliases, never the deprecated
stages: a new version gets ``@challenger``; ``@champion`` is what services load. An alias move is a
single registry write, so a reader of ``models:/rgops-cae@champion`` sees the old or the new
version, never a half-registered one.

Promotion is decided by the pure gates of :mod:`rgops.promotion` (read from the ``promote:``
section of ``params.yaml``); this module records their report on the version (:meth:`Registry.record_gates`,
:meth:`Registry.refuse`) and moves the aliases. A refused promotion raises
:class:`~rgops.errors.PromotionRefused` naming the gate and both numbers.

Every MLflow call goes through :func:`rgops.tracking.mlflow_errors`, the one place MLflow's exceptions
become rgops errors, on an explicit ``MlflowClient`` (:func:`rgops.tracking.make_client`).

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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from rgops.errors import PromotionRefused, RegistryError
from rgops.promotion import KINDS, GateReport, model_name
from rgops.tracking import make_client, mlflow_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_PREFIX = "rgops.history."
DECISIONS = ("pending", "approved", "rejected", "refused")


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
        client: an explicit ``MlflowClient`` to use instead (its tracking URI wins).
    """

    def __init__(self, tracking_uri: str | None = None, client: MlflowClient | None = None) -> None:
        self.client = client or make_client(tracking_uri)
        self.tracking_uri: str = self.client.tracking_uri

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return mlflow_errors(what, self.tracking_uri)

    # -- reading ----------------------------------------------------------------------------------

    def _info(self, mv: Any, aliases: Mapping[str, str]) -> VersionInfo:
        version = str(mv.version)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
        return VersionInfo(mv.name, version, tuple(sorted(a for a, v in aliases.items() if str(v) == version)),
                           mv.run_id, mv.source, created, dict(mv.tags or {}), mv.description or "")

    def _registered_model(self, name: str) -> Any | None:
        """The registered model, or None when it does not exist yet."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"reading registered model {name!r}"):
            try:
                return self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of a registered model ({} when the model does not exist yet)."""
        rm = self._registered_model(name)
        return {} if rm is None else {a: str(v) for a, v in (rm.aliases or {}).items()}

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
        return self._registered_model(name) is not None

    def history(self, name: str) -> list[HistoryEntry]:
        """The append-only history of decisions and alias moves, oldest first."""
        rm = self._registered_model(name)
        tags = (rm.tags or {}) if rm is not None else {}
        entries = [HistoryEntry(**json.loads(v)) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
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
        all_tags = self._version_tags(kind, run_id, metrics, data_version, tags)
        source, model_id = self._source(model_uri)
        self._ensure_model(name, kind)
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

    def _version_tags(self, kind: str, run_id: str, metrics: Mapping[str, float], data_version: Mapping[str, str],
                      tags: Mapping[str, str] | None) -> dict[str, str]:
        """Everything a new version carries: the run's ``rgops.*`` tags and params, metrics, data version."""
        if "data_digest" not in data_version:
            raise RegistryError(f"data_version for {model_name(kind)} lacks 'data_digest' (got keys "
                                f"{sorted(data_version)}); pass the digest of the datasets the model was trained on")
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
        return all_tags

    def _source(self, model_uri: str) -> tuple[str, str | None]:
        """``(source, model_id)`` of a logged model URI for ``create_model_version``."""
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        if model_id is None:
            return model_uri, None
        # The SQL registry store resolves a models:/m-... source through the *global* tracking
        # URI (an MLflow TODO); resolve it with this client so a non-default store works.
        with self._errors(f"reading logged model {model_id}"):
            return self.client.get_logged_model(model_id).artifact_location, model_id

    def _ensure_model(self, name: str, kind: str) -> None:
        from mlflow.exceptions import MlflowException

        with self._errors(f"creating registered model {name!r}"):
            try:
                self.client.create_registered_model(
                    name, description=f"rgops {kind} model; @champion is what services load")
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise

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
        from rgops.tracking import load_logged_model

        return load_logged_model(model_uri, self.client)
