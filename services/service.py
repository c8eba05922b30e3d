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
* ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``: open probes.

Serve with ``bentoml serve services.service:RgopsService`` (or ``rgops serve``). Configuration:
``MLFLOW_TRACKING_URI`` (the registry), ``RGOPS_API_KEYS`` or ``RGOPS_API_KEYS_FILE``,
``RGOPS_PARAMS`` (default ``params.yaml`` when present; its ``serve:`` section); for ``/extract_study``
``RGOPS_PACS_URL``, ``RGOPS_PACS_USER``, ``RGOPS_PACS_PASSWORD`` or ``RGOPS_PACS_PASSWORD_FILE`` (rgops.pacs).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rgops import serving
from rgops.config import load_params
from services.context import current_request_id
from services.errors import maps_errors
from services.security import RgopsGate, load_api_keys

log = logging.getLogger("rgops.services")


def _config() -> serving.ServeConfig:
    path = os.environ.get("RGOPS_PARAMS", "params.yaml")
    params = load_params(path) if Path(path).is_file() else None
    return serving.ServeConfig.from_params(params)


CONFIG = _config()


class PatchIn(BaseModel):
    """One ready patch: ``pixels`` is S x S floats in [-1, 1] (the HU window of the model's patch
    contract, GET /metadata ``patch``, scaled as ingest scales it) and its physical scale."""

    model_config = ConfigDict(hide_input_in_errors=True)

    pixels: list[list[float]] = Field(description="S x S values in [-1, 1]")
    mm_per_px: float | None = Field(default=None, description="crop side in mm / S (patch contract v2); needed "
                                    "by a CAE that reads the scale (GET /metadata patch.needs_mm_per_px)")
    profile: dict[str, float | None] | None = Field(
        default=None, description="raw gene profile; needed only by an encoder-conditioned CAE")

    @field_validator("pixels")
    @classmethod
    def _square(cls, v: list[list[float]]) -> list[list[float]]:
        if not v or any(len(row) != len(v) for row in v):
            raise ValueError(f"pixels must be a square S x S array, got {len(v)} rows of lengths "
                             f"{sorted({len(r) for r in v})[:3]}")
        return v


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
    workers=1,
    threads=CONFIG.threads,
    traffic={"timeout": 120, "max_concurrency": 256},
    http={"cors": {"enabled": False}},
)
class RgopsService:
    """Feature extraction (CAE @alias) and image generation (GAN generator @alias)."""

    def __init__(self) -> None:
        self.config = CONFIG
        load_api_keys()  # refuse to start without authentication configured
        self.device = self.config.torch_device()
        resolve, load = serving.registry_source(device=self.device)
        self.cae = serving.ModelSlot(serving.CAE_MODEL, self.config.alias, resolve, load)
        self.gan = serving.ModelSlot(serving.GAN_MODEL, self.config.alias, resolve, load)
        self._reload_all()
        self._stop = threading.Event()
        if self.config.reload_poll_s > 0:
            threading.Thread(target=self._poll, name="rgops-alias-poll", daemon=True).start()

    def _reload_all(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for slot in (self.cae, self.gan):
            try:
                changed = slot.refresh()
                out[slot.name] = {"version": slot.current.version, "changed": changed}
            except serving.RgopsError as exc:  # keep serving the loaded version
                slot.last_error = str(exc)
                log.warning("%s@%s not (re)loaded: %s", slot.name, slot.alias, exc)
                out[slot.name] = {"version": slot.current.version if slot.ready else None,
                                  "changed": False, "error": str(exc)}
        return out

    def _poll(self) -> None:
        while not self._stop.wait(self.config.reload_poll_s):
            self._reload_all()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()

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
        model = self.cae.current
        blobs = [(p.name, p.read_bytes()) for p in files]
        genes = None
        if profile is not None:
            genes = serving.normalise_profile(model.panel, profile, impute).genes
        arrays = [b for _, b in blobs if serving.is_npy(b)]
        if len(blobs) == 1 and arrays:
            patches = serving.read_npy_patches(arrays[0], model.image_size, self.config.max_batch_size)
            g = None if genes is None else genes.repeat(len(patches), axis=0)
            feats = serving.encode(model, patches, g, serving.check_scale(model, mm_per_px, len(patches)))
            return {"request_id": current_request_id(), "model": model.describe(),
                    "patches": [feats.row(i) for i in range(len(patches))]}
        mask = serving.read_npy_mask(arrays) if arrays else None
        datasets = serving.read_dicom_upload([x for x in blobs if not serving.is_npy(x[1])], self.config.max_files)
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

        model = self.cae.current
        out = pacs.extract_study(pacs.connect(), study_uid, lambda ds: serving.extract_dicom(model, ds),
                                 series_uid=series_uid, store=store)
        return {"request_id": current_request_id(), **out}

    @bentoml.api(route="/extract_patches", batchable=True, max_batch_size=CONFIG.max_batch_size,
                 max_latency_ms=CONFIG.max_latency_ms)
    def extract_patches(self, patches: list[PatchIn]) -> list[PatchOut]:
        """Ready patches -> features, one result per patch (adaptive batching across requests)."""
        return serving.encode_items(self.cae.current, [(p.pixels, p.profile, p.mm_per_px) for p in patches],
                                    PatchOut)

    # -- generation --------------------------------------------------------------------------

    @bentoml.api(route="/generate")
    @maps_errors
    def generate(
        self,
        profile: dict[str, float | None] | None = Field(default=None, description="gene -> raw expression"),
        profile_tsv: str | None = Field(default=None, description="genes.tsv text: gene_symbol + sample column(s)"),
        sample: str | None = Field(default=None, description="which sample column of profile_tsv"),
        n_samples: int = Field(default=1, description="images to generate"),
        seed: int = 0,
        impute: bool = Field(default=False, description="fill missing genes with training means"),
        dicom: bool = Field(default=False, description="also return DICOM Secondary Capture objects"),
        traverse_genes: list[str] | None = Field(
            default=None, description="genes of one program: also return a traversal strip over them"),
    ) -> dict[str, Any]:
        """A gene-expression profile -> PNG images (base64), optionally DICOM SC and a traversal strip."""
        from rgops.errors import GeneTableError

        model = self.gan.current
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
        """Model cards, gene panels and patch contract of the served models."""
        import torch

        return {"request_id": current_request_id(),
                "runtime": {"device": self.device, "torch_threads": torch.get_num_threads(),
                            "server_threads": self.config.threads, "max_batch_size": self.config.max_batch_size},
                "models": {s.name: (s.current.metadata() if s.ready else {"error": s.last_error})
                           for s in (self.cae, self.gan)}}

    @bentoml.api(route="/admin/reload")
    @maps_errors
    def reload(self) -> dict[str, Any]:
        """Load the versions the aliases point at now; requests in flight finish on the old ones."""
        return {"request_id": current_request_id(), "models": self._reload_all()}


RgopsService.add_asgi_middleware(RgopsGate, max_body_bytes=CONFIG.max_request_bytes)
