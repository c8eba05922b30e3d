"""What a served request does, without the web framework: the domain logic behind ``services/``.

Feature extraction: uploaded DICOM (a CT series with its SEG, as files or a zip; or one CT slice
with a tumour box or mask) -> de-identified in memory -> the tumour patch cut with ingest's own
code -> the CAE's latent (the imaging biomarker) and, when the model carries a program head, the
predicted gene-program scores. Ready patches skip the DICOM steps.

Image generation: a raw gene-expression profile (a mapping gene -> value, or a TSV column in the
format of the cohort's ``genes.tsv``) -> normalised with the model's gene panel -> the GAN's
generator -> patches, rendered by :mod:`rgops.export` as PNG or DICOM Secondary Capture.

Models come from the MLflow registry by alias (``models:/rgops-cae@champion``) through
:class:`ModelSlot`, which swaps in a new version when the alias moves while requests in flight
finish on the version they started with. Every error a client can cause is an
:class:`~rgops.errors.RgopsError`; ``services/errors.py`` maps them to HTTP status codes.

Nothing here logs identifiers or payloads: log lines carry counts, shapes, versions and timings.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from rgops.config import from_dict
from rgops.data.datasets import GenePanel
from rgops.data.patch import PatchSpec, log_scale
from rgops.errors import (
    ConfigError,
    DicomError,
    GeneMismatchError,
    GeneTableError,
    RegistryError,
    RgopsError,
    ShapeError,
)

log = logging.getLogger(__name__)

CAE_MODEL = "rgops-cae"
GAN_MODEL = "rgops-gan"


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve:`` section of ``params.yaml``.

    Attributes:
        host: interface ``rgops serve`` binds to (localhost by default; put a proxy in front).
        port: HTTP port.
        alias: registry alias the services load (never "latest").
        max_request_mb: request bodies above this are refused with 413.
        max_files: most DICOM files one extraction request may carry (after unzipping).
        max_samples: most images one generation request may ask for.
        max_batch_size: adaptive batching: most patches the server encodes in one model call.
        max_latency_ms: adaptive batching: BentoML's latency budget per request; requests it
            predicts would exceed it are shed with 503, so on a CPU keep it well above one batch's time.
        device: where the models run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: requests the server runs at once (BentoML ``threads``; model calls release the GIL).
        reload_poll_s: seconds between checks whether the alias moved (0: only the admin route).
        traversal_steps: images in a gene-traversal strip.
        traversal_span: the strip shifts the chosen genes from -span to +span (z-score units).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    alias: str = "champion"
    max_request_mb: float = 64.0
    max_files: int = 2000
    max_samples: int = 16
    max_batch_size: int = 32
    max_latency_ms: int = 10000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 4
    reload_poll_s: float = 30.0
    traversal_steps: int = 7
    traversal_span: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_samples", "max_batch_size", "traversal_steps", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_request_mb <= 4096:
            raise ConfigError(f"serve.max_request_mb must be in (0, 4096], got {self.max_request_mb}")
        if self.max_latency_ms < 1 or self.reload_poll_s < 0 or self.traversal_span <= 0:
            raise ConfigError("serve.max_latency_ms must be >= 1, reload_poll_s >= 0, traversal_span > 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be a TCP port (1-65535), got {self.port}")

    def torch_device(self) -> str:
        """The device models are loaded on (``auto`` resolved).

        Raises:
            ConfigError: ``cuda`` asked for on a machine without CUDA.
        """
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("serve.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "ServeConfig":
        """Read ``params['serve']``; defaults when the section (or the whole file) is absent."""
        data = (params or {}).get("serve") or {}
        return from_dict(cls, dict(data), "serve")


# --- models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramHead:
    """A linear map latent -> gene-program scores, fitted at evaluation time and stored with a model.

    ``scores = latent @ coef.T + intercept``; ``coef`` has shape ``(P, latent_dim)``.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray

    def __post_init__(self) -> None:
        if self.coef.ndim != 2 or self.coef.shape[0] != len(self.names) or self.intercept.shape != (len(self.names),):
            raise ShapeError(f"program head has {len(self.names)} names, coef {self.coef.shape} and "
                             f"intercept {self.intercept.shape}; expected (P, latent_dim) and (P,)")

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        if latent.ndim != 2 or latent.shape[1] != self.coef.shape[1]:
            raise ShapeError(f"program head expects latents (B, {self.coef.shape[1]}), got {latent.shape}")
        return latent @ self.coef.T + self.intercept

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProgramHead":
        return cls(tuple(data["names"]), np.asarray(data["coef"], dtype=np.float64),
                   np.asarray(data["intercept"], dtype=np.float64))


NO_PROGRAM_HEAD = ("this model version carries no program head (a latent -> gene-program map fitted at "
                   "evaluation time); program scores are not predicted rather than guessed")


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
                "uri": self.uri, "weights_sha256": self.weights_sha256}

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


# --- feature extraction -------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """The output of feature extraction for a batch of patches.

    ``program_scores`` is None with ``program_reason`` set when the model has no program head.
    """

    latent: np.ndarray
    program_names: tuple[str, ...] | None
    program_scores: np.ndarray | None
    program_reason: str | None

    def mean(self, head: "ProgramHead | None") -> "Features":
        """The per-patient biomarker: the mean latent over a patient's slices, and its program scores."""
        latent = self.latent.mean(axis=0, keepdims=True)
        scores = None if head is None or self.program_scores is None else head(latent)
        return Features(latent, self.program_names, scores, self.program_reason)

    def row(self, i: int) -> dict[str, Any]:
        """One patch's features as JSON-able values."""
        scores = (None if self.program_scores is None
                  else dict(zip(self.program_names or (), map(float, self.program_scores[i]))))
        return {"latent": [float(v) for v in self.latent[i]], "program_scores": scores,
                "program_scores_reason": self.program_reason}


def check_patches(patches: np.ndarray | Sequence[Any], size: int) -> np.ndarray:
    """Ready patches from a client -> float32 ``(B, 1, S, S)``, checked.

    Accepts ``(B, 1, S, S)``, ``(B, S, S)`` or one ``(S, S)`` patch, values in [-1, 1] (the ingest
    scaling of HU [-1000, 500]).

    Raises:
        ShapeError: wrong shape, side other than ``size``, empty, non-finite or out-of-range values.
    """
    try:
        arr = np.asarray(patches, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"patches are not a rectangular array of numbers ({exc}); send (B, 1, {size}, {size}) "
                         "floats in [-1, 1]") from None
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2:] != (size, size) or arr.shape[0] < 1:
        raise ShapeError(f"patches have shape {tuple(np.shape(patches))}, expected (B, 1, {size}, {size}) "
                         f"with B >= 1; this model was trained on {size} x {size} patches")
    if not np.isfinite(arr).all():
        raise ShapeError("patches hold NaN or infinite values; send finite values in [-1, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise ShapeError(f"patch values span [{lo:.3g}, {hi:.3g}], expected [-1, 1] (HU [-1000, 500] scaled); "
                         "send patches preprocessed like ingest, or send the DICOM to /extract")
    return np.clip(arr, -1.0, 1.0)


def check_scale(model: ServedModel, mm_per_px: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray | None:
    """The scale input ``log2(mm_per_px)`` ``(n,)`` for a model that reads it (None for one that does not).

    Raises:
        ShapeError: the model reads the scale and none, the wrong number, or non-positive values came.
    """
    if not model.reads_scale:
        return None
    if mm_per_px is None:
        raise ShapeError(f"{model.name} version {model.version} reads each patch's physical scale: send "
                         "'mm_per_px' (crop side in mm / patch side, patch contract v2) with ready patches, "
                         "or send the DICOM to /extract")
    try:
        arr = np.asarray(mm_per_px, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ShapeError(f"mm_per_px must be numbers; got {str(mm_per_px)[:40]!r}") from None
    if arr.size == 1 and n > 1:
        arr = np.repeat(arr, n)
    if arr.size != n or not np.isfinite(arr).all() or (arr <= 0).any() or (arr > 100).any():
        raise ShapeError(f"mm_per_px must be {n} finite value(s) in (0, 100] mm, one per patch; got {arr.size}")
    return log_scale(arr)


def encode(model: ServedModel, patches: np.ndarray, genes: np.ndarray | None = None,
           scale: np.ndarray | None = None) -> Features:
    """Checked patches ``(B, 1, S, S)`` (normalised genes ``(B, G)`` for an encoder-conditioned CAE,
    and the scale ``log2(mm_per_px)`` ``(B,)`` from :func:`check_scale` for a scale-reading CAE)
    -> :class:`Features`.

    Raises:
        GeneMismatchError: the CAE reads genes in its encoder and none were given.
        ShapeError: the CAE reads the scale and none was given.
    """
    import torch

    needs_genes = getattr(model.module.config, "conditioning", "none") == "encoder"
    if needs_genes and genes is None:
        raise GeneMismatchError(
            f"{model.name} version {model.version} reads a gene profile with the image (encoder "
            "conditioning); send the patient's profile with the images"
        )
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(model.device)
        g = torch.from_numpy(np.ascontiguousarray(genes, dtype=np.float32)).to(model.device) if needs_genes else None
        if model.reads_scale and scale is None:
            raise ShapeError(f"{model.name} version {model.version} reads each patch's scale; send mm_per_px")
        sc = torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)).to(model.device) if model.reads_scale else None
        latent = model.module.encode(x, g, sc).cpu().numpy().astype(np.float64)
    if model.program_head is None:
        return Features(latent, None, None, NO_PROGRAM_HEAD)
    return Features(latent, model.program_head.names, model.program_head(latent), None)


def encode_items(model: ServedModel, items: Sequence[tuple[Any, Mapping[str, Any] | None, float | None]],
                 out: Callable[..., Any] = dict) -> list[Any]:
    """A batch of ready patches from several requests -> one result per item, in order.

    Each item is ``(pixels, raw_profile or None, mm_per_px or None)``. Items are checked one by one, so one client's
    bad patch gives *that item* an ``error`` (with its reason) instead of failing the others in
    the batch; the valid ones are encoded in one model call.

    Args:
        out: constructor of a result (keyword arguments ``latent``, ``program_scores``,
            ``program_scores_reason``, ``model``, ``error``).
    """
    needs_genes = getattr(model.module.config, "conditioning", "none") == "encoder"
    good: list[int] = []
    arrays: list[np.ndarray] = []
    genes: list[np.ndarray] = []
    scales: list[float] = []
    errors: dict[int, str] = {}
    for i, (pixels, profile, mm_per_px) in enumerate(items):
        try:
            scale = check_scale(model, None if mm_per_px is None else [mm_per_px], 1)
            arrays.append(check_patches(pixels, model.image_size)[0])
            if needs_genes:
                if profile is None:
                    raise GeneMismatchError(f"{model.name} version {model.version} reads a gene profile "
                                            "with the image; send 'profile' with each patch")
                genes.append(normalise_profile(model.panel, profile, impute=False).genes[0])
            if scale is not None:
                scales.append(float(scale[0]))
            good.append(i)
        except RgopsError as exc:
            if len(arrays) > len(good):
                arrays.pop()
            errors[i] = f"{type(exc).__name__}: {exc}"
    results: list[Any] = [None] * len(items)
    if good:
        feats = encode(model, np.stack(arrays), np.stack(genes) if needs_genes else None,
                       np.asarray(scales, dtype=np.float32) if model.reads_scale else None)
        for j, i in enumerate(good):
            results[i] = out(**feats.row(j), model=model.describe(), error=None)
    for i, reason in errors.items():
        results[i] = out(latent=None, program_scores=None, program_scores_reason=None,
                         model=model.describe(), error=reason)
    log.debug("encoded %d patches (%d refused) with %s v%s", len(good), len(errors), model.name, model.version)
    return results


NPY_MAGIC = b"\x93NUMPY"


def is_npy(data: bytes) -> bool:
    """Whether an upload is a NumPy ``.npy`` file (ready patches) rather than DICOM."""
    return data[:6] == NPY_MAGIC


def read_npy_patches(data: bytes, size: int, max_patches: int) -> np.ndarray:
    """Ready patches uploaded as a ``.npy`` file -> checked float32 ``(B, 1, S, S)``.

    Loaded with ``allow_pickle=False``: an object array is refused, never unpickled.

    Raises:
        ShapeError: not a readable numeric ``.npy``, more than ``max_patches`` patches, or out of
            contract (see :func:`check_patches`).
    """
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShapeError(f"the .npy upload cannot be read ({exc}); send a numeric array saved with numpy.save "
                         "(object arrays are refused)") from None
    patches = check_patches(arr, size)
    if len(patches) > max_patches:
        raise ShapeError(f"the .npy holds {len(patches)} patches; at most {max_patches} per request")
    return patches


def read_npy_mask(arrays: Sequence[bytes]) -> np.ndarray:
    """The one tumour mask ``(rows, columns)`` uploaded as ``.npy`` beside a single CT slice.

    Raises:
        ShapeError: more than one array, not 2-D, not numeric, or empty (no tumour pixel).
    """
    if len(arrays) != 1:
        raise ShapeError(f"{len(arrays)} .npy files uploaded with DICOM; send one tumour mask (rows, columns)")
    try:
        mask = np.load(io.BytesIO(arrays[0]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShapeError(f"the .npy tumour mask cannot be read ({exc}); save a numeric 2-D array with numpy.save") from None
    if mask.ndim != 2 or mask.dtype.kind not in "biuf" or not np.any(mask):
        raise ShapeError(f"tumour mask has shape {mask.shape} and dtype {mask.dtype}; expected a numeric 2-D "
                         "array on the CT slice's grid with at least one non-zero (tumour) pixel")
    return mask


def read_dicom_upload(files: Sequence[tuple[str, bytes]], max_files: int) -> list[Any]:
    """Uploaded files (DICOM files and/or zips of them) -> pydicom datasets, pixel data included.

    Raises:
        DicomError: nothing uploaded, too many files, a zip that cannot be read, or a file that is
            not DICOM (truncated uploads land here: the message names the file's position).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    blobs: list[tuple[str, bytes]] = []
    for name, data in files:
        if data[:4] == b"PK\x03\x04" or (name or "").lower().endswith(".zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
                    if len(blobs) + len(members) > max_files:
                        raise DicomError(f"the zip holds {len(members)} files; at most {max_files} files per "
                                         "request are accepted; split the upload")
                    blobs += [(f"zip member {i + 1}", zf.read(m)) for i, m in enumerate(members)]
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
                raise DicomError(f"upload {len(blobs) + 1} is not a readable zip ({exc}); "
                                 "send a complete zip of DICOM files, or the files themselves") from None
        else:
            blobs.append((f"file {len(blobs) + 1}", data))
        if len(blobs) > max_files:
            raise DicomError(f"{len(blobs)} files uploaded; at most {max_files} per request; split the upload")
    if not blobs:
        raise DicomError("no files uploaded; send the CT series and its SEG (or a zip of them)")
    datasets = []
    for where, data in blobs:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except InvalidDicomError:
            raise DicomError(f"{where} ({len(data)} bytes) is not a DICOM Part 10 file; send .dcm files "
                             "with the 128-byte preamble and 'DICM' prefix") from None
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is the client's
            raise DicomError(f"{where} ({len(data)} bytes) could not be parsed as DICOM "
                             f"({type(exc).__name__}); the upload may be truncated, send it again") from None
        if "PixelData" not in ds:
            raise DicomError(f"{where} ({len(data)} bytes) has no pixel data: the upload was truncated or it "
                             "is not an image; send the complete CT and SEG files")
        _check_pixel_length(ds, where)
        datasets.append(ds)
    return datasets


def _check_pixel_length(ds: Any, where: str) -> None:
    """Uncompressed pixel data shorter than its header promises means a truncated upload."""
    if not ds.file_meta.get("TransferSyntaxUID") or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    except (AttributeError, TypeError, ValueError):
        raise DicomError(f"{where} lacks Rows/Columns/BitsAllocated; the file is not a usable image") from None
    expected = (n * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise DicomError(f"{where} has {len(ds.PixelData)} bytes of pixel data, its header promises {expected}: "
                         "the upload was truncated; send the complete file again")


# --- generation ---------------------------------------------------------------------------------


def profile_from_tsv(text: str, sample: str | None = None) -> pd.Series:
    """One profile from TSV text in the cohort's ``genes.tsv`` format.

    The first column is ``gene_symbol``; then one column per sample. With several sample columns
    ``sample`` picks one; empty cells are missing values.

    Raises:
        GeneTableError: not that format, duplicate genes, or the sample column is absent/ambiguous.
    """
    try:
        table = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise GeneTableError(f"profile TSV cannot be parsed ({exc}); send tab-separated text with a "
                             "'gene_symbol' column and one column per sample") from None
    if table.shape[1] < 2 or table.columns[0] != "gene_symbol":
        raise GeneTableError(f"profile TSV columns are {list(table.columns)[:5]}; expected 'gene_symbol' "
                             "first, then one column per sample, as in genes.tsv")
    samples = list(table.columns[1:])
    if sample is None:
        if len(samples) != 1:
            raise GeneTableError(f"profile TSV has {len(samples)} sample columns; name the one to use "
                                 "(field 'sample') or send a single column")
        sample = samples[0]
    if sample not in samples:
        raise GeneTableError(f"profile TSV has no sample column {sample!r}; it has {len(samples)} "
                             "sample column(s)")
    genes = table["gene_symbol"].str.strip()
    if (genes == "").any() or genes.duplicated().any():
        raise GeneTableError("profile TSV has empty or duplicated gene symbols; send one row per gene")
    values = pd.to_numeric(table[sample].replace("", np.nan), errors="coerce")
    bad = table[sample][values.isna() & (table[sample].str.strip() != "")]
    if len(bad):
        raise GeneTableError(f"profile TSV holds {len(bad)} non-numeric value(s) (genes "
                             f"{', '.join(genes[bad.index][:5])}); send numbers or empty cells")
    return pd.Series(values.to_numpy(dtype=np.float64), index=genes.to_numpy(), dtype=np.float64)


@dataclass(frozen=True)
class NormalisedProfile:
    """A profile in panel order, and what was done to get there."""

    genes: np.ndarray  # (1, G) float32, z-scored
    imputed: tuple[str, ...]  # panel genes filled with the training mean
    ignored: int  # genes in the request that the panel does not use


def normalise_profile(panel: GenePanel, profile: Mapping[str, Any] | pd.Series, impute: bool) -> NormalisedProfile:
    """Raw profile -> :class:`NormalisedProfile` with the model's panel.

    Raises:
        GeneMismatchError: panel genes are missing and ``impute`` is false (names them).
        GeneTableError: a value is not a number, negative, infinite, or NaN without ``impute``.
    """
    series = profile if isinstance(profile, pd.Series) else pd.Series(dict(profile), dtype="object")
    if len(series) == 0:
        raise GeneMismatchError(f"the profile is empty; send values for the model's {len(panel)} genes "
                                "(GET /metadata lists them)")
    genes = panel.normalise(series, impute=impute)
    present = set(map(str, series.index))
    values = pd.to_numeric(series.reindex(list(panel.genes)), errors="coerce")
    # normalise() accepted every value, so a NaN here is a gene absent or sent empty: it was imputed.
    imputed = tuple(g for g, v in zip(panel.genes, values) if pd.isna(v)) if impute else ()
    return NormalisedProfile(genes, imputed, len(present - set(panel.genes)))


def generate(model: ServedModel, genes: np.ndarray, n: int, seed: int, max_samples: int) -> np.ndarray:
    """``n`` patches ``(n, 1, S, S)`` in [-1, 1] for one normalised profile ``(1, G)``.

    Raises:
        ShapeError: ``n`` outside ``[1, max_samples]``.
    """
    import torch

    from rgops.models.gan import sample

    if not 1 <= n <= max_samples:
        raise ShapeError(f"asked for {n} samples; send n_samples between 1 and {max_samples}")
    with torch.inference_mode():
        out = sample(model.module, torch.from_numpy(genes.reshape(1, -1)), n=n, seed=seed)
    return out.cpu().numpy().astype(np.float32)


def traversal(model: ServedModel, genes: np.ndarray, program_genes: Sequence[str], steps: int,
              span: float, seed: int) -> tuple[np.ndarray, list[float]]:
    """A gene-traversal strip: the same noise, the chosen genes shifted from ``-span`` to ``+span``.

    The caller names the genes of the program to traverse (the model knows genes, not programs);
    every other gene keeps the profile's value.

    Returns:
        ``(steps, 1, S, S)`` patches and the z-score offset of each.

    Raises:
        GeneMismatchError: a named gene is not in the model's panel, or none is named.
    """
    import torch

    if not program_genes:
        raise GeneMismatchError("traversal needs the genes of the program to vary (field 'traverse_genes')")
    unknown = [g for g in program_genes if g not in model.panel.genes]
    if unknown:
        raise GeneMismatchError(f"traversal genes {unknown[:10]} are not in the model's gene panel; "
                                "GET /metadata lists the genes")
    idx = [model.panel.genes.index(g) for g in program_genes]
    offsets = np.linspace(-span, span, steps)
    batch = np.repeat(genes.reshape(1, -1), steps, axis=0).astype(np.float32)
    batch[:, idx] += offsets[:, None].astype(np.float32)
    gen = model.module
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(1, gen.config.z_dim, generator=rng).expand(steps, -1).to(model.device)
    with torch.inference_mode():
        out = gen(z, torch.from_numpy(batch).to(model.device))
    return out.cpu().numpy().astype(np.float32), [float(o) for o in offsets]


def png(patch: np.ndarray) -> bytes:
    """One generated patch as PNG bytes (:func:`rgops.export.to_png`)."""
    from rgops.export import to_png

    return to_png(patch)


def strip(patches: np.ndarray) -> bytes:
    """A traversal strip as one PNG (:func:`rgops.export.strip_png`)."""
    from rgops.export import strip_png

    return strip_png(patches)


def secondary_captures(images: np.ndarray, model: ServedModel, request_id: str) -> list[bytes]:
    """Generated patches as DICOM Secondary Capture objects, one series per request."""
    from pydicom.uid import generate_uid

    from rgops.export import to_secondary_capture

    series, study = generate_uid(), generate_uid()
    return [to_secondary_capture(img, model.name, model.version, instance_number=i + 1, series_uid=series,
                                 study_uid=study, description=f"request {request_id}")
            for i, img in enumerate(images)]


# --- small helpers the service shell uses ------------------------------------------------------


def load_api_keys(env: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """API keys from ``RGOPS_API_KEYS`` (comma-separated) and/or the file named by ``RGOPS_API_KEYS_FILE``
    (one key per line, ``#`` comments).

    Raises:
        ConfigError: no keys configured, the file is unreadable, or a key is shorter than 16 characters.
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get("RGOPS_API_KEYS", "").split(",") if k.strip()]
    path = env.get("RGOPS_API_KEYS_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"RGOPS_API_KEYS_FILE={path!r} cannot be read ({exc.strerror}); "
                              "point it at a file with one key per line") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise ConfigError("no API keys configured: set RGOPS_API_KEYS (comma-separated) or RGOPS_API_KEYS_FILE; "
                          "the services refuse to start without authentication")
    short = sum(len(k) < 16 for k in keys)
    if short:
        raise ConfigError(f"{short} API key(s) are shorter than 16 characters; use e.g. "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return tuple(k.encode() for k in keys)


class Timer:
    """Wall time of a block in milliseconds (``with Timer() as t: ...; t.ms``)."""

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._t0) * 1000.0


# --- DICOM upload -> patch ---------------------------------------------------------------------

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def patch_from_dicom(datasets: Sequence[Any], spec: PatchSpec, box: Sequence[int] | None = None,
                     mask2d: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Uploaded DICOM -> de-identified tumour patches ``(K, 1, S, S)`` cut exactly as ingest cuts them.

    ``spec`` is the patch contract recorded in the model card (:attr:`ServedModel.spec`), so the
    served crop, window and slice rule are the ones the model was trained on.

    Three forms: a CT series with one SEG (the tumour mask comes from the SEG); one CT slice with
    ``box = (r0, c0, r1, c1)`` (the tumour box, end-exclusive, in pixels of that slice); or one CT
    slice with ``mask2d``, a ``(rows, columns)`` array, non-zero on the tumour.

    The files are de-identified first (PS3.15 basic profile, :func:`rgops.data.deid.deidentify`)
    under a key that lives only in this process, so nothing identifying is held past this call and
    no pseudonym is returned.

    Returns:
        The patches (one per slice of the contract's slice rule) and their provenance: ``slices``
        (slice index, crop side, ``mm_per_px`` of each), pixel spacing, number of slices; no
        identifiers.

    Raises:
        DicomError / SegmentationError: not a CT series with one SEG (or one slice with a box),
            a SEG that does not fit the series, an empty or out-of-image box.
        DeidentificationError: de-identification could not be guaranteed.
    """
    from rgops.data import deid, dicom
    from rgops.data.ingest import extract_patches

    key = _process_key()
    clean = [deid.deidentify(ds, key, source_patient_id=str(ds.get("PatientID", "") or "unknown"))
             for ds in datasets]
    segs = [d for d in clean if str(d.get("SOPClassUID", "")) == SEGMENTATION_STORAGE]
    cts = [d for d in clean if str(d.get("SOPClassUID", "")) != SEGMENTATION_STORAGE]
    names = [f"CT file {i + 1}" for i in range(len(cts))]
    if mask2d is not None:
        if segs or len(cts) != 1 or box is not None:
            raise DicomError(f"a tumour mask goes with exactly one CT slice (no SEG, no box); got {len(cts)} CT "
                             f"and {len(segs)} SEG file(s)")
        series = dicom.ct_series(cts, names)
        if mask2d.shape != series.hu.shape[1:]:
            raise ShapeError(f"tumour mask has shape {mask2d.shape}, the CT slice {series.hu.shape[1:]}; "
                             "send a mask on the slice's pixel grid")
        mask = (np.asarray(mask2d) != 0).astype(np.uint8)[None]
    elif box is not None:
        if segs or len(cts) != 1:
            raise DicomError(f"a tumour box goes with exactly one CT slice and no SEG; got {len(cts)} CT "
                             f"and {len(segs)} SEG file(s)")
        series = dicom.ct_series(cts, names)
        rows, cols = series.hu.shape[1:]
        r0, c0, r1, c1 = (int(v) for v in box) if len(box) == 4 else (0, 0, 0, 0)
        if len(box) != 4 or not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise DicomError(f"tumour box {list(box)} is not (r0, c0, r1, c1) with 0 <= r0 < r1 <= {rows} and "
                             f"0 <= c0 < c1 <= {cols} on this {rows}x{cols} slice")
        mask = np.zeros(series.hu.shape, dtype=np.uint8)
        mask[0, r0:r1, c0:c1] = 1
    else:
        if len(segs) != 1 or not cts:
            raise DicomError(f"expected the CT series and exactly one SEG; got {len(cts)} CT and {len(segs)} "
                             "SEG file(s) (or send one CT slice with a tumour 'box')")
        series = dicom.ct_series(cts, names)
        mask = dicom.segmentation_mask(segs[0], series, "the uploaded SEG")
    # the very function ingest cuts with
    patches, _, infos = extract_patches(series.hu, mask, float(series.pixel_spacing[0]), spec)
    slices = [{"slice_index": int(i["slice_index"]), "crop_side_px": int(i["crop_side_px"]),
               "tumour_area_px": int(i["tumour_area_px"]), "mm_per_px": float(i["mm_per_px"])} for i in infos]
    provenance = {"slices": slices, "slice_index": slices[0]["slice_index"],
                  "pixel_spacing_mm": [float(v) for v in series.pixel_spacing], "n_slices": series.n_slices,
                  "patch_spec": spec.to_json()["format"]}
    return patches, provenance


_KEY: list[bytes] = []


def _process_key() -> bytes:
    import secrets

    if not _KEY:
        _KEY.append(secrets.token_hex(32).encode())
    return _KEY[0]
