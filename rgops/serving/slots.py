"""Models loaded for serving and the slots that follow a registry alias.

Models come from the MLflow registry by alias (``models:/rgops-cae@champion``) through
:class:`ModelSlot`, which swaps in a new version when the alias moves while requests in flight
finish on the version they started with.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rgops.data.datasets import GenePanel
from rgops.data.patch import PatchSpec
from rgops.errors import RegistryError, RgopsError, ServiceUnavailable, TrackingError
from rgops.models.program_head import ProgramHead
from rgops.serving.workers import WorkerGroup

log = logging.getLogger(__name__)

RELOAD_TOPIC = "reload"

CAE_MODEL = "rgops-cae"
GAN_MODEL = "rgops-gan"


@dataclass(frozen=True)
class ServedModel:
    """A model loaded for serving, with where it came from.

    Attributes:
        name: registered-model name (``rgops-cae`` / ``rgops-gan``).
        version: registry version number (a string, as MLflow gives it).
        alias: the alias it was loaded through, or None when pinned by version.
        kind: ``cae`` or ``gan``.
        module: the torch module in eval mode (``ConditionalAE`` or the GAN ``Generator``).
        panel: the gene panel (genes and normalisation statistics) the model was trained with.
        card: the model card (JSON-able mapping) shown by ``/metadata``.
        weights_sha256: digest of the weights, verified before loading.
        program_head: latent -> program scores, when the model carries one.
    """

    name: str
    version: str
    alias: str | None
    kind: str
    module: Any
    panel: GenePanel
    card: Mapping[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    program_head: ProgramHead | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def image_size(self) -> int:
        return int(self.module.config.image_size)

    @property
    def device(self) -> Any:
        """The torch device the module's weights live on."""
        return next(self.module.parameters()).device

    @property
    def spec(self) -> PatchSpec:
        """The patch contract recorded in the model card: what ``/extract`` cuts for this model."""
        patch = (self.card or {}).get("patch") or {}
        return PatchSpec.from_json(patch) if "format" in patch else PatchSpec(size=self.image_size)

    @property
    def reads_scale(self) -> bool:
        """Whether the encoder takes the patch scale (``mm_per_px``) beside the image."""
        return bool(getattr(self.module.config, "scale_input", False))

    def describe(self) -> dict[str, Any]:
        """What every response carries about the model that produced it."""
        return {"name": self.name, "version": self.version, "alias": self.alias,
                "uri": self.uri, "weights_sha256": self.weights_sha256,
                "trained_on": (self.card or {}).get("trained_on") or {"origin": "unknown"}}

    def metadata(self) -> dict[str, Any]:
        """The model card and contract for ``/metadata``."""
        cfg = self.module.config
        return {**self.describe(), "kind": self.kind, "card": dict(self.card),
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
                "genes": list(self.panel.genes), "gene_transform": self.panel.transform,
                "patch": {**self.spec.to_json(), "range": [-1.0, 1.0], "needs_mm_per_px": self.reads_scale},
                "program_scores": list(self.program_head.names) if self.program_head else None}


Resolver = Callable[[str, str], "str | None"]
Loader = Callable[[str, str, "str | None"], ServedModel]


class ModelSlot:
    """The model a service currently serves, swapped atomically when its registry alias moves.

    ``current`` is read once per request; a request keeps the object it read, so a reload never
    pulls a model out from under a request in flight, and no request waits for a reload (reloads run
    in :class:`Reloader`'s threads).

    Args:
        name: registered-model name.
        alias: alias to follow.
        resolve: ``(name, alias) -> version or None``.
        load: ``(name, version, alias) -> ServedModel`` (verifies the weights digest).
    """

    def __init__(self, name: str, alias: str, resolve: Resolver, load: Loader) -> None:
        self.name, self.alias = name, alias
        self._resolve, self._load = resolve, load
        self._model: ServedModel | None = None
        self._lock = threading.Lock()  # serialises reloads, never held by a request
        self.last_error: str | None = None
        self.last_attempt: float | None = None
        self.last_success: float | None = None

    @property
    def current(self) -> ServedModel:
        """The loaded model.

        Raises:
            ServiceUnavailable: nothing is loaded yet (the registry is unreachable, or the alias unset).
        """
        model = self._model
        if model is None:
            raise ServiceUnavailable(
                f"no model loaded yet for {self.name}@{self.alias}"
                + (f" ({self.last_error})" if self.last_error else "")
                + "; the server keeps retrying: retry after the Retry-After seconds (or promote a version with "
                "`rgops promote` and POST /admin/reload)"
            )
        return model

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def busy(self) -> bool:
        """Whether a reload is in progress (possibly one that outlived its timeout)."""
        return self._lock.locked()

    def refresh(self) -> bool:
        """Load the version the alias points at if it differs from the one served.

        Returns:
            True when a new version was swapped in; False when unchanged or a reload is already running.

        Raises:
            RegistryError: the alias is not set.
            IntegrityError: the new version's weights do not match their recorded digest (the
                old version keeps serving).
            TrackingError: the registry is unreachable (the old version keeps serving).
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self.last_attempt = time.time()
            version = self._resolve(self.name, self.alias)
            if version is None:
                raise RegistryError(f"registered model {self.name} has no @{self.alias} version; "
                                    "promote one with `rgops promote` first")
            old = self._model
            if old is None or old.version != str(version):
                self._model = self._load(self.name, str(version), self.alias)
                log.info("%s@%s moved: now serving version %s (was %s)", self.name, self.alias, version,
                         old.version if old else "none")
            self.last_error, self.last_success = None, time.time()
            return old is None or old.version != str(version)
        except RgopsError as exc:
            self.last_error = str(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - the registry's own failures must not kill the poller
            self.last_error = f"{type(exc).__name__} while reloading from the registry: {str(exc)[:200]}"
            raise TrackingError(f"{self.name}@{self.alias}: {self.last_error}; the loaded version keeps "
                                "serving") from None
        finally:
            self._lock.release()

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` and ``/metadata`` say about this slot."""
        model = self._model
        return {"version": model.version if model else None, "loaded": model is not None,
                "last_reload_ok": self.last_error is None, "last_reload_error": self.last_error,
                "reload_in_progress": self.busy, "last_success_unix": self.last_success}


class Reloader:
    """Keeps slots following their aliases from a background thread, never on a request's path.

    Each attempt refreshes every slot in its own thread and waits at most ``timeout_s``; a reload
    that takes longer keeps running (its slot reports ``reload_in_progress``) while the loaded
    version keeps serving. Until every slot has a model, attempts repeat with exponential backoff
    (``backoff_s`` doubling up to ``max_backoff_s``); then every ``poll_s`` seconds (0: only on
    :meth:`reload_now`). With a :class:`WorkerGroup`, a move one worker's poll finds, or a
    :meth:`reload_everywhere`, is announced to the other workers, whose reloaders follow within
    ``watch_s``.
    """

    def __init__(self, slots: Sequence[ModelSlot], poll_s: float, timeout_s: float,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, group: WorkerGroup | None = None,
                 watch_s: float = 0.1) -> None:
        self.slots, self.poll_s, self.timeout_s = list(slots), poll_s, timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.group, self.watch_s = group, watch_s
        self._seen = group.latest(RELOAD_TOPIC) if group is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rgops-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            loaded = {s.name for s in self.slots if s.ready}
            outcome = self.reload_now()
            if self.group is not None and any(outcome[name].get("changed") for name in loaded):
                # this worker's poll saw an alias move first: the others follow now, not at their own poll
                self._seen = self.group.announce(RELOAD_TOPIC)
            if all(s.ready for s in self.slots):
                delay = self.backoff_s
                if self.poll_s <= 0 and self.group is None:
                    return
                wait = self.poll_s if self.poll_s > 0 else float("inf")
            else:
                wait, delay = delay, min(delay * 2, self.max_backoff_s)
            self._wait(wait)

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or until stopped; a reload another worker announces is handled meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.group is None:
                self._stop.wait(left)
                continue
            self._stop.wait(min(left, self.watch_s))
            token = self.group.latest(RELOAD_TOPIC)
            if token is not None and token != self._seen:
                self._seen = token
                self.reload_now()
                self.group.ack(RELOAD_TOPIC, token)

    def reload_everywhere(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`reload_now` here, then in every other worker of the server: each slot's outcome
        here, and the workers (``count``, and the PIDs that had not reloaded in time, ``not_synced``).

        Another worker picks the announcement up within ``watch_s`` and its attempt is bounded by
        ``timeout_s``, so this waits that long plus a second of slack: when it returns, every worker
        has finished its attempt and says how it went (a wait of ``timeout_s`` alone returned while
        the others' attempts were still running, and their ``/readyz`` did not show the failure yet).
        """
        outcome = self.reload_now()
        if self.group is None:
            return outcome, {"count": 1, "not_synced": []}
        self._seen = token = self.group.announce(RELOAD_TOPIC)
        wait_s = self.timeout_s + self.watch_s + 1.0
        missing = self.group.wait_acks(RELOAD_TOPIC, token, wait_s)
        if missing:
            log.warning("reload announced; %d worker(s) had not reloaded after %g s", len(missing), wait_s)
        return outcome, {"count": len(self.group.live_pids()), "not_synced": missing}

    def reload_now(self) -> dict[str, Any]:
        """One attempt on every slot, waiting at most ``timeout_s``; each slot's outcome."""
        outcome: dict[str, dict[str, Any]] = {s.name: {} for s in self.slots}

        def one(slot: ModelSlot) -> None:
            try:
                outcome[slot.name]["changed"] = slot.refresh()
            except RgopsError as exc:
                # registry errors name models, versions and hosts, never patient data
                log.warning("%s@%s not (re)loaded: %s: %s", slot.name, slot.alias, type(exc).__name__, str(exc)[:300])
                outcome[slot.name]["changed"] = False

        threads = [threading.Thread(target=one, args=(s,), name=f"rgops-reload-{s.name}", daemon=True)
                   for s in self.slots if not s.busy]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            if slot.busy:
                slot.last_error = (f"reload still running after {self.timeout_s:g} s (serve.reload_timeout_s): the "
                                   "registry is slow or unreachable; the loaded version keeps serving")
            outcome[slot.name] = {**slot.status(), "changed": outcome[slot.name].get("changed", False)}
        if self.group is not None:
            self.group.set_ready(all(s.ready for s in self.slots))
        return outcome


def registry_source(tracking_uri: str | None = None, device: str = "cpu") -> tuple[Resolver, Loader]:
    """Resolver and loader over the MLflow registry (through ``rgops.registry``/``rgops.tracking``).

    The loader pins the version it resolved (``models:/<name>/<version>``), so an alias moving
    between resolving and loading cannot mix versions, and ``rgops.tracking.load_logged_model``
    verifies the weights' SHA-256 against the digest recorded at registration before unpickling, and
    the program head's against the version's ``rgops.program_head_sha256`` (no head: no program scores).
    The module is then moved to ``device``.
    """
    from rgops.registry import Registry

    made: list[Registry] = []

    def registry() -> Registry:  # built on first use, in the reloader's thread: never blocks a start
        if not made:
            made.append(Registry(tracking_uri))
        return made[0]

    def resolve(name: str, alias: str) -> str | None:
        return registry().aliases(name).get(alias)

    def load(name: str, version: str, alias: str | None) -> ServedModel:
        info = registry().version(name, version)
        loaded = registry().load_model(f"models:/{name}/{version}")  # weights and program head digest-checked
        recorded = info.tags.get("rgops.weights_sha256")
        if recorded and loaded.weights_sha256 != recorded:
            from rgops.errors import IntegrityError

            raise IntegrityError(
                f"{name} version {version}: weights digest {loaded.weights_sha256[:12]} differs from the "
                f"{recorded[:12]} recorded at registration; the artifact was altered, re-register the model"
            )
        head = getattr(loaded, "program_head", None)
        if isinstance(head, Mapping):
            head = ProgramHead.from_json(head)
        module = loaded.module.to(device).eval()
        return ServedModel(name, str(version), alias, loaded.kind, module, loaded.panel,
                           dict(loaded.card or {}), loaded.weights_sha256, head)

    return resolve, load
