"""The ``serve:`` section of ``params.yaml`` as a typed, frozen dataclass, and the hard limits of the
input boundary derived from it (:class:`UploadLimits`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rgops.config import from_dict
from rgops.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """Hard limits on what one request may make the server read (see :class:`ServeConfig`)."""

    max_files: int = 2000
    max_zip_members: int = 10000
    max_decompressed_bytes: int = 2048 * MIB
    max_voxels: int = 2**28
    max_side: int = 4096
    max_patches: int = 256


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve:`` section of ``params.yaml``.

    Attributes:
        host: interface ``rgops serve`` binds to (localhost by default; put a proxy in front).
        port: HTTP port.
        alias: registry alias the services load (never "latest").
        max_request_mb: request bodies above this are refused with 413 (1 GiB: a thin-slice CT fits);
            uploads are spooled to disk, never held whole in memory.
        max_json_mb: JSON bodies (and multipart text fields together) above this are refused with 413.
        max_json_depth: JSON nested deeper than this (in a body or a multipart field) is refused with 422.
        max_filename_chars: an upload whose file name is longer is refused with 422 (the name is never logged).
        max_files: most DICOM files one extraction request may carry (after unzipping).
        max_zip_members: most entries a zip may list.
        max_decompressed_mb: most bytes the zips of one request may expand to (a zip bomb stops here).
        max_voxels: most pixels (frames x rows x columns) the DICOM of one request may declare.
        max_side: most rows or columns of one DICOM frame.
        max_patches: most ready patches per request (``.npy`` upload or ``/extract_patches``).
        max_samples: most images one generation request may ask for.
        batching: how ``/extract_patches`` shares model calls between concurrent requests:
            ``adaptive`` (BentoML's adaptive batcher, which holds requests to fill batches),
            ``greedy`` (:mod:`rgops.serving.batching`: every request waiting when the model is free
            goes into the next call, nothing waits for a batch to fill) or ``none`` (each request
            calls the model itself, in the server's threads).
        max_batch_size: adaptive and greedy batching: most patches the server encodes in one model call.
        max_latency_ms: adaptive batching: BentoML's latency budget per request; requests it
            predicts would exceed it are shed with 503, so on a CPU keep it well above one batch's time.
        device: where the models run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        workers: server processes (BentoML ``workers``; 0: one per CPU core, at most 4). One process
            answers HTTP on one event loop under one GIL: at 8 clients on 2 cores one worker reached
            0.58-0.68 of in-process throughput, two 0.86-0.93 (bench/serve.py). The workers act as
            one server (:mod:`rgops.serving.workers`): a reload reaches all of them, ``/metrics``
            sums them. Each worker holds its own copy of the models and its own uploads in memory.
        threads: requests each worker runs at once (BentoML ``threads``; model calls release the GIL).
        torch_threads: torch intra-op threads, set once at start (0: the CPU cores divided by
            workers x threads, at least 1; more threads than cores made model calls 6-13x slower under load).
        reload_poll_s: seconds between checks whether the alias moved (0: only the admin route).
        reload_timeout_s: a reload (resolve + load) that takes longer is abandoned for this round; the
            loaded version keeps serving.
        registry_retries: MLflow HTTP retries on the reload path (MLFLOW_HTTP_REQUEST_MAX_RETRIES).
        registry_timeout_s: MLflow HTTP request timeout on the reload path (MLFLOW_HTTP_REQUEST_TIMEOUT).
        retry_after_s: the ``Retry-After`` of 503 answers (no model loaded yet, overload).
        metrics_require_key: ``/metrics`` needs the API key like the model routes.
        tracing: keep BentoML's OpenTelemetry tracing on (export it with BentoML's ``tracing``
            configuration). Off by default: with no exporter the spans are thrown away, and turning
            them off raised the HTTP throughput of ``/extract_patches`` by about 28% (median 173 ->
            222 req/s, bench/serve.py); off sets ``OTEL_SDK_DISABLED=true`` for the server unless the
            environment already sets it.
        traversal_steps: images in a gene-traversal strip.
        traversal_span: the strip shifts the chosen genes from -span to +span (z-score units).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    alias: str = "champion"
    max_request_mb: float = 1024.0
    max_json_mb: float = 64.0
    max_json_depth: int = 32
    max_filename_chars: int = 200
    max_files: int = 2000
    max_zip_members: int = 10000
    max_decompressed_mb: float = 2048.0
    max_voxels: int = 2**28
    max_side: int = 4096
    max_patches: int = 256
    max_samples: int = 16
    batching: Literal["adaptive", "greedy", "none"] = "greedy"
    max_batch_size: int = 32
    max_latency_ms: int = 10000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 0
    threads: int = 4
    torch_threads: int = 0
    reload_poll_s: float = 30.0
    reload_timeout_s: float = 5.0
    registry_retries: int = 1
    registry_timeout_s: float = 3.0
    retry_after_s: int = 5
    metrics_require_key: bool = False
    tracing: bool = False
    traversal_steps: int = 7
    traversal_span: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_samples", "max_batch_size", "traversal_steps", "threads", "max_json_depth",
                     "max_filename_chars", "max_zip_members", "max_voxels", "max_side", "max_patches",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_request_mb", "max_json_mb", "max_decompressed_mb"):
            if not 0 < getattr(self, name) <= 65536:
                raise ConfigError(f"serve.{name} must be in (0, 65536] MiB, got {getattr(self, name)}")
        if self.batching not in ("adaptive", "greedy", "none"):
            raise ConfigError(f"serve.batching must be adaptive, greedy or none, got {self.batching!r}")
        if self.max_latency_ms < 1 or self.reload_poll_s < 0 or self.traversal_span <= 0:
            raise ConfigError("serve.max_latency_ms must be >= 1, reload_poll_s >= 0, traversal_span > 0")
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"serve.workers must be in 0..64 (0: one per CPU core, at most 4), got {self.workers}")
        if self.torch_threads < 0 or self.registry_retries < 0 or self.reload_timeout_s <= 0 \
                or self.registry_timeout_s <= 0:
            raise ConfigError("serve.torch_threads and registry_retries must be >= 0, reload_timeout_s and "
                              f"registry_timeout_s > 0; got {self.torch_threads}, {self.registry_retries}, "
                              f"{self.reload_timeout_s}, {self.registry_timeout_s}")
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

    def worker_count(self, cpus: int | None = None) -> int:
        """Server processes: ``workers``, or one per CPU core (at most 4)."""
        return self.workers or min(_cpus() if cpus is None else cpus, 4)

    def torch_thread_count(self, cpus: int | None = None) -> int:
        """Intra-op threads for torch: ``torch_threads``, or the cores shared out over every worker's threads."""
        if self.torch_threads:
            return self.torch_threads
        cores = _cpus() if cpus is None else cpus
        return max(1, cores // (self.worker_count(cores) * self.threads))

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MIB)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_mb * MIB)

    @property
    def limits(self) -> UploadLimits:
        """The limits :mod:`rgops.serving.uploads` enforces."""
        return UploadLimits(self.max_files, self.max_zip_members, int(self.max_decompressed_mb * MIB),
                            self.max_voxels, self.max_side, self.max_patches)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "ServeConfig":
        """Read ``params['serve']``; defaults when the section (or the whole file) is absent."""
        data = (params or {}).get("serve") or {}
        return from_dict(cls, dict(data), "serve")


def _cpus() -> int:
    """CPU cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
