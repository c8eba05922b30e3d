"""The rgops BentoML service: feature extraction and image generation for hospital systems.

A thin typed shell over the :mod:`rgops.serving` package: each API decodes its inputs, calls one rgops
function and shapes the response; errors are mapped to HTTP status in ``services/errors.py``;
authentication, body limits and request ids live in ``services/security.py``.

Routes (all POST unless noted; all but the probes need ``Authorization: Bearer KEY``):

* ``/extract``: multipart upload of a CT series and its SEG (files or a zip), or one CT slice
  and a tumour ``box``; returns the imaging biomarker (latent), program scores and the model.
* ``/extract_study``: a study on the hospital PACS (DICOMweb) by StudyInstanceUID -> as ``/extract``;
  ``store: true`` writes the result back to the study as a DICOM SR (TID 1500).
* ``/extract_patches``: ready patches as JSON, adaptively batched across concurrent requests.
* ``/generate``: a gene profile (JSON map or genes.tsv text) -> PNG images (base64), DICOM
  Secondary Capture objects on request, and a gene-traversal strip on request.
* ``/metadata`` (GET or POST): model cards, gene panel, patch contract of both models.
* ``/admin/reload``: load the versions the aliases now point at (also polled).
* ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``: open probes (``/readyz`` says each model's
  version and last reload error; ``/metrics`` may require the key: ``serve.metrics_require_key``).

Models load in the background (:class:`rgops.serving.slots.Reloader`): the server answers its probes
at once, and the model routes answer 503 with ``Retry-After`` until a model is loaded.

Serve with ``bentoml serve services.service:RgopsService`` (or ``rgops serve``). Configuration:
``MLFLOW_TRACKING_URI`` (the registry), ``RGOPS_API_KEYS`` or ``RGOPS_API_KEYS_FILE``,
``RGOPS_PARAMS`` (default ``params.yaml`` when present; its ``serve:`` section); for ``/extract_study``
``RGOPS_PACS_URL``, ``RGOPS_PACS_USER``, ``RGOPS_PACS_PASSWORD`` or ``RGOPS_PACS_PASSWORD_FILE`` (rgops.pacs).
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rgops import serving
from rgops.config import load_params
from rgops.data.dicom import quiet_value_warnings
from rgops.errors import GeneTableError
from services.boundary import BodyLimits, RouteFields
from services.context import DIRECT, HEALTH, NEEDS_MODEL, current_request_id, note_model, worker_group
from services.errors import RETRY_AFTER_S, InputRefused, maps_errors, validation_message
from services.security import RgopsGate, load_api_keys

log = logging.getLogger("rgops.services")


def _config() -> serving.ServeConfig:
    path = os.environ.get("RGOPS_PARAMS", "params.yaml")
    params = load_params(path) if Path(path).is_file() else None
    return serving.ServeConfig.from_params(params)


CONFIG = _config()
if not CONFIG.tracing:
    # BentoML builds its tracer provider after importing the service; with no exporter configured its
    # spans are discarded, and making them cost about a fifth of /extract_patches' throughput (bench/serve.py)
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


class PatchIn(BaseModel):
    """One ready patch: ``pixels`` is S x S floats in [-1, 1] (the HU window of the model's patch
    contract, GET /metadata ``patch``, scaled as ingest scales it) and its physical scale."""

    model_config = ConfigDict(hide_input_in_errors=True)

    pixels: list[list[float]] | None = Field(default=None, description="S x S values in [-1, 1]")
    pixels_b64: str | None = Field(default=None, description="or: base64 of S x S little-endian float32 values, "
                                   "row by row (a quarter of the JSON body)")
    mm_per_px: float | None = Field(default=None, description="crop side in mm / S (patch contract v2); needed "
                                    "by a CAE that reads the scale (GET /metadata patch.needs_mm_per_px)")
    profile: dict[str, float | None] | None = Field(
        default=None, description="raw gene profile; needed only by an encoder-conditioned CAE")

    @model_validator(mode="after")
    def _one_form(self) -> "PatchIn":
        if (self.pixels is None) == (self.pixels_b64 is None):
            raise ValueError("send exactly one of 'pixels' (S x S numbers) or 'pixels_b64' (base64 float32)")
        v = self.pixels
        if v is not None and (not v or any(len(row) != len(v) for row in v)):
            raise ValueError(f"pixels must be a square S x S array, got {len(v)} rows of lengths "
                             f"{sorted({len(r) for r in v})[:3]}")
        return self


class PatchOut(BaseModel):
    """Features of one patch, or why there are none (``error``)."""

    latent: list[float] | None
    program_scores: dict[str, float] | None
    program_scores_reason: str | None
    program_scores_warning: str | None = None
    model: dict[str, Any]
    error: str | None = None


@bentoml.service(
    name="rgops",
    workers=CONFIG.worker_count(),
    threads=CONFIG.threads,
    traffic={"timeout": 120, "max_concurrency": 256},
    http={"cors": {"enabled": False}},
    # the gate counts requests by route template and logs each request once (services/security.py):
    # BentoML's own metrics label every requested path, and its access log writes every path
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
)
class RgopsService:
    """Feature extraction (CAE @alias) and image generation (GAN generator @alias)."""

    def __init__(self) -> None:
        import torch

        self.config = CONFIG
        load_api_keys()  # refuse to start without authentication configured
        # BentoML configures its own loggers; the alias moves rgops.serving logs must reach the server log
        logging.getLogger("rgops.serving").setLevel(logging.INFO)
        quiet_value_warnings()  # client headers are not de-identified: no value of theirs in the log
        RETRY_AFTER_S[0] = self.config.retry_after_s
        torch.set_num_threads(self.config.torch_thread_count())
        self.device = self.config.torch_device()
        self._bound_registry_retries()
        resolve, load = serving.registry_source(device=self.device)
        self.cae = serving.ModelSlot(serving.CAE_MODEL, self.config.alias, resolve, load)
        self.gan = serving.ModelSlot(serving.GAN_MODEL, self.config.alias, resolve, load)
        self.reloader = serving.Reloader([self.cae, self.gan], self.config.reload_poll_s,
                                         self.config.reload_timeout_s,
                                         group=worker_group(self.config.worker_count()))
        HEALTH[:] = [self.health]
        NEEDS_MODEL.update({"/extract": lambda: self.cae.current, "/extract_patches": lambda: self.cae.current,
                            "/generate": lambda: self.gan.current})
        self.batcher = (serving.GreedyBatcher(self._encode_items, self.config.max_batch_size)
                        if self.config.batching == "greedy" else None)
        if self.config.batching != "adaptive":  # the gate answers it without BentoML's request path
            DIRECT["/extract_patches"] = self.direct_extract_patches
        self.reloader.start()  # models load in the background: the probes answer at once

    def _bound_registry_retries(self) -> None:
        """MLflow's HTTP client retries for about 4.5 min by default; this process talks to the registry
        only to reload models, so bound it here (an operator's own setting wins)."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.config.registry_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.config.registry_timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # MLflow reads an int

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/readyz``: ready when every model is loaded in every worker; each model's version and last
        reload error (this worker's), and the workers that are not ready yet."""
        slots = (self.cae, self.gan)
        body: dict[str, Any] = {"models": {s.name: s.status() for s in slots}}
        ready = all(s.ready for s in slots)
        group = self.reloader.group
        if group is not None:
            live = group.live_pids()  # one look at the folder per probe
            waiting = group.not_ready(live)
            body["workers"] = {"count": len(live), "not_ready": waiting}
            ready = ready and not waiting
        return ready, body

    def _model(self, slot: serving.ModelSlot) -> serving.ServedModel:
        model = slot.current
        note_model(model.name, model.version)
        return model

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.reloader.stop()

    def __is_ready__(self) -> bool:
        return self.cae.ready and self.gan.ready

    # -- feature extraction ------------------------------------------------------------------

    @bentoml.api(route="/extract")
    @maps_errors
    def extract(
        self,
        files: list[Path] = Field(description="CT slices and SEG as DICOM files, or zips of them; or one CT "
                                  "slice and a .npy tumour mask (rows, columns); or one .npy of ready "
                                  "patches (B, 1, S, S) in [-1, 1]"),
        box: list[int] | None = Field(default=None, description="tumour box r0,c0,r1,c1 on a single CT slice"),
        profile: dict[str, float | None] | None = Field(
            default=None, description="raw gene profile; only for an encoder-conditioned CAE"),
        impute: bool = False,
        mm_per_px: list[float] | None = Field(
            default=None, description="with a .npy of ready patches: mm per pixel of each patch (or one value)"),
        per_slice: bool = Field(default=False, description="also return the biomarker of every slice"),
    ) -> dict[str, Any]:
        """DICOM (a CT series with its SEG, or one CT slice and a box) or a .npy of ready patches ->
        the imaging biomarker: the mean latent over the tumour's slices (patch contract v2)."""
        model = self._model(self.cae)
        limits = self.config.limits
        # the gate checked names and sizes; BentoML spooled each file to disk: read them from there
        blobs = [(p.suffix.lower(), p) for p in files]
        genes = None
        if profile is not None:
            genes = serving.normalise_profile(model.panel, profile, impute).genes
        arrays = [b for _, b in blobs if serving.is_npy(b)]
        if len(blobs) == 1 and arrays:
            patches = serving.read_npy_patches(arrays[0], model.image_size, limits.max_patches)
            g = None if genes is None else genes.repeat(len(patches), axis=0)
            feats = serving.encode(model, patches, g, serving.check_scale(model, mm_per_px, len(patches)))
            return {"request_id": current_request_id(), "model": model.describe(),
                    "patches": [feats.row(i) for i in range(len(patches))]}
        mask = serving.read_npy_mask(arrays, limits.max_side) if arrays else None
        datasets = serving.read_dicom_upload([x for x in blobs if not serving.is_npy(x[1])], limits)
        return {"request_id": current_request_id(),
                **serving.extract_dicom(model, datasets, genes, box=box, mask2d=mask, per_slice=per_slice)}

    @bentoml.api(route="/extract_study")
    @maps_errors
    def extract_study(
        self,
        study_uid: str = Field(description="StudyInstanceUID of a study on the configured PACS (RGOPS_PACS_URL)"),
        series_uid: str | None = Field(default=None, description="the CT series to use (default: the one its "
                                       "SEG references)"),
        store: bool = Field(default=False, description="store the result in the study as a DICOM SR (STOW-RS)"),
    ) -> dict[str, Any]:
        """A study on the PACS (DICOMweb: QIDO-RS, WADO-RS) -> the ``/extract`` answer; with ``store``,
        the biomarker goes back to the study as a TID 1500 SR (STOW-RS)."""
        from rgops import pacs

        model = self._model(self.cae)
        out = pacs.extract_study(pacs.connect(), study_uid, lambda ds: serving.extract_dicom(model, ds),
                                 series_uid=series_uid, store=store, max_instances=self.config.limits.max_files,
                                 limits=self.config.limits)
        return {"request_id": current_request_id(), **out}

    @bentoml.api(route="/extract_patches", batchable=CONFIG.batching == "adaptive",
                 max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def extract_patches(self, patches: list[PatchIn]) -> list[PatchOut]:
        """Ready patches -> features, one result per patch (batched across requests: serve.batching).

        With ``greedy`` or ``none`` batching the gate answers this route itself through
        :meth:`direct_extract_patches` (same input model, same answer); BentoML's path serves it with
        ``adaptive`` batching, which only BentoML's batcher can do."""
        return self._patches(patches)

    def _patches(self, patches: list[PatchIn]) -> list[PatchOut]:
        items = [(p.pixels if p.pixels is not None else p.pixels_b64, p.profile, p.mm_per_px) for p in patches]
        if self.batcher is not None:
            return self.batcher.submit(items, timeout=self.config.max_latency_ms / 1000)
        return self._encode_items(items)

    def direct_extract_patches(self, body: bytes) -> list[dict[str, Any]]:
        """``/extract_patches`` from its checked JSON body, validated with the route's own input model."""
        try:
            args = PATCHES_INPUT.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise InputRefused("the request does not fit the route: "
                               f"{validation_message(exc.errors(include_input=False, include_url=False))}") from None
        return [out.model_dump() for out in self._patches(args.patches)]

    def _encode_items(self, items: list[Any]) -> list[PatchOut]:
        return serving.encode_items(self.cae.current, items, PatchOut)

    # -- generation --------------------------------------------------------------------------

    @bentoml.api(route="/generate")
    @maps_errors
    def generate(
        self,
        profile: dict[str, float | None] | None = Field(default=None, description="gene -> raw expression"),
        profile_tsv: str | None = Field(default=None, description="genes.tsv text: gene_symbol + sample column(s)"),
        sample: str | None = Field(default=None, description="which sample column of profile_tsv"),
        n_samples: int = Field(default=1, ge=1, le=CONFIG.max_samples, description="images to generate"),
        seed: int = Field(default=0, ge=0, le=SEED_MAX, description="generator seed, 0 .. 2^64 - 1"),
        impute: bool = Field(default=False, description="fill missing genes with training means"),
        dicom: bool = Field(default=False, description="also return DICOM Secondary Capture objects"),
        traverse_genes: list[str] | None = Field(
            default=None, description="genes of one program: also return a traversal strip over them"),
    ) -> dict[str, Any]:
        """A gene-expression profile -> PNG images (base64), optionally DICOM SC and a traversal strip."""
        model = self._model(self.gan)
        if (profile is None) == (profile_tsv is None):
            raise GeneTableError("send exactly one of 'profile' (JSON map gene -> value) or 'profile_tsv'")
        raw = profile if profile is not None else serving.profile_from_tsv(profile_tsv or "", sample)
        norm = serving.normalise_profile(model.panel, raw, impute)
        images = serving.generate(model, norm.genes, n_samples, seed, self.config.max_samples)
        rid = current_request_id() or uuid.uuid4().hex
        out: dict[str, Any] = {
            "request_id": rid, "model": model.describe(), "n_samples": n_samples, "seed": seed,
            "imputed_genes": list(norm.imputed), "imputed": bool(norm.imputed),
            "ignored_genes": norm.ignored,
            "png": [base64.b64encode(serving.png(img)).decode() for img in images],
        }
        if dicom:
            out["dicom"] = [base64.b64encode(b).decode()
                            for b in serving.secondary_captures(images, model, rid)]
        if traverse_genes:
            strip, offsets = serving.traversal(model, norm.genes, traverse_genes, self.config.traversal_steps,
                                               self.config.traversal_span, seed)
            out["traversal"] = {"genes": traverse_genes, "offsets": offsets,
                                "png": base64.b64encode(serving.strip(strip)).decode()}
        return out

    # -- metadata and administration ---------------------------------------------------------

    @bentoml.api(route="/metadata")
    @maps_errors
    def metadata(self) -> dict[str, Any]:
        """Model cards, gene panels and patch contract of the served models, and each one's reload state."""
        import torch

        return {"request_id": current_request_id(),
                "runtime": {"device": self.device, "torch_threads": torch.get_num_threads(),
                            "workers": self.config.worker_count(),
                            "server_threads": self.config.threads, "max_batch_size": self.config.max_batch_size,
                            "batching": self.config.batching,
                            "tracing": os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"},
                "models": {s.name: {**(s.current.metadata() if s.ready else {}), "reload": s.status()}
                           for s in (self.cae, self.gan)}}

    @bentoml.api(route="/admin/reload")
    @maps_errors
    def reload(self) -> dict[str, Any]:
        """Load the versions the aliases point at now, in every worker (waits at most serve.reload_timeout_s
        for each step); requests in flight finish on the old ones. ``workers.not_synced`` names the
        worker PIDs that had not reloaded in time (they reload on their own as soon as they can)."""
        models, workers = self.reloader.reload_everywhere()
        return {"request_id": current_request_id(), "models": models, "workers": workers}


def _route_fields(service: Any) -> dict[str, RouteFields]:
    """Each API route and its fields (file fields: those typed ``Path``), for the gate's multipart checks."""
    out = {}
    for api in service.apis.values():
        fields = api.input_spec.model_fields
        files = frozenset(k for k, f in fields.items() if "Path" in str(f.annotation))
        out[api.route] = RouteFields(files, frozenset(fields) - files)
    return out


RgopsService.add_asgi_middleware(
    RgopsGate,
    limits=BodyLimits(CONFIG.max_request_bytes, min(CONFIG.max_json_bytes, CONFIG.max_request_bytes),
                      CONFIG.max_json_depth,
                      CONFIG.max_filename_chars, CONFIG.max_files + 32, CONFIG.max_patches),
    routes=_route_fields(RgopsService),
    metrics_require_key=CONFIG.metrics_require_key,
    workers=CONFIG.worker_count(),
)


def _fix_media_types(service: Any) -> None:
    """BentoML derives a root-model answer's media type from its JSON schema on every response; at 8
    clients that was more of the worker's time than the model call (py-spy). Every answer of ours is
    JSON: compute the type once, at import."""
    for api in service.apis.values():
        if api.output_spec.media_type is None:
            api.output_spec.media_type = api.output_spec.mime_type()


_fix_media_types(RgopsService)
PATCHES_INPUT = RgopsService.apis["extract_patches"].input_spec
