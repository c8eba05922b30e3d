"""Models loaded for serving and the slots that follow a registry alias.

Models come from the MLflow registry by alias (``models:/rgops-cae@champion``) through
:class:`ModelSlot`, which swaps in a new version when the alias moves while requests in flight
finish on the version they started with.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rgops.data.datasets import GenePanel
from rgops.data.patch import PatchSpec
from rgops.errors import RegistryError
from rgops.models.program_head import ProgramHead

log = logging.getLogger(__name__)

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
    pulls a model out from under a request in flight, and no request waits for a reload.

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

    @property
    def current(self) -> ServedModel:
        model = self._model
        if model is None:
            raise RegistryError(
                f"no model loaded for {self.name}@{self.alias}"
                + (f" ({self.last_error})" if self.last_error else "")
                + f"; register a version and set the alias (`rgops promote`), then POST /admin/reload"
            )
        return model

    @property
    def ready(self) -> bool:
        return self._model is not None

    def refresh(self) -> bool:
        """Load the version the alias points at if it differs from the one served.

        Returns:
            True when a new version was swapped in.

        Raises:
            RegistryError: the alias is not set.
            IntegrityError: the new version's weights do not match their recorded digest (the
                old version keeps serving).
            TrackingError: the registry is unreachable (the old version keeps serving).
        """
        with self._lock:
            version = self._resolve(self.name, self.alias)
            if version is None:
                self.last_error = f"alias @{self.alias} of {self.name} is not set"
                raise RegistryError(
                    f"registered model {self.name} has no @{self.alias} version; "
                    f"promote one with `rgops promote` first"
                )
            old = self._model
            if old is not None and old.version == str(version):
                return False
            new = self._load(self.name, str(version), self.alias)
            self._model = new
            self.last_error = None
            log.info("%s@%s: serving version %s (was %s)", self.name, self.alias, new.version,
                     old.version if old else "none")
            return True


def registry_source(tracking_uri: str | None = None, device: str = "cpu") -> tuple[Resolver, Loader]:
    """Resolver and loader over the MLflow registry (through ``rgops.registry``/``rgops.tracking``).

    The loader pins the version it resolved (``models:/<name>/<version>``), so an alias moving
    between resolving and loading cannot mix versions, and ``rgops.tracking.load_logged_model``
    verifies the weights' SHA-256 against the digest recorded at registration before unpickling, and
    the program head's against the version's ``rgops.program_head_sha256`` (no head: no program scores).
    The module is then moved to ``device``.
    """
    from rgops.registry import Registry

    registry = Registry(tracking_uri)

    def resolve(name: str, alias: str) -> str | None:
        return registry.aliases(name).get(alias)

    def load(name: str, version: str, alias: str | None) -> ServedModel:
        info = registry.version(name, version)
        loaded = registry.load_model(f"models:/{name}/{version}")  # weights and program head digest-checked
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
